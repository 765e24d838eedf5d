"""A child process the agent keeps running: started, restarted with backoff when it dies, stopped.

The agent runs ingest in its own process and the shipper as this child, so a slow or wedged
ClickHouse never stalls ingest and a crash of one never takes the other down. A child that exits
with the CONFIG exit code is not restarted (its configuration cannot work; restarting would spin).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence

from . import exitcodes

log = logging.getLogger(__name__)


def _die_with_parent(parent: int) -> Callable[[], None]:
    """For the child before exec: SIGTERM when the parent dies (Linux prctl PR_SET_PDEATHSIG)."""

    def arm() -> None:
        ctypes.CDLL(None).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return arm


class ChildProcess:
    def __init__(self, name: str, argv: Sequence[str], backoff_base_s: float = 1.0, backoff_max_s: float = 30.0,
                 healthy_after_s: float = 10.0) -> None:
        self.name = name
        self.argv = list(argv)
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.healthy_after_s = healthy_after_s
        self.restarts = 0
        self.gave_up = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name=f"child-{name}", daemon=True)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def _spawn(self) -> None:
        with self._lock:
            if not self._stopping.is_set():
                # Own session: Ctrl-C reaches the agent only, which stops the child in order. Parent-death
                # signal: if the agent is killed (-9), the child gets SIGTERM instead of living on.
                arm = _die_with_parent(os.getpid())
                self._proc = subprocess.Popen(self.argv, start_new_session=True, preexec_fn=arm)
                log.info("%s started (pid %d)", self.name, self._proc.pid)

    def _watch(self) -> None:
        delay = self.backoff_base_s
        while not self._stopping.is_set():
            proc = self._proc
            assert proc is not None
            started = time.monotonic()
            code = proc.wait()
            if self._stopping.is_set():
                return
            if code == exitcodes.CONFIG:
                log.error("%s exited with a configuration error (exit code %d); not restarting it: fix the "
                          "configuration and restart the agent. Ingest goes on; the WAL keeps the data.",
                          self.name, code)
                self.gave_up = True
                return
            if time.monotonic() - started >= self.healthy_after_s:
                delay = self.backoff_base_s
            log.error("%s exited with code %d; restarting it in %.1f s", self.name, code, delay)
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, self.backoff_max_s)
            self.restarts += 1
            self._spawn()

    def stop(self, deadline_s: float = 10.0) -> int | None:
        """SIGTERM the child, wait up to ``deadline_s``, then SIGKILL. Returns its exit code."""
        self._stopping.set()
        with self._lock:
            proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=deadline_s)
            except subprocess.TimeoutExpired:
                log.error("%s did not stop within %.0f s; killing it (its data stays in the WAL)", self.name,
                          deadline_s)
                proc.kill()
                proc.wait()
        self._thread.join(timeout=5)
        return proc.returncode
