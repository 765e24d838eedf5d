"""The shipper's stop request: one event and one deadline, the only ones the shipper and sender threads look at.

:meth:`StopRequest.request` sets the deadline, then the event. Every timed wait of the shipper is on
the event: the waits between batches (polls, detection retries) end at the stop, the waits of a send in
progress (backoffs, config retries, the rate limit) go on until the deadline, after which the send is
abandoned (its batch stays in the WAL, uncommitted). A wait for the WAL's next write
(:meth:`StopRequest.wait_readable`, on the :class:`~..wal.watch.WalWatch` fd) ends at the stop too: a
pipe that becomes readable when the stop is requested.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..lifecycle.liveness import Liveness

__all__ = ["StopRequest"]


class StopRequest:
    def __init__(self) -> None:
        self._event = threading.Event()
        self._deadline = float("inf")
        self._liveness: Liveness | None = None
        # Readable once a stop is requested, for waits on a file descriptor (:meth:`wait_readable`).
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        weakref.finalize(self, _close_fds, self._wake_r, self._wake_w)

    def request(self, deadline_s: float) -> None:
        """Stop; a send in progress may go on for ``deadline_s`` more (an earlier deadline is kept)."""
        self._deadline = min(self._deadline, time.monotonic() + deadline_s)
        self._event.set()
        with contextlib.suppress(BlockingIOError):  # full: it is readable already
            os.write(self._wake_w, b"s")

    def declare_waits(self, liveness: Liveness) -> None:
        """Wait on an event of ``liveness`` from now on, so every timed wait is declared to it (a stop
        requested already carries over). Call before the waits start."""
        event = liveness.event()
        if self._event.is_set():
            event.set()
        self._event = event
        self._liveness = liveness

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` or until a stop is requested; True if it was."""
        return self._event.wait(timeout)

    def wait_readable(self, fd: int, timeout: float) -> bool:
        """Wait up to ``timeout`` until ``fd`` is readable or a stop is requested; True if it was a stop.
        Declared to the liveness like :meth:`wait`."""
        if self._event.is_set():
            return True
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        if fd >= 0:
            poller.register(fd, select.POLLIN)
        waiting = self._liveness.waiting(timeout) if self._liveness is not None else contextlib.nullcontext()
        with waiting:
            poller.poll(max(0, int(timeout * 1000 + 0.999)))
        return self._event.is_set()

    def abandon(self) -> bool:
        """A stop was requested and its deadline has passed: give up the send in progress."""
        return self._event.is_set() and time.monotonic() >= self._deadline

    def sleep(self, delay: float) -> None:
        """Wait ``delay`` seconds, but once a stop is requested no later than its deadline."""
        end = time.monotonic() + delay
        if not self._event.is_set():
            self._event.wait(delay)
        if self._event.is_set():
            remaining = min(end, self._deadline) - time.monotonic()
            if remaining > 0:
                time.sleep(remaining)


def _close_fds(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
