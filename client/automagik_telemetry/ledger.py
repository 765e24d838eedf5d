"""Delivery bookkeeping: what became of every record taken from the queue, and ``flush`` waiting on it.

Records are numbered by *index* in queue order (``claim`` hands out the indices of a batch). They
travel in *messages*, each covering a contiguous index range, kept (oldest first) until *settled*:
acknowledged, rejected, dropped, or unconfirmed (sent on a connection that broke before its ACK;
never resent, which could duplicate). A message built but never handed to the kernel is not settled:
it stays *unsent* and is sent again, with a new seq, after a reconnect.

The *frontier* is the index below which every record is settled; a ``flush`` waits for it to pass
the records enqueued before the call, and fails if one of them failed (dropped, rejected,
unconfirmed). Everything here runs in the sender thread except ``wait_for``, which runs in the
thread calling ``flush``; they share the frontier, the failure mark and the waiters, under a lock.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable

from .protocol import RecordKind

logger = logging.getLogger("automagik_telemetry")  # never captured by our LoggingHandler (no loop)

#: What the operator can do about a REJECT reason (docs/protocol.md#reject-reasons).
REJECT_HINTS = {
    "disk_full": ": the agent's WAL disk is full or over wal.max_size under disk_policy reject_new",
    "wal_error": ": the agent cannot write its WAL (see its log)",
    "too_many_connections": ": the agent has socket.max_connections clients",
    "unsupported_kind": ": the agent is older than this client (logs and metrics need agent 0.2)",
}


class Message:
    """A RECORDS message covering record indices [start, end); ``seq`` is 0 until sent.

    ``lines`` (the serialized records) are dropped once the message is sent or settled.
    """

    __slots__ = ("compact", "count", "end", "kind", "lines", "seq", "settled", "start")

    def __init__(
        self, start: int, end: int, lines: list[bytes], kind: RecordKind = RecordKind.SPAN, compact: bool = False
    ) -> None:
        self.kind = kind  # every record of a message is of one kind (the header says which)
        self.compact = compact  # span lines in the compact format (sent after the compact resource line)
        self.start = start
        self.end = end
        self.lines: list[bytes] | None = lines
        self.count = len(lines)
        self.seq = 0
        self.settled = False


class _Waiter:
    """A ``flush`` call: done when the frontier reaches ``target``; ``ok`` turns False on a failure."""

    __slots__ = ("done", "ok", "start", "target")

    def __init__(self, start: int, target: int, ok: bool) -> None:
        self.start = start
        self.target = target
        self.ok = ok
        self.done = threading.Event()


class DeliveryLedger:
    """Messages from built to settled, the ACK/REJECT handling, the frontier and the delivery counters."""

    def __init__(self) -> None:
        self._inflight: collections.deque[Message] = collections.deque()  # every unsettled message
        self._unsent: collections.deque[Message] = collections.deque()  # built, not yet taken by the kernel
        self._unacked: dict[int, Message] = {}  # seq -> message, in seq order
        self._claimed = 0  # indices handed out by claim()

        # Shared with the flush callers (guarded by _lock). Re-entrant: a __del__ or GC callback that
        # flushes may run while this thread already holds it.
        self._lock = threading.RLock()
        self._frontier = 0
        self._max_failed = -1
        self._waiters: list[_Waiter] = []

        self.sent_records = 0
        self.sent_messages = 0
        self.acked_records = 0
        self.dropped_oversized = 0
        self.rejected_records = 0
        self.unconfirmed_records = 0
        self.rejected_other_messages = 0
        #: REJECT reason as the agent sent it -> records rejected with it.
        self.reject_reasons: dict[str, int] = {}
        self.last_reject = ""  # the reason of the last REJECT, "" before any

    # -- building --------------------------------------------------------------------------------

    def claim(self, count: int) -> int:
        """Take ``count`` new records into the books; return the index of the first.

        Each of them must then end up in one ``add_message`` range or be failed with ``fail``.
        """
        start = self._claimed
        self._claimed += count
        return start

    def add_message(
        self, start: int, end: int, lines: list[bytes], kind: RecordKind = RecordKind.SPAN, compact: bool = False
    ) -> None:
        """A message of ``lines`` (records of ``kind``) covering [start, end), sent after those waiting."""
        if not lines:
            return
        message = Message(start, end, lines, kind, compact)
        self._inflight.append(message)
        self._unsent.append(message)

    def drop_oversized_record(self, index: int) -> None:
        """The record ``index`` does not fit in any message."""
        self.dropped_oversized += 1
        self.fail(index, index + 1)

    # -- sending ---------------------------------------------------------------------------------

    @property
    def next_unsent(self) -> Message | None:
        return self._unsent[0] if self._unsent else None

    @property
    def unacked_messages(self) -> int:
        return len(self._unacked)

    def sent(self, message: Message, seq: int) -> None:
        """``message`` (the first unsent one) was handed to the kernel as ``seq``."""
        self._unsent.popleft()
        message.seq = seq
        message.lines = None
        self._unacked[seq] = message
        self.sent_messages += 1
        self.sent_records += message.count

    def drop_unsent_oversized(self, message: Message) -> None:
        """``message`` (the first unsent one) is larger than the socket accepts (``EMSGSIZE``)."""
        self._unsent.popleft()
        self.dropped_oversized += message.count
        self._settle(message, failed=True)

    def discard_unsent(self) -> int:
        """Forget the messages not sent yet (at shutdown); return how many records they held."""
        count = sum(message.count for message in self._unsent)
        self._unsent.clear()
        return count

    # -- replies ---------------------------------------------------------------------------------

    def acked(self, seq: int) -> None:
        """ACK: every message of this connection with seq <= ``seq`` is durable."""
        unacked = self._unacked
        while unacked:
            first = next(iter(unacked))
            if first > seq:
                break
            message = unacked.pop(first)
            self.acked_records += message.count
            self._settle(message, failed=False)

    def rejected(self, seq: int, reason: str) -> None:
        """REJECT of message ``seq``; a seq of no RECORDS message (e.g. CLIENT_STATS) is only counted."""
        message = self._unacked.pop(seq, None)
        if message is None:
            self.rejected_other_messages += 1
            return
        self.rejected_records += message.count
        if reason not in self.reject_reasons:  # once per reason: the counters tell the rest
            logger.warning(
                "automagik-telemetry: the agent refused %d records (%s)%s",
                message.count,
                reason,
                REJECT_HINTS.get(reason, ""),
            )
        self.reject_reasons[reason] = self.reject_reasons.get(reason, 0) + message.count
        self.last_reject = reason
        self._settle(message, failed=True)

    def abandon_unacked(self) -> None:
        """The connection is gone: its sent-but-unacknowledged messages become unconfirmed."""
        for message in self._unacked.values():
            self.unconfirmed_records += message.count
            self._settle(message, failed=True)
        self._unacked.clear()

    # -- settlement and flush --------------------------------------------------------------------

    def _settle(self, message: Message, failed: bool) -> None:
        message.settled = True
        message.lines = None
        if failed:
            self.fail(message.start, message.end)

    def fail(self, start: int, end: int) -> None:
        """The records [start, end) will never be acknowledged: fail the flushes waiting for them."""
        with self._lock:
            self._max_failed = max(self._max_failed, end - 1)
            for waiter in self._waiters:
                if start < waiter.target and end > waiter.start:
                    waiter.ok = False

    def publish(self) -> None:
        """Advance the frontier past settled messages and release the flush calls it satisfies."""
        inflight = self._inflight
        while inflight and inflight[0].settled:
            inflight.popleft()
        frontier = inflight[0].start if inflight else self._claimed
        with self._lock:
            self._frontier = frontier
            for waiter in self._waiters:
                if frontier >= waiter.target:
                    waiter.done.set()

    @property
    def flush_pending(self) -> bool:
        """A ``flush`` is waiting (read without the lock: a hint for how promptly to read ACKs)."""
        return bool(self._waiters)

    def wait_for(self, target: int, timeout: float, before_waiting: Callable[[], None]) -> bool:
        """Block until every record below index ``target`` is settled: True if all were acknowledged
        (or settled before this call), False on a failure among them or after ``timeout`` seconds.

        ``before_waiting`` runs once the call is registered, if it has to wait (it wakes the sender).
        """
        with self._lock:
            if self._frontier >= target:
                return True
            waiter = _Waiter(self._frontier, target, ok=self._max_failed < self._frontier)
            self._waiters.append(waiter)
        before_waiting()
        try:
            done = waiter.done.wait(max(0.0, timeout))
        finally:
            with self._lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        return done and waiter.ok

    def release_waiters(self) -> None:
        """Nothing will settle any more (the sender stopped): fail every waiting flush now."""
        with self._lock:
            for waiter in self._waiters:
                waiter.ok = False
                waiter.done.set()
