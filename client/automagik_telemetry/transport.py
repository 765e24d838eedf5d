"""The one background sender thread, tying the queue, the agent connection and the ledger together.

Application threads only ``put`` into the ``SpanQueue`` (see span_queue.py). Everything else
happens in the sender thread: serializing records into RECORDS messages, sending them over the
``AgentConnection`` (backpressure on ``EAGAIN``, a window of unacknowledged messages), reading the
ACK/REJECT replies into the ``DeliveryLedger``, periodic CLIENT_STATS, and waking ``flush`` callers.
It also owns the transport's lifecycle: lazy start, ``stop``, and giving up the socket in a forked
child.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeAlias, TypeVar

from .connection import AgentConnection
from .ledger import DeliveryLedger
from .protocol import (
    COMPACT_SPANS,
    HEADER_SIZE,
    MAX_PAYLOAD_SIZE,
    MessageType,
    ProtocolError,
    RecordKind,
    decode_header,
    encode,
    encode_records,
)
from .scrub import scrub_record
from .settings import TelemetryConfig
from .span_queue import WAKE_THRESHOLD, SpanQueue

#: Records taken from the queue per serialization round.
BATCH_SPANS = 1024
#: 0.1.4's default ``batch_size``: left at it, the queue keeps its own wake-up threshold.
_V014_BATCH_SIZE = 100
STATS_INTERVAL = 10.0
#: How long the sender blocks in poll() while waiting for writability or for ACKs a flush awaits.
BLOCKED_POLL = 0.05
ACK_POLL = 0.005
#: Flow-control window: at most this many sent-but-unacknowledged messages per connection (16 MiB).
#: An agent that reads but stops acknowledging then gets backpressure too, and memory stays bounded.
MAX_UNACKED_MESSAGES = 256
#: Errors that mean "the kernel has no room now": keep the message and retry.
_RETRY_ERRNOS = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS})
#: The resource line used if building the real one fails.
_FALLBACK_RESOURCE_LINE = b'{"attributes":[]}\n'

#: A value of ``Transport.snapshot()``: a counter, ``connected``, or ``reject_reasons``.
StatsValue: TypeAlias = int | bool | str | dict[str, int]


class Record(Protocol):
    """What the sender needs of a queued record (``Span``, ``LogRecord``, ``MetricPoint``)."""

    @property
    def record_kind(self) -> RecordKind:
        """Which signal the record is (a message carries records of one kind)."""
        ...

    def to_line(self, max_length: int) -> bytes:
        """The record as one newline-terminated JSON line."""
        ...


R = TypeVar("R", bound=Record)


class Transport(Generic[R]):
    """Owns the queue, the sender thread, the agent connection and the delivery ledger."""

    def __init__(
        self,
        config: TelemetryConfig,
        resource_line: Callable[[], bytes],
        on_fork: Callable[[R], None] | None = None,
        collect: Callable[[], Sequence[R]] | None = None,
    ) -> None:
        """``resource_line()`` is called once, in the sender thread. ``on_fork(record)`` (a bound
        method, held weakly: the sender thread must not keep the client alive) gets a record put in
        a forked child that the at-fork hook missed (a fork that bypassed ``os.fork``). ``collect()`` (the
        metric instruments' data points) is called every ``metrics_interval`` in the sender thread and
        its records queued."""
        self._max_length = config.max_attribute_length
        self._flush_interval = config.flush_interval
        self._resource_line_factory = resource_line
        self._resource_line = b""
        self._compact_resource_line = b""
        #: The agent on this connection announced compact span lines (its STATS reply to the request sent
        #: on connecting); until then, and with an older agent, spans go as OTLP/JSON lines.
        self._compact = False
        pid = os.getpid()
        #: Names this client instance in CLIENT_STATS (the agent keeps the latest report per instance);
        #: a forked child gets a new transport, hence a new instance with its own counters.
        self.instance = f"{pid}-{random.getrandbits(64):016x}"
        self._on_fork = weakref.WeakMethod(on_fork) if on_fork is not None else None

        # Guards the thread start and app_internal_errors. Re-entrant: a __del__ or GC callback that
        # records a span may run while this thread already holds it.
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping = False

        # 0.1.4's batch_size, when given, is how many queued records wake the sender (default: ours).
        wake = WAKE_THRESHOLD if config.batch_size == _V014_BATCH_SIZE else max(1, config.batch_size)
        self.queue: SpanQueue[R] = SpanQueue(
            config.max_queue_size, on_fork=self._forked, start_consumer=self._start, wake_threshold=wake
        )
        #: Applied to span and log records in the sender thread, just before serialization.
        self._privacy = config.privacy
        self.connection = AgentConnection(config.socket_path)
        self.ledger = DeliveryLedger()
        self._next_stats = 0.0
        self._collect = collect
        self._metrics_interval = config.metrics_interval
        self._next_metrics = time.monotonic() + config.metrics_interval

        self.dropped_at_shutdown = 0
        self.send_errors = 0
        self.protocol_errors = 0
        self.stats_messages = 0
        self.internal_errors = 0  # sender thread
        self.app_internal_errors = 0  # application threads (guarded by _lock)

    # -- application side ------------------------------------------------------------------------

    def _forked(self, record: R) -> None:
        handler = self._on_fork() if self._on_fork is not None else None
        if handler is not None:
            handler(record)

    def _start(self) -> bool:
        """Start the sender thread unless stopping (the queue calls this on a put); True if it runs."""
        with self._lock:
            if self._thread is None and not self._stopping:
                thread = threading.Thread(target=self._run, name="automagik-telemetry-sender", daemon=True)
                thread.start()
                self._thread = thread
            return self._thread is not None

    def count_internal_error(self) -> None:
        with self._lock:
            self.app_internal_errors += 1

    def flush(self, timeout: float) -> bool:
        """True once every record queued before the call is ACKed; False on timeout or a failure."""
        return self.ledger.wait_for(self.queue.enqueued, timeout, before_waiting=self.queue.wake.set)

    def stop(self, join_timeout: float) -> None:
        """Stop the sender (it sends final CLIENT_STATS and closes the socket); idempotent."""
        self._stopping = True  # no lock: this may run from a GC finalizer, on any thread
        thread = self._thread
        self._stop.set()
        self.queue.wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, join_timeout))

    def abandon_in_child(self) -> None:
        """After fork, in the child: close this process's copy of the socket fd; touch nothing else.

        The parent's connection stays intact (it holds its own fd); the parent sends what was queued.
        """
        self.connection.abandon()

    def snapshot(self) -> dict[str, StatsValue]:
        """All counters (cumulative for this process), plus the current queue depth and connection."""
        ledger, connection = self.ledger, self.connection
        counters: dict[str, StatsValue] = {
            "sent_records": ledger.sent_records,
            "sent_messages": ledger.sent_messages,
            "acked_records": ledger.acked_records,
            "dropped_oversized": ledger.dropped_oversized,
            "rejected_records": ledger.rejected_records,
            "unconfirmed_records": ledger.unconfirmed_records,
            "dropped_at_shutdown": self.dropped_at_shutdown,
            "reconnects": connection.reconnects,
            "connect_errors": connection.connect_errors,
            "send_errors": self.send_errors,
            "protocol_errors": self.protocol_errors,
            "stats_messages": self.stats_messages,
            "rejected_other_messages": ledger.rejected_other_messages,
        }
        queue = self.queue.counts()
        with self._lock:
            internal_errors = self.internal_errors + self.app_internal_errors
        counters["enqueued_records"] = queue.enqueued
        counters["dropped_queue_full"] = queue.dropped_full
        counters["dropped_after_shutdown"] = queue.dropped_after_shutdown
        counters["internal_errors"] = internal_errors
        counters["queue_depth"] = queue.depth
        counters["connected"] = connection.connected
        counters["last_connect_error"] = connection.last_connect_error
        counters["last_reject"] = ledger.last_reject
        counters["reject_reasons"] = dict(ledger.reject_reasons)
        return counters

    def stats_payload(self) -> dict[str, str | int]:
        """The CLIENT_STATS object: ``instance`` plus the cumulative counters (the agent sums them over
        instances and keeps each one's maximum, so gauges such as queue_depth are left out)."""
        payload: dict[str, str | int] = {"instance": self.instance}
        for name, value in self.snapshot().items():
            if isinstance(value, int) and not isinstance(value, bool) and name != "queue_depth":
                payload[name] = value
        return payload

    # -- sender thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._resource_line = self._resource_line_factory()
        except Exception:
            self.internal_errors += 1
            self._resource_line = _FALLBACK_RESOURCE_LINE
        self._compact_resource_line = compact_resource_line(self._resource_line)
        self._next_stats = time.monotonic() + STATS_INTERVAL
        while not self._stopping:
            try:
                self._step()
            except Exception:
                self.internal_errors += 1
                self._stop.wait(0.01)
        try:
            self._finish()
        except Exception:
            self.internal_errors += 1

    def _step(self) -> None:
        connection, ledger, queue = self.connection, self.ledger, self.queue
        if not connection.connected:
            if not connection.connect():
                self._stop.wait(min(max(0.0, connection.next_attempt - time.monotonic()), self._flush_interval))
                return
            self._ask_line_formats()
        self._read_replies()
        self._maybe_send_stats()
        self._maybe_collect_metrics()
        if not connection.connected:
            return
        if ledger.next_unsent is not None:
            if ledger.unacked_messages >= MAX_UNACKED_MESSAGES:
                connection.wait(BLOCKED_POLL)  # window full: wait for ACKs
                return
            if not self._send_unsent():
                return  # blocked (the wait happened in _send_unsent) or disconnected
        elif queue:
            queue.wake.clear()
            self._build_messages()
            ledger.publish()
            return  # loop straight back to send what was built
        ledger.publish()
        if ledger.flush_pending and ledger.unacked_messages:
            connection.wait(ACK_POLL)  # a flush is waiting for ACKs: read them promptly
        elif not queue:
            queue.wake.wait(self._flush_interval)
            queue.wake.clear()  # safe: the queue is checked again before the next wait

    def _disconnect(self) -> None:
        """Close the connection: sent-but-unacked messages become unconfirmed (never resent)."""
        self.connection.close()
        self.ledger.abandon_unacked()
        self.ledger.publish()

    def _read_replies(self) -> None:
        connection, ledger = self.connection, self.ledger
        while connection.connected:
            try:
                data = connection.receive()
            except OSError:
                self.send_errors += 1
                self._disconnect()
                return
            if data is None:
                return
            if not data:  # the agent closed the connection
                self._disconnect()
                return
            try:
                header = decode_header(data)
            except ProtocolError:
                self.protocol_errors += 1
                continue
            if header.type == MessageType.ACK:
                ledger.acked(header.seq)
                connection.agent_is_healthy()  # a later disconnect retries quickly
            elif header.type == MessageType.REJECT:
                reason = bytes(data[HEADER_SIZE:]).decode("ascii", "replace") or "unknown"
                ledger.rejected(header.seq, reason)
            elif header.type == MessageType.STATS:
                self._compact = COMPACT_SPANS in line_formats(bytes(data[HEADER_SIZE:]))

    def _ask_line_formats(self) -> None:
        """On a new connection: spans as OTLP/JSON lines until the agent's STATS says it reads compact ones."""
        self._compact = False
        # No room or gone: this connection keeps the OTLP/JSON lines (any agent reads them).
        with contextlib.suppress(OSError):
            self.connection.send(encode(MessageType.STATS_REQUEST, seq=self.connection.next_seq))

    def _build_messages(self) -> None:
        """Take up to BATCH_SPANS records off the queue and pack them into messages."""
        records = self.queue.take(BATCH_SPANS)
        ledger = self.ledger
        budget = MAX_PAYLOAD_SIZE - len(self._resource_line)
        start = ledger.claim(len(records))
        end = start + len(records)
        lines: list[bytes] = []
        size = 0
        kind = records[0].record_kind if records else RecordKind.SPAN
        compact = self._compact
        budget -= len(self._compact_resource_line) - len(self._resource_line) if compact else 0
        for index, record in enumerate(records, start):
            try:
                if self._privacy is not None:
                    scrub_record(record, self._privacy)
                to_compact = getattr(record, "to_compact_line", None) if compact else None
                line = to_compact(self._max_length) if to_compact is not None else record.to_line(self._max_length)
            except Exception:
                self.internal_errors += 1
                ledger.fail(index, index + 1)
                continue
            if len(line) > budget:
                ledger.drop_oversized_record(index)
                continue
            if size + len(line) > budget or record.record_kind is not kind:
                ledger.add_message(start, index, lines, kind, compact and kind is RecordKind.SPAN)
                start, lines, size, kind = index, [], 0, record.record_kind
            lines.append(line)
            size += len(line)
        ledger.add_message(start, end, lines, kind, compact and kind is RecordKind.SPAN)

    def _send_unsent(self) -> bool:
        """Send built messages in order; False if blocked (after waiting a little) or disconnected."""
        connection, ledger = self.connection, self.ledger
        while (message := ledger.next_unsent) is not None and ledger.unacked_messages < MAX_UNACKED_MESSAGES:
            seq = connection.next_seq
            try:
                resource_line = self._compact_resource_line if message.compact else self._resource_line
                connection.send(encode_records(resource_line, message.lines or [], seq=seq, kind=message.kind))
            except OSError as exc:
                if exc.errno in _RETRY_ERRNOS:
                    self._wait_writable(exc.errno)
                    return False
                if exc.errno == errno.EMSGSIZE:
                    ledger.drop_unsent_oversized(message)
                    continue
                # Never handed to the kernel: it stays unsent, to be sent after the reconnect.
                self.send_errors += 1
                self._disconnect()
                return False
            ledger.sent(message, seq)
        return True

    def _wait_writable(self, error: int) -> None:
        """Backpressure: the agent is not reading. Wait briefly (reading replies meanwhile)."""
        if error == errno.ENOBUFS:  # poll() may report writable at once: just sleep a little
            self._stop.wait(0.01)
        else:
            self.connection.wait(BLOCKED_POLL, writable=True)
        self.ledger.publish()

    def _maybe_collect_metrics(self) -> None:
        """Every ``metrics_interval``: queue one data point per series of the metric instruments."""
        now = time.monotonic()
        if self._collect is None or now < self._next_metrics:
            return
        self._next_metrics = now + self._metrics_interval
        for point in self._collect():
            self.queue.put(point)

    def _maybe_send_stats(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.connection.connected or (now < self._next_stats and not force):
            return
        self._next_stats = now + STATS_INTERVAL
        payload = json.dumps(self.stats_payload(), separators=(",", ":")).encode()
        try:
            self.connection.send(encode(MessageType.CLIENT_STATS, payload, seq=self.connection.next_seq))
        except OSError:
            return  # best effort: the counters are cumulative, the next report carries them
        self.stats_messages += 1

    def _finish(self) -> None:
        """On stop: count what is left behind, report the final stats, close."""
        self._read_replies()
        self.dropped_at_shutdown += self.queue.discard() + self.ledger.discard_unsent()
        self.ledger.abandon_unacked()  # before the final report, so that it carries them
        self._maybe_send_stats(force=True)
        self._disconnect()
        self.ledger.release_waiters()  # nothing will settle any more: release flush callers now


def compact_resource_line(resource_line: bytes) -> bytes:
    """The resource line of a message of compact span lines: the same object with ``lineFormat`` first."""
    if resource_line.startswith(b"{"):
        rest = resource_line[1:].lstrip()
        return b'{"lineFormat":"' + COMPACT_SPANS.encode() + (b'"' if rest.startswith(b"}") else b'",') + rest
    return resource_line  # not an object: leave it, the agent refuses it either way


def line_formats(stats: bytes) -> list[str]:
    """The ``line_formats`` an agent's STATS reply announces (``[]`` for an older agent or a bad reply)."""
    try:
        found = json.loads(stats).get("line_formats")
    except (ValueError, AttributeError):
        return []
    return [f for f in found if isinstance(f, str)] if isinstance(found, list) else []
