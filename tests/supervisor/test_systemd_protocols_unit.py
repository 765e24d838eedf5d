"""sd_notify and sd_listen_fds as the supervisor speaks them (sdnotify.py), against real sockets."""

from __future__ import annotations

from automagik_telemetry_agent.supervisor.sdnotify import Notifier, listen_fds

from .conftest import NotifyListener


def test_notify_reaches_a_path_socket_and_an_abstract_one() -> None:
    for abstract in (False, True):
        listener = NotifyListener(abstract=abstract)
        try:
            notifier = Notifier(env=listener.env())
            assert notifier.enabled
            assert notifier.ready("ingest 0 spans/s\nbacklog 0 B")
            assert notifier.stopping()
            from agent_process import wait_until

            wait_until(lambda lis=listener: len(lis.snapshot()) == 2, 2, message="two datagrams")
            (_, first), (_, second) = listener.snapshot()
            assert first == {"READY": "1", "STATUS": "ingest 0 spans/s backlog 0 B"}  # one line, always
            assert second == {"STOPPING": "1"}
        finally:
            listener.close()


def test_without_notify_socket_every_call_is_a_quiet_no_op() -> None:
    notifier = Notifier(env={})
    assert not notifier.enabled
    assert notifier.ready("x") is False
    assert notifier.watchdog_interval_s is None


def test_a_vanished_notify_socket_costs_a_false_not_an_exception() -> None:
    notifier = Notifier(env={"NOTIFY_SOCKET": "/nonexistent/notify"})
    assert notifier.status("x") is False
    assert notifier.failed == 1


def test_watchdog_interval_is_half_of_watchdog_usec_and_only_for_our_pid() -> None:
    assert Notifier(env={"WATCHDOG_USEC": "30000000"}, pid=42).watchdog_interval_s == 15.0
    assert Notifier(env={"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, pid=42).watchdog_interval_s == 15.0
    assert Notifier(env={"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, pid=42).watchdog_interval_s is None
    assert Notifier(env={"WATCHDOG_USEC": "0"}, pid=42).watchdog_interval_s is None
    assert Notifier(env={"WATCHDOG_USEC": "soon"}, pid=42).watchdog_interval_s is None


def test_listen_fds_are_taken_only_when_meant_for_this_pid_and_the_variables_are_removed() -> None:
    env = {"LISTEN_FDS": "1", "LISTEN_PID": "42", "LISTEN_FDNAMES": "agent.sock"}
    assert listen_fds(env, pid=42) == [3]
    assert env == {}  # children never see them
    env = {"LISTEN_FDS": "1", "LISTEN_PID": "41"}
    assert listen_fds(env, pid=42) == []  # meant for another process
    assert listen_fds({"LISTEN_FDS": "x", "LISTEN_PID": "42"}, pid=42) == []
    assert listen_fds({}, pid=42) == []
