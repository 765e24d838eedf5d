"""Fixtures for the supervisor tests: agents started through ``supervised``, a fake systemd notify socket.

* ``supervised(**settings)``: an :class:`AgentProcess` (not started: tests pass env, launchers, config
  files first), stopped at teardown (SIGKILL of every process after a failing test; the stderr is shown).
* ``notify_socket``: a :class:`NotifyListener`, the ``$NOTIFY_SOCKET`` systemd would give the agent.
"""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_process import AgentProcess, wait_until


class NotifyListener:
    """A datagram socket recording every sd_notify message as (monotonic time, {KEY: VALUE})."""

    def __init__(self, abstract: bool = False) -> None:
        self._dir = tempfile.mkdtemp(prefix="at-notify-", dir="/tmp")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"at-notify-{os.getpid()}-{id(self)}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.address = os.path.join(self._dir, "notify")
            self.sock.bind(self.address)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="notify-listener")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._lock:
                self.messages.append((time.monotonic(), fields))

    def snapshot(self) -> list[tuple[float, dict[str, str]]]:
        with self._lock:
            return list(self.messages)

    def times(self, key: str, value: str | None = None) -> list[float]:
        """When messages carrying ``key`` (with ``value``, if given) arrived."""
        return [t for t, m in self.snapshot() if key in m and (value is None or m[key] == value)]

    def env(self, watchdog_usec: int | None = None) -> dict[str, str]:
        env = {"NOTIFY_SOCKET": self.address}
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        return env

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
        import shutil

        shutil.rmtree(self._dir, ignore_errors=True)


@pytest.fixture
def notify_socket() -> Iterator[NotifyListener]:
    listener = NotifyListener()
    yield listener
    listener.close()


@pytest.fixture
def supervised(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., AgentProcess]]:
    made: list[AgentProcess] = []

    def make(directory: Path | None = None, **settings: Any) -> AgentProcess:
        agent = AgentProcess(directory or tmp_path / f"agent{len(made)}", **settings)
        made.append(agent)
        return agent

    yield make
    failed = any(getattr(getattr(request.node, f"_sup_rep_{w}", None), "failed", False) for w in ("setup", "call"))
    for agent in made:
        if agent.proc is not None and agent.running:
            if failed:
                agent.kill()
            else:
                agent.cleanup()
        agent.cleanup()
        if failed:
            print(f"==== agent stderr (last 8 KiB) ====\n{agent.stderr_text[-8192:]}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    setattr(item, f"_sup_rep_{report.when}", report)
    return report


def freeze(pid: int, timeout: float = 5.0) -> None:
    """SIGSTOP ``pid`` and wait until the kernel reports it stopped.

    A signal sent while the process is still in the kernel (e.g. mid-exec) is only acted on when it returns
    to user space, lowest signal number first; a SIGTERM sent in that window would be delivered before the
    SIGSTOP (15 < 19). Waiting for state ``T`` makes "it is frozen" a fact before the test goes on.
    """
    os.kill(pid, signal.SIGSTOP)
    wait_until(lambda: _proc_state(pid) in ("T", "t"), timeout, message=f"pid {pid} to be stopped")


def _proc_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    return _proc_state(pid) not in ("", "Z")
