"""The life cycle of a server process a test starts and controls (tests/clickhouse_server.py's
``ClickHouseServer`` and tests/clickhouse_cluster.py's ``ZooKeeper`` and ``Replica``).

``ManagedProcess`` owns the ``subprocess.Popen`` and everything done to it: start on free 127.0.0.1
ports (retrying on a collision; later starts reuse the same ports and data dir), ``stop()`` (SIGTERM,
then SIGKILL after a timeout), ``kill()`` (SIGKILL: a crash), ``restart()``, ``freeze()``/``thaw()``
(SIGSTOP/SIGCONT; ``freeze`` returns once every thread is stopped), ``ensure_running()``, ``close()``
and ``log_tail()``. A subclass says what to run and when it is ready:

    what            its name in messages ("clickhouse-server", "ZooKeeper")
    start_error     the exception class a failed start raises
    start_timeout   the default of start()/restart()
    _ports          the ports it listens on (0 = not chosen yet), settable
    _command()      write the config files; return the command line (run in ``base_dir``)
    _ready()        True once it answers (and it is this instance answering)
    log_files       the files log_tail() shows; stdout and stderr go to ``console_log``
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self, TypeVar

STOP_TIMEOUT = 30.0
FREEZE_TIMEOUT = 5.0


T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.02,
    message: str = "condition",
    retry_on: tuple[type[BaseException], ...] = (),
) -> T:
    """Poll ``predicate`` until it returns a truthy value (returned); AssertionError after ``timeout``
    seconds naming ``message`` and the last value. An exception of a ``retry_on`` type counts as "not yet"
    (server down, table missing, ...); any other propagates."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last = value
        except retry_on as e:
            last = e
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}; last: {last!r}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def distinct_free_ports(n: int, taken: set[int] | None = None) -> list[int]:
    """``n`` different free ports, none in ``taken`` (which then holds them too)."""
    taken = set() if taken is None else taken
    ports: list[int] = []
    while len(ports) < n:
        p = free_port()
        if p not in taken and p not in ports:
            ports.append(p)
    taken.update(ports)
    return ports


def all_threads_stopped(pid: int) -> bool:
    """Every thread of ``pid`` is in state T/t (stopped) according to /proc, or the process is gone.

    SIGSTOP is asynchronous: a thread running on another core may still answer a request sent right
    after the signal, so whoever freezes a process waits for this."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return True
    for tid in tasks:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except FileNotFoundError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] not in ("T", "t"):
            return False
    return True


class StartCloseContext:
    """``with x:`` is ``x.start()`` ... ``x.close()``; a start that fails is closed too (ClickHouseCluster
    uses it as well)."""

    def start(self) -> Self:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


class ManagedProcess(StartCloseContext):
    """A server process in its own temp dir (see the module docstring)."""

    what = "process"
    start_error: type[Exception] = RuntimeError
    start_timeout = 60.0
    port_tries = 5

    def __init__(self, base_dir: str | os.PathLike[str] | None, prefix: str):
        self._owns_dir = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix=prefix))
        self.proc: subprocess.Popen[bytes] | None = None
        self.frozen = False

    # -- what a subclass defines ----------------------------------------------------------------
    @property
    def _ports(self) -> tuple[int, ...]:
        raise NotImplementedError

    @_ports.setter
    def _ports(self, ports: Sequence[int]) -> None:
        raise NotImplementedError

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    @property
    def console_log(self) -> Path:
        return self.base_dir / "console.log"

    @property
    def log_files(self) -> Sequence[Path]:
        return (self.console_log,)

    # -- process control ------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float | None = None) -> Self:
        """Start and wait until it is ready. The first start picks free ports (retrying on a collision);
        later starts (restart) reuse the same ports and data dir."""
        timeout = self.start_timeout if timeout is None else timeout
        if self.running:
            return self
        if all(self._ports):
            self._start_once(timeout)
            return self
        n = len(self._ports)
        last: Exception | None = None
        for _ in range(self.port_tries):
            self._ports = distinct_free_ports(n)
            try:
                self._start_once(timeout)
                return self
            except self.start_error as e:
                last = e
                if "Address already in use" not in str(e):
                    raise
                self._ports = (0,) * n
        raise self.start_error(f"no free ports after {self.port_tries} tries: {last}")

    def _start_once(self, timeout: float) -> None:
        command = self._command()
        with open(self.console_log, "wb") as out:
            self.proc = subprocess.Popen(
                command,
                cwd=self.base_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in pytest must not hit the server first
            )
        self.frozen = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                rc = self.proc.returncode
                self.proc = None
                raise self.start_error(f"{self.what} exited with {rc} during start\n{self.log_tail()}")
            if self._ready():
                return
            time.sleep(0.05)
        self.kill()
        raise self.start_error(f"{self.what} not ready after {timeout}s\n{self.log_tail()}")

    def _signal(self, sig: int) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(sig)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Graceful SIGTERM (thawed first); SIGKILL if it does not exit within ``timeout``."""
        if self.proc is None:
            return
        if self.frozen:
            self.thaw()
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL (a crash: no flush, no clean shutdown)."""
        if self.proc is None:
            return
        self._signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = None
        self.frozen = False

    def restart(self, timeout: float | None = None) -> None:
        """Stop (if running) and start again on the same ports with the same data."""
        self.stop()
        self.start(timeout)

    def freeze(self) -> None:
        """SIGSTOP: connections are accepted by the kernel but never answered.

        Returns once every thread is stopped (see :func:`all_threads_stopped`)."""
        self._signal(signal.SIGSTOP)
        self.frozen = True
        assert self.proc is not None
        pid = self.proc.pid
        deadline = time.monotonic() + FREEZE_TIMEOUT
        while not all_threads_stopped(pid):
            if time.monotonic() >= deadline:
                raise AssertionError(f"{self.what} (pid {pid}): threads still running {FREEZE_TIMEOUT}s after SIGSTOP")
            time.sleep(0.005)

    def thaw(self) -> None:
        """SIGCONT."""
        self._signal(signal.SIGCONT)
        self.frozen = False

    def ensure_running(self) -> None:
        """Undo whatever a test left behind (frozen or dead) so a shared server stays usable."""
        if self.frozen:
            self.thaw()
        if not self.running:
            self.start()

    def close(self) -> None:
        """Stop and delete the temp dir (if this object created it)."""
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for f in self.log_files:
            try:
                text = f.read_text(errors="replace").splitlines()[-lines:]
            except FileNotFoundError:
                continue
            out.append(f"--- {f} (last {lines} lines) ---\n" + "\n".join(text))
        return "\n".join(out) or f"(no {self.what} log)"
