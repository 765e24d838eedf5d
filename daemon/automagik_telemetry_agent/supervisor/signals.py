"""The supervisor's signal queue: the handlers only queue, the loop drains.

``signal.set_wakeup_fd`` on one end of a socket pair makes the C-level handler write each signal's
number there; the Python-level handler does nothing. The other end is registered in the supervisor's
selector, so a signal wakes the loop, which reads the numbers (:meth:`SignalQueue.drain`) and runs one
``handle_*`` method per signal.
"""

from __future__ import annotations

import contextlib
import signal
import socket

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)


class SignalQueue:
    def __init__(self) -> None:
        self._r: socket.socket | None = None
        self._w: socket.socket | None = None

    def install(self) -> socket.socket:
        """Queue HANDLED_SIGNALS (and ignore SIGXFSZ); the socket to watch for them."""
        self._r, self._w = socket.socketpair()
        for s in (self._r, self._w):
            s.setblocking(False)
        signal.set_wakeup_fd(self._w.fileno(), warn_on_full_buffer=False)
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, _queued)  # the C handler writes signum to the wakeup fd: that is the queue
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        return self._r

    def drain(self) -> bytes:
        """The signal numbers queued since the last drain, oldest first (one byte each)."""
        assert self._r is not None
        try:
            return self._r.recv(4096)
        except (BlockingIOError, InterruptedError):
            return b""

    def close(self) -> None:
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(-1)
        for s in (self._r, self._w):
            if s is not None:
                s.close()


def _queued(signum: int, frame: object) -> None:
    """Python-level handler: nothing to do, the signal number is already queued on the wakeup fd."""
