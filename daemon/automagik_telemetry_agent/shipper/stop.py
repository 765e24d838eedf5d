"""The shipper's stop request: one event and one deadline, the only ones the shipper and sender threads look at.

:meth:`StopRequest.request` sets the deadline, then the event. Every timed wait of the shipper is on
the event: the waits between batches (polls, detection retries) end at the stop, the waits of a send in
progress (backoffs, config retries, the rate limit) go on until the deadline, after which the send is
abandoned (its batch stays in the WAL, uncommitted).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..lifecycle.liveness import Liveness

__all__ = ["StopRequest"]


class StopRequest:
    def __init__(self) -> None:
        self._event = threading.Event()
        self._deadline = float("inf")

    def request(self, deadline_s: float) -> None:
        """Stop; a send in progress may go on for ``deadline_s`` more (an earlier deadline is kept)."""
        self._deadline = min(self._deadline, time.monotonic() + deadline_s)
        self._event.set()

    def declare_waits(self, liveness: Liveness) -> None:
        """Wait on an event of ``liveness`` from now on, so every timed wait is declared to it (a stop
        requested already carries over). Call before the waits start."""
        event = liveness.event()
        if self._event.is_set():
            event.set()
        self._event = event

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` or until a stop is requested; True if it was."""
        return self._event.wait(timeout)

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
