"""The bounded in-memory queue between the application threads and the sender thread.

``put`` is the application's hot path (the last step of ``Span.end``): one ``deque.append``, no lock
and no I/O, unless the queue is full (then the span is dropped and counted, under a lock). It also
carries two cheap checks that only an application thread can make: that this is still the process
that created the queue (a sampled ``getpid()``: a fork the at-fork hook missed is handed to
``on_fork``), and that the consumer is running (the first ``put`` calls ``start_consumer``).

Every record gets an *index* (0, 1, 2, ... in queue order) when the consumer takes it: the number
taken before it. ``enqueued`` is taken + still queued, read atomically, which is what ``flush``
waits for.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from os import getpid
from typing import Generic, NamedTuple, TypeVar

R = TypeVar("R")

#: The hot path wakes the consumer once this many records are queued (else its timer does).
WAKE_THRESHOLD = 512


class QueueCounts(NamedTuple):
    """The queue's counters, read together under its lock."""

    enqueued: int  # records taken by the consumer plus those still queued
    depth: int
    dropped_full: int
    dropped_after_shutdown: int


class SpanQueue(Generic[R]):
    """A bounded FIFO of finished records with drop accounting; one consumer, many producers."""

    __slots__ = (
        "_consumer_running",
        "_items",
        "_lock",
        "_max_size",
        "_on_fork",
        "_start_consumer",
        "_taken",
        "_wake_threshold",
        "dropped_after_shutdown",
        "dropped_full",
        "pid",
        "wake",
    )

    def __init__(
        self,
        max_size: int,
        *,
        on_fork: Callable[[R], None],
        start_consumer: Callable[[], bool],
        wake_threshold: int = WAKE_THRESHOLD,
    ) -> None:
        """``on_fork(record)`` gets a record put in another process than this queue's;
        ``start_consumer()`` is called (under the queue's lock) by ``put`` until it returns True."""
        self._items: collections.deque[R] = collections.deque()
        self._max_size = max_size
        self._wake_threshold = min(max(1, wake_threshold), max(1, max_size // 2))
        self._on_fork = on_fork
        self._start_consumer = start_consumer
        self._consumer_running = False
        #: The process this queue belongs to (a test sets it to simulate an unseen fork).
        self.pid = getpid()
        #: Set when there is a batch worth sending (or a flush); the consumer waits on it.
        self.wake = threading.Event()
        # Guards the counters below. Re-entrant: a __del__ or GC callback that records a span may run
        # while this thread already holds it.
        self._lock = threading.RLock()
        self._taken = 0
        self.dropped_full = 0
        self.dropped_after_shutdown = 0

    # -- application threads ---------------------------------------------------------------------

    def put(self, record: R) -> None:
        """Queue a finished record. O(1), never blocks on I/O; drops (and counts) when full."""
        items = self._items
        depth = len(items)
        if depth >= self._max_size:
            with self._lock:
                self.dropped_full += 1
            return
        if not depth & 63 and self.pid != getpid():  # fork backstop; sampled: getpid() is a syscall
            self._on_fork(record)
            return
        items.append(record)
        if depth >= self._wake_threshold and not self.wake.is_set():
            self.wake.set()
        if not self._consumer_running:
            self._ensure_consumer()

    def _ensure_consumer(self) -> None:
        with self._lock:
            if not self._consumer_running:
                self._consumer_running = self._start_consumer()

    def drop_after_shutdown(self, record: R) -> None:
        """Replaces ``put`` once the client is shut down: count the record, do not queue it."""
        with self._lock:
            self.dropped_after_shutdown += 1

    # -- consumer thread -------------------------------------------------------------------------

    def take(self, limit: int) -> list[R]:
        """Remove and return up to ``limit`` records, oldest first."""
        items = self._items
        with self._lock:
            taken = [items.popleft() for _ in range(min(limit, len(items)))]
            self._taken += len(taken)
        return taken

    def discard(self) -> int:
        """Throw every queued record away (at shutdown); return how many there were.

        They leave ``enqueued`` too: it counts records taken or still queued.
        """
        items = self._items
        count = len(items)
        items.clear()
        return count

    # -- anyone ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._items)

    def counts(self) -> QueueCounts:
        with self._lock:
            depth = len(self._items)
            return QueueCounts(self._taken + depth, depth, self.dropped_full, self.dropped_after_shutdown)

    @property
    def enqueued(self) -> int:
        """Records ever taken plus those still queued (the index the next ``put`` will get, or more)."""
        with self._lock:
            return self._taken + len(self._items)
