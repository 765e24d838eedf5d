"""systemd integration with real tools: the notify protocol on a test NOTIFY_SOCKET, and socket activation
through Debian's /usr/bin/systemd-socket-activate (--seqpacket)."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator

import pytest
from agent_process import AgentProcess, RawClient, dumped_names, record_line, wait_until

from automagik_telemetry_agent.supervisor.control import request

from .conftest import NotifyListener

ACTIVATE = shutil.which("systemd-socket-activate") or "/usr/bin/systemd-socket-activate"
needs_activate = pytest.mark.skipif(not os.path.exists(ACTIVATE), reason="systemd-socket-activate not installed")


def test_notify_protocol_ready_status_watchdog_stopping_in_order(supervised: Callable[..., AgentProcess]) -> None:
    listener = NotifyListener(abstract=True)  # "@name": systemd's usual abstract socket
    try:
        agent = supervised(env=listener.env(watchdog_usec=300_000)).start()
        wait_until(lambda: len(listener.times("WATCHDOG")) >= 3, 5, message="watchdog pings")
        with RawClient(agent.socket_path) as client:
            for seq in range(1, 11):
                client.send_records([record_line(f"s{seq}")], seq=seq)
            assert client.wait_ack(10)
        wait_until(
            lambda: any("spans/s" in m.get("STATUS", "") for _, m in listener.snapshot()),
            10,
            message="a live STATUS= summary",
        )
        assert agent.terminate() == 0
        messages = [m for _, m in listener.snapshot()]
    finally:
        listener.close()
    kinds = [next(k for k in ("READY", "WATCHDOG", "STOPPING", "STATUS") if k in m) for m in messages]
    ready, stopping = kinds.index("READY"), kinds.index("STOPPING")
    assert kinds.count("READY") == 1 and kinds.count("STOPPING") == 1
    assert "WATCHDOG" not in kinds[:ready]  # no ping before the agent is ready
    assert kinds[ready + 1 : stopping].count("WATCHDOG") >= 3
    assert stopping == len(kinds) - 1  # STOPPING=1 is the last word: no ping or status after it
    assert messages[ready]["STATUS"]  # READY=1 comes with a status line
    assert messages[ready]["READY"] == "1" and messages[stopping]["STOPPING"] == "1"
    status = [m["STATUS"] for m in messages if "STATUS" in m and "spans/s" in m["STATUS"]]
    assert status and all(len(s) < 200 for s in status)  # short, as the status line of `systemctl status`


def test_no_watchdog_pings_when_watchdog_pid_names_another_process(
    supervised: Callable[..., AgentProcess], notify_socket: NotifyListener
) -> None:
    agent = supervised(env={**notify_socket.env(watchdog_usec=200_000), "WATCHDOG_PID": "1"}).start()
    wait_until(lambda: notify_socket.times("READY"), 5, message="READY=1")
    time.sleep(0.6)
    assert notify_socket.times("WATCHDOG") == []
    assert agent.terminate() == 0


@pytest.fixture
def short_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="at-sa-", dir="/tmp")  # AF_UNIX paths must stay short
    yield path
    shutil.rmtree(path, ignore_errors=True)


@needs_activate
def test_socket_activation_with_systemd_socket_activate(
    supervised: Callable[..., AgentProcess], short_dir: str
) -> None:
    path = os.path.join(short_dir, "agent.sock")
    agent = supervised(socket_path=path, launcher=[ACTIVATE, "--seqpacket", "-l", path, "--"])
    agent.start(wait=False)
    wait_until(lambda: os.path.exists(path), 10, message="systemd-socket-activate to listen")
    inode = os.stat(path).st_ino
    with RawClient(path, timeout=10) as client:  # the first connection starts the agent
        for seq in range(1, 21):
            client.send_records([record_line(f"activated-{seq}")], seq=seq)
        agent.wait_ready()
        assert client.wait_ack(20, timeout=10)
    status = request(os.path.join(short_dir, "control.sock"), {"cmd": "status"})["status"]
    assert status["socket_activated"] is True
    assert agent.terminate() == 0
    assert os.stat(path).st_ino == inode  # the path belongs to systemd: never unlinked or rebound
    assert sorted(dumped_names(agent.dump())) == sorted(f"activated-{s}" for s in range(1, 21))


@needs_activate
def test_socket_activation_keeps_clients_queued_across_an_agent_restart(
    supervised: Callable[..., AgentProcess], short_dir: str
) -> None:
    """Like a .socket unit: the socket outlives the agent, so a client that connects and sends while no
    agent runs is served by the next one (systemd-socket-activate passes the held socket through)."""
    path = os.path.join(short_dir, "agent.sock")
    unit = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)  # what systemd's .socket unit holds
    unit.bind(path)
    unit.listen(64)
    fd = unit.fileno()
    launcher = ["bash", "-c", f'exec 3<&{fd}; LISTEN_FDS=1 LISTEN_PID=$$ exec "$0" --seqpacket -- "$@"', ACTIVATE]
    agent = supervised(socket_path=path, launcher=launcher, pass_fds=(fd,))
    try:
        agent.start(wait=False)
        with RawClient(path, timeout=10) as first:
            first.send_records([record_line("first-run")], seq=1)
            agent.wait_ready()
            assert first.wait_ack(1, timeout=10)
        assert agent.terminate() == 0
        with RawClient(path, timeout=10) as waiting:  # no agent now: the kernel queues this client
            for seq in range(1, 11):
                waiting.send_records([record_line(f"while-down-{seq}")], seq=seq)
            agent.start(wait=False)  # the pending connection starts the next agent at once
            agent.wait_ready()
            assert waiting.wait_ack(10, timeout=10)
        assert agent.terminate() == 0
    finally:
        unit.close()
    names = dumped_names(agent.dump())
    assert sorted(names) == sorted(["first-run", *(f"while-down-{s}" for s in range(1, 11))])


@needs_activate
def test_a_socket_of_the_wrong_type_from_systemd_is_a_config_error(
    supervised: Callable[..., AgentProcess], short_dir: str
) -> None:
    path = os.path.join(short_dir, "agent.sock")
    agent = supervised(socket_path=path, launcher=[ACTIVATE, "-l", path, "--"])  # a stream socket
    agent.start(wait=False)
    wait_until(lambda: os.path.exists(path), 10, message="systemd-socket-activate to listen")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as trigger:
        trigger.connect(path)
        assert agent.wait_exit(15) == 2
    assert (
        "config error: the socket from systemd is not an AF_UNIX SOCK_SEQPACKET socket: use "
        "ListenSequentialPacket= in the .socket unit" in agent.stderr_text
    )
    assert "ingest started" not in agent.stderr_text
