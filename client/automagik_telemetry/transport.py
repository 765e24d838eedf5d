"""The span queue and the one background sender thread that ships it to the agent.

Application threads only ``enqueue`` (a ``deque.append``; a lock is taken only to count a drop).
Everything else happens in the sender thread: serializing spans into RECORDS messages, the
non-blocking ``SOCK_SEQPACKET`` connection (connect with backoff, backpressure on ``EAGAIN``),
reading ACK/REJECT replies, periodic CLIENT_STATS, and waking ``flush`` callers.

Delivery bookkeeping: every span taken from the queue gets an *index* (0, 1, 2, ... in queue order).
Messages cover contiguous index ranges and are kept in ``_inflight`` (oldest first) until they are
*settled*: acknowledged, rejected, dropped, or unconfirmed (sent on a connection that broke before
its ACK; never resent, which could duplicate). The *frontier* is the index below which every record
is settled; ``flush`` waits for the frontier to pass the records enqueued before it was called.
A message that was built but never handed to the kernel is not settled: it is resent (with a new
seq) after a reconnect.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import json
import os
import random
import select
import socket
import threading
import time
import weakref
from collections.abc import Callable
from os import getpid
from typing import Any

from .config import TelemetryConfig
from .protocol import (
    HEADER_SIZE,
    MAX_MESSAGE_SIZE,
    MAX_PAYLOAD_SIZE,
    MessageType,
    ProtocolError,
    decode_header,
    encode,
    encode_records,
)

#: The hot path wakes the sender once this many spans are queued (else the flush_interval timer does).
WAKE_THRESHOLD = 512
#: Spans taken from the queue per serialization round.
BATCH_SPANS = 1024
STATS_INTERVAL = 10.0
BACKOFF_START = 0.05
BACKOFF_CAP = 2.0
#: How long the sender blocks in poll() while waiting for writability or for ACKs a flush awaits.
BLOCKED_POLL = 0.05
ACK_POLL = 0.005
#: Flow-control window: at most this many sent-but-unacknowledged messages per connection (16 MiB).
#: An agent that reads but stops acknowledging then gets backpressure too, and memory stays bounded.
MAX_UNACKED_MESSAGES = 256
#: Errors that mean "the kernel has no room now": keep the message and retry.
_RETRY_ERRNOS = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS})


class _Message:
    """A RECORDS message covering record indices [start, end); ``seq`` is 0 until sent."""

    __slots__ = ("count", "end", "lines", "seq", "settled", "start")

    def __init__(self, start: int, end: int, lines: list[bytes]) -> None:
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


class Transport:
    """Owns the queue, the sender thread, the agent connection and the delivery counters."""

    def __init__(
        self, config: TelemetryConfig, resource_line: Callable[[], bytes], on_fork: Callable[[Any], None] | None = None
    ) -> None:
        self.queue: collections.deque[Any] = collections.deque()
        self._max_queue = config.max_queue_size
        self._wake_threshold = min(WAKE_THRESHOLD, max(1, config.max_queue_size // 2))
        self._max_length = config.max_attribute_length
        self._flush_interval = config.flush_interval
        self._path = config.socket_path
        self._resource_line_factory = resource_line
        self._resource_line = b""
        self.pid = os.getpid()
        #: Names this client instance in CLIENT_STATS (the agent keeps the latest report per instance);
        #: a forked child gets a new transport, hence a new instance with its own counters.
        self.instance = f"{self.pid}-{random.getrandbits(64):016x}"
        # Called with the record when enqueue finds itself in a forked child the at-fork hook missed
        # (a fork that bypassed os.fork). Held weakly: the sender thread must not keep the client alive.
        self._on_fork = weakref.WeakMethod(on_fork) if on_fork is not None else None  # type: ignore[arg-type]

        # Guards the drop counter, thread start, popped/frontier/waiters. Re-entrant: a __del__ or
        # GC callback that records a span may run while this thread already holds it.
        self._lock = threading.RLock()
        self.wake = threading.Event()  # "there is a batch (or a flush) to send"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping = False

        # Sender-thread state.
        self._sock: socket.socket | None = None
        self._poller: Any = None
        self._seq = 0
        self._ever_connected = False
        self._backoff = BACKOFF_START
        self._next_connect = 0.0
        self._next_stats = 0.0
        self._recv_buffer = bytearray(MAX_MESSAGE_SIZE)
        self._inflight: collections.deque[_Message] = collections.deque()
        self._unsent: collections.deque[_Message] = collections.deque()
        self._unacked: dict[int, _Message] = {}  # seq -> message, in seq order
        self._built = 0  # records taken from the queue and turned into messages (or dropped)

        # Shared with flush() (guarded by _lock).
        self._popped = 0
        self._frontier = 0
        self._max_failed = -1
        self._waiters: list[_Waiter] = []

        self.counters: dict[str, int] = dict.fromkeys(
            (
                "sent_records",
                "sent_messages",
                "acked_records",
                "dropped_oversized",
                "rejected_records",
                "unconfirmed_records",
                "dropped_at_shutdown",
                "reconnects",
                "connect_errors",
                "send_errors",
                "protocol_errors",
                "stats_messages",
                "rejected_other_messages",
            ),
            0,
        )
        self.reject_reasons: dict[str, int] = {}
        self.dropped_queue_full = 0
        self.dropped_after_shutdown = 0
        self.internal_errors = 0  # sender thread
        self.app_internal_errors = 0  # application threads (guarded by _lock)

    # -- application side ------------------------------------------------------------------------

    def enqueue(self, record: Any) -> None:
        """Queue a finished span. O(1), never blocks on I/O; drops (and counts) when full."""
        queue = self.queue
        depth = len(queue)
        if depth >= self._max_queue:
            with self._lock:
                self.dropped_queue_full += 1
            return
        if not depth & 63 and self.pid != getpid():  # fork backstop; sampled: getpid() is a syscall
            self._forked(record)
            return
        queue.append(record)
        if depth >= self._wake_threshold and not self.wake.is_set():
            self.wake.set()
        if self._thread is None:
            self._start()

    def _forked(self, record: Any) -> None:
        handler = self._on_fork() if self._on_fork is not None else None
        if handler is not None:
            handler(record)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None and not self._stopping:
                thread = threading.Thread(target=self._run, name="automagik-telemetry-sender", daemon=True)
                thread.start()
                self._thread = thread

    def drop_after_shutdown(self, record: Any) -> None:
        """The client's enqueue once it is shut down: count, do not queue."""
        with self._lock:
            self.dropped_after_shutdown += 1

    def count_internal_error(self) -> None:
        with self._lock:
            self.app_internal_errors += 1

    def flush(self, timeout: float) -> bool:
        """True once every record queued before the call is ACKed; False on timeout or a failure."""
        with self._lock:
            target = self._popped + len(self.queue)
            if self._frontier >= target:
                return True
            waiter = _Waiter(self._frontier, target, ok=self._max_failed < self._frontier)
            self._waiters.append(waiter)
        self.wake.set()
        try:
            done = waiter.done.wait(max(0.0, timeout))
        finally:
            with self._lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        return done and waiter.ok

    def stop(self, join_timeout: float) -> None:
        """Stop the sender (it sends final CLIENT_STATS and closes the socket); idempotent."""
        self._stopping = True  # no lock: this may run from a GC finalizer, on any thread
        thread = self._thread
        self._stop.set()
        self.wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, join_timeout))

    def abandon_in_child(self) -> None:
        """After fork, in the child: close this process's copy of the socket fd; touch nothing else.

        The parent's connection stays intact (it holds its own fd); the parent sends what was queued.
        """
        sock = self._sock
        self._sock = None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def snapshot(self) -> dict[str, Any]:
        """All counters (cumulative for this process), plus the current queue depth and connection."""
        counters: dict[str, Any] = dict(self.counters)
        with self._lock:
            depth = len(self.queue)
            counters["enqueued_records"] = self._popped + depth
            counters["dropped_queue_full"] = self.dropped_queue_full
            counters["dropped_after_shutdown"] = self.dropped_after_shutdown
            counters["internal_errors"] = self.internal_errors + self.app_internal_errors
        counters["queue_depth"] = depth
        counters["connected"] = self._sock is not None
        counters["reject_reasons"] = dict(self.reject_reasons)
        return counters

    # -- sender thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._resource_line = self._resource_line_factory()
        except Exception:
            self.internal_errors += 1
            self._resource_line = b'{"attributes":[]}\n'
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
        if self._sock is None and not self._connect():
            self._stop.wait(min(max(0.0, self._next_connect - time.monotonic()), self._flush_interval))
            return
        self._read_replies()
        self._maybe_send_stats()
        if self._sock is None:
            return
        if self._unsent:
            if len(self._unacked) >= MAX_UNACKED_MESSAGES:
                self._poll(select.POLLIN, BLOCKED_POLL)  # window full: wait for ACKs
                return
            if not self._send_unsent():
                return  # blocked (the wait happened in _send_unsent) or disconnected
        elif self.queue:
            self.wake.clear()
            self._build_messages()
            self._publish()
            return  # loop straight back to send what was built
        self._publish()
        if self._waiters and self._unacked:
            self._poll(select.POLLIN, ACK_POLL)  # a flush is waiting for ACKs: read them promptly
        elif not self.queue:
            self.wake.wait(self._flush_interval)
            self.wake.clear()  # safe: the queue is checked again before the next wait

    # connection

    def _connect(self) -> bool:
        now = time.monotonic()
        if now < self._next_connect:
            return False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            self.counters["connect_errors"] += 1
            self._next_connect = now + self._backoff
            self._backoff = min(self._backoff * 2, BACKOFF_CAP)
            return False
        self._sock = sock
        self._poller = select.poll()
        self._poller.register(sock.fileno(), select.POLLIN)
        self._seq = 0
        if self._ever_connected:
            self.counters["reconnects"] += 1
        self._ever_connected = True
        return True

    def _disconnect(self) -> None:
        """Close the connection: sent-but-unacked messages become unconfirmed (never resent)."""
        sock, self._sock, self._poller = self._sock, None, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        self._abandon_unacked()
        self._next_connect = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_CAP)
        self._publish()

    def _abandon_unacked(self) -> None:
        for message in self._unacked.values():
            self.counters["unconfirmed_records"] += message.count
            self._settle(message, failed=True)
        self._unacked.clear()

    def _poll(self, events: int, timeout: float) -> None:
        poller = self._poller
        if poller is None:
            return
        poller.modify(self._sock.fileno(), events)  # type: ignore[union-attr]
        poller.poll(timeout * 1000)

    # replies

    def _read_replies(self) -> None:
        buffer = self._recv_buffer
        while self._sock is not None:
            try:
                size = self._sock.recv_into(buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.counters["send_errors"] += 1
                self._disconnect()
                return
            if not size:  # the agent closed the connection
                self._disconnect()
                return
            data = memoryview(buffer)[:size]
            try:
                header = decode_header(data)
            except ProtocolError:
                self.counters["protocol_errors"] += 1
                continue
            if header.type == MessageType.ACK:
                self._on_ack(header.seq)
            elif header.type == MessageType.REJECT:
                reason = bytes(data[HEADER_SIZE:]).decode("ascii", "replace") or "unknown"
                self._on_reject(header.seq, reason)

    def _on_ack(self, seq: int) -> None:
        unacked = self._unacked
        while unacked:
            first = next(iter(unacked))
            if first > seq:
                break
            message = unacked.pop(first)
            self.counters["acked_records"] += message.count
            self._settle(message, failed=False)
        self._backoff = BACKOFF_START  # the agent is healthy: a later disconnect retries quickly

    def _on_reject(self, seq: int, reason: str) -> None:
        message = self._unacked.pop(seq, None)
        if message is None:  # e.g. a CLIENT_STATS message
            self.counters["rejected_other_messages"] += 1
            return
        self.counters["rejected_records"] += message.count
        self.reject_reasons[reason] = self.reject_reasons.get(reason, 0) + message.count
        self._settle(message, failed=True)

    # sending

    def _build_messages(self) -> None:
        """Take up to BATCH_SPANS spans off the queue and pack them into messages."""
        queue = self.queue
        with self._lock:
            spans = []
            for _ in range(min(BATCH_SPANS, len(queue))):
                spans.append(queue.popleft())
            self._popped += len(spans)
        budget = MAX_PAYLOAD_SIZE - len(self._resource_line)
        start = self._built
        lines: list[bytes] = []
        size = 0
        for index, span in enumerate(spans, start):
            try:
                line = span.to_line(self._max_length)
            except Exception:
                self.internal_errors += 1
                self._fail_range(index, index + 1)
                continue
            if len(line) > budget:
                self.counters["dropped_oversized"] += 1
                self._fail_range(index, index + 1)
                continue
            if size + len(line) > budget:
                self._add_message(start, index, lines)
                start, lines, size = index, [], 0
            lines.append(line)
            size += len(line)
        self._built += len(spans)
        self._add_message(start, self._built, lines)

    def _add_message(self, start: int, end: int, lines: list[bytes]) -> None:
        if not lines:
            return
        message = _Message(start, end, lines)
        self._inflight.append(message)
        self._unsent.append(message)

    def _send_unsent(self) -> bool:
        """Send built messages in order; False if blocked (after waiting a little) or disconnected."""
        while self._unsent and len(self._unacked) < MAX_UNACKED_MESSAGES:
            message = self._unsent[0]
            seq = self._seq + 1
            data = encode_records(self._resource_line, message.lines or [], seq=seq)
            try:
                self._sock.send(data, socket.MSG_NOSIGNAL)  # type: ignore[union-attr]
            except OSError as exc:
                if exc.errno in _RETRY_ERRNOS:
                    self._wait_writable(exc.errno)
                    return False
                self._unsent.popleft()
                if exc.errno == errno.EMSGSIZE:
                    self.counters["dropped_oversized"] += message.count
                    self._settle(message, failed=True)
                    continue
                self._unsent.appendleft(message)  # never handed to the kernel: resend after reconnect
                self.counters["send_errors"] += 1
                self._disconnect()
                return False
            self._unsent.popleft()
            self._seq = seq
            message.seq = seq
            message.lines = None
            self._unacked[seq] = message
            self.counters["sent_messages"] += 1
            self.counters["sent_records"] += message.count
        return True

    def _wait_writable(self, error: int) -> None:
        """Backpressure: the agent is not reading. Wait briefly (reading replies meanwhile)."""
        if error == errno.ENOBUFS:  # poll() may report writable at once: just sleep a little
            self._stop.wait(0.01)
        else:
            self._poll(select.POLLIN | select.POLLOUT, BLOCKED_POLL)
        self._publish()

    def _maybe_send_stats(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._sock is None or (now < self._next_stats and not force):
            return
        self._next_stats = now + STATS_INTERVAL
        payload = json.dumps(self.stats_payload(), separators=(",", ":")).encode()
        try:
            self._sock.send(encode(MessageType.CLIENT_STATS, payload, seq=self._seq + 1), socket.MSG_NOSIGNAL)
        except OSError:
            return  # best effort: the counters are cumulative, the next report carries them
        self._seq += 1
        self.counters["stats_messages"] += 1

    def stats_payload(self) -> dict[str, Any]:
        """The CLIENT_STATS object: ``instance`` plus the cumulative counters (the agent sums them over
        instances and keeps each one's maximum, so gauges such as queue_depth are left out)."""
        payload: dict[str, Any] = {"instance": self.instance}
        for name, value in self.snapshot().items():
            if isinstance(value, int) and not isinstance(value, bool) and name != "queue_depth":
                payload[name] = value
        return payload

    # settlement

    def _settle(self, message: _Message, failed: bool) -> None:
        message.settled = True
        message.lines = None
        if failed:
            self._fail_range(message.start, message.end)

    def _fail_range(self, start: int, end: int) -> None:
        with self._lock:
            self._max_failed = max(self._max_failed, end - 1)
            for waiter in self._waiters:
                if start < waiter.target and end > waiter.start:
                    waiter.ok = False

    def _publish(self) -> None:
        """Advance the frontier past settled messages and release the flush calls it satisfies."""
        inflight = self._inflight
        while inflight and inflight[0].settled:
            inflight.popleft()
        frontier = inflight[0].start if inflight else self._built
        with self._lock:
            self._frontier = frontier
            for waiter in self._waiters:
                if frontier >= waiter.target:
                    waiter.done.set()

    def _finish(self) -> None:
        """On stop: count what is left behind, report the final stats, close."""
        self._read_replies()
        left = len(self.queue) + sum(message.count for message in self._unsent)
        self.queue.clear()
        self._unsent.clear()
        self.counters["dropped_at_shutdown"] += left
        self._abandon_unacked()  # before the final report, so that it carries them
        self._maybe_send_stats(force=True)
        self._disconnect()
        with self._lock:  # nothing will settle any more: release flush callers now
            for waiter in self._waiters:
                waiter.ok = False
                waiter.done.set()
