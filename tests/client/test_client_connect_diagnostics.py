"""When records do not reach the agent, the client says why, once per kind of failure, on the
``automagik_telemetry`` logger (and in ``stats()["last_connect_error"]``), and says when it connects again."""

from __future__ import annotations

import errno
import grp
import json
import logging
import os
import socket
import time
from collections.abc import Callable

import pytest
from fake_agent import FakeAgent

from automagik_telemetry import AutomagikTelemetry
from automagik_telemetry.connection import explain_connect_error


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "automagik_telemetry" and r.levelno == logging.WARNING]


def _wait(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_missing_socket_is_explained_once_then_the_reconnect_is_announced(
    make_client: Callable[..., AutomagikTelemetry], sock_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="automagik_telemetry")
    client = make_client()
    for i in range(3):
        client.track_event("waiting", {"i": i})
    _wait(lambda: int(client.stats()["connect_errors"]) >= 3)  # several attempts, one warning
    assert len([w for w in _warnings(caplog) if "no agent socket at" in w]) == 1, _warnings(caplog)
    assert f"no agent socket at {sock_path}" in str(client.stats()["last_connect_error"])
    assert "AUTOMAGIK_TELEMETRY_SOCKET" in _warnings(caplog)[0]
    with FakeAgent(sock_path) as agent:
        assert client.flush(10) is True
        assert len(agent.messages) >= 1
    assert client.stats()["last_connect_error"] == ""
    assert any("connected to the agent at" in r.getMessage() for r in caplog.records)


def test_a_stale_socket_file_is_told_apart_from_a_missing_one(
    make_client: Callable[..., AutomagikTelemetry], sock_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="automagik_telemetry")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stale.bind(sock_path)  # bound, never listening: connect() is refused
    try:
        client = make_client()
        client.track_event("waiting")
        _wait(lambda: bool(client.stats()["last_connect_error"]))
        assert "nobody listens on" in str(client.stats()["last_connect_error"])
        assert any("a stale socket file" in w for w in _warnings(caplog))
    finally:
        stale.close()


def test_permission_denied_names_the_group_that_may_connect(sock_path: str) -> None:
    # As root the kernel never refuses the connect, so the explanation is checked on the error itself.
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.bind(sock_path)
        group = grp.getgrgid(os.stat(sock_path).st_gid).gr_name
        why = explain_connect_error(sock_path, OSError(errno.EACCES, "Permission denied"))
    assert why.startswith(f"permission denied connecting to {sock_path}") and f"group {group}" in why
    assert "full backlog" in explain_connect_error(sock_path, OSError(errno.EAGAIN, "again"))
    assert "cannot connect" in explain_connect_error(sock_path, OSError(errno.EIO, "I/O error"))


def test_the_agent_refusing_is_explained_once_per_reason_and_in_get_status(
    make_client: Callable[..., AutomagikTelemetry], sock_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="automagik_telemetry")
    with FakeAgent(sock_path, mode="reject", reject_reason="disk_full"):
        client = make_client()
        for i in range(5):
            client.track_event("refused", {"i": i})
            assert client.flush(5) is False  # refused: not delivered
    refusals = [w for w in _warnings(caplog) if "the agent refused" in w]
    assert len(refusals) == 1 and "(disk_full)" in refusals[0] and "WAL disk is full" in refusals[0]
    assert client.stats()["last_reject"] == "disk_full"
    assert client.get_status()["last_error"] == "disk_full"


def test_a_user_outside_the_sockets_group_is_told_which_group_to_join(sock_path: str) -> None:
    """The kernel's real EACCES: a forked child drops to user nobody (as root), or the socket's mode denies
    its own user (otherwise), and connects to a listening agent socket of mode 0660."""
    with FakeAgent(sock_path):
        os.chmod(os.path.dirname(sock_path), 0o755)
        os.chmod(sock_path, 0o660 if os.geteuid() == 0 else 0o000)
        group = grp.getgrgid(os.stat(sock_path).st_gid).gr_name
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            try:
                if os.geteuid() == 0:
                    os.setgroups([])
                    os.setgid(65534)
                    os.setuid(65534)
                heard: list[str] = []
                handler = logging.Handler()
                handler.emit = lambda record: heard.append(record.getMessage())  # type: ignore[method-assign]
                logging.getLogger("automagik_telemetry").addHandler(handler)
                from automagik_telemetry.connection import AgentConnection

                connection = AgentConnection(sock_path)
                connected = connection.connect()
                os.write(write, json.dumps([connected, connection.last_connect_error, heard]).encode())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            connected, error, heard = json.loads(pipe.read())
        os.waitpid(pid, 0)
    assert connected is False
    assert error.startswith(f"permission denied connecting to {sock_path}") and f"group {group}" in error
    assert len(heard) == 1 and error in heard[0]
