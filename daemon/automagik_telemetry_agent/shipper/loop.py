"""The shipper loop: WAL -> frozen batches -> ClickHouse, committing the WAL cursor only on success.

One batch at a time, in WAL order (pipelined: while a sender thread sends batch N, the shipper thread
collects and freezes batch N+1, which is recorded in flight and sent only once N is committed, and not at
all if a stop was requested by then):

1. **Collect** records after the durable cursor until ``batch_rows`` spans, ``batch_bytes`` WAL bytes,
   or ``batch_wait_s`` after the first record of a partial batch; a partial batch goes earlier when the
   WAL runs dry, nothing is in flight, and it holds half of ``batch_rows`` or the previous INSERT began
   ``batch_wait_s`` ago (:meth:`Shipper._partial_batch_may_go`).
2. **Freeze**: transform every span (a :class:`~.transform.TransformError` dead-letters that span,
   it is never sent), encode the rows, and fix the batch's identity: the WAL range
   ``[first, last]``, the segment salts it touched and the exact body bytes. The dedup token
   ``{agent_id}:{first}-{last}:{crc32(salts)}`` derives only from that identity, so every retry
   sends the same bytes with the same token. The range is written to ``<state_dir>/inflight.json``
   before the first send, so a restarted shipper rebuilds the very same batch (same token).
3. **Send** and act on the class of the answer (:mod:`.clickhouse_errors`):

   * OK: dead-letter what must be, then ``reader.commit(last)`` (durable cursor).
   * TRANSIENT: retry the same bytes forever, capped exponential backoff with full jitter.
   * BAD_DATA: bisect; each half gets the token ``token + ":" + path`` (path of ``0``/``1``); single
     rows still refused are dead-lettered with the server's text; the rest ship; then commit.
   * CONFIG: log one actionable line, wait ``config_retry_s``, re-detect the table, retry.

A token bucket bounds the rows per second sent (catching up after an outage must not flood the
server). :meth:`Shipper.request_stop` lets the in-flight batch finish, or abandons it after
``stop_deadline_s`` (its records stay in the WAL, uncommitted).

Delivery: exactly once where the server deduplicates by token (>= 22.2 with a dedup window),
otherwise at least once: a crash after ClickHouse committed a batch but before the cursor was
written re-sends it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from .clickhouse_errors import ErrorClass
from .dead_letter import DeadLetter, DeadLetterEntry, default_dead_letter_dir
from .latency import INSERT_BOUNDS_S, LatencyHistogram
from .sink import Sink
from .sink_http import InsertResult, SinkError
from .transform import Profile, TransformError, parse_resource, transform_span
from .wal.durable import write_atomic
from .wal.reader import WalEntry, WalReader

__all__ = [
    "FrozenBatch",
    "Shipper",
    "ShipperOptions",
    "ShipperStats",
    "TokenBucket",
    "backoff_delay",
    "batch_token",
    "freeze_batch",
]

log = logging.getLogger(__name__)

CONSUMER_LOCK_FILE = "consumer.lock"  # in the WAL directory: held by the one shipper reading it

SPAN_KIND = 1  # automagik_telemetry.protocol.RecordKind.SPAN
INFLIGHT_FILE = "inflight.json"
PROBE_ROWS = 16  # span ids checked when a restarted shipper resends its in-flight batch (no dedup token)
_NEWLINE = orjson.OPT_APPEND_NEWLINE


@dataclass
class ShipperOptions:
    batch_rows: int = 20_000
    batch_bytes: int = 8 * 1024 * 1024
    batch_wait_s: float = 1.0
    poll_interval_s: float = 0.05
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 60.0
    config_retry_s: float = 30.0
    drain_rows_per_s: float = 200_000.0  # 0 = no limit
    stop_deadline_s: float = 10.0
    stats_log_interval_s: float = 60.0
    state_dir: str | None = None  # default <wal_dir>/../shipper
    dead_letter_dir: str | None = None  # default <wal_dir>/../dead-letter


@dataclass
class ShipperStats:
    batches: int = 0
    rows: int = 0
    bytes_raw: int = 0
    bytes_compressed: int = 0
    requests: int = 0
    retries_transient: int = 0
    retries_config: int = 0
    bisect_requests: int = 0
    dead_lettered: int = 0
    dead_lettered_transform: int = 0
    dead_lettered_rejected: int = 0
    committed_seq: int = 0
    resumed_batches_skipped: int = 0  # in-flight at the last stop, found already stored (legacy servers)
    retries_found_stored: int = 0  # connection broke after the server stored the batch: not resent
    last_success_time: float | None = None
    last_error: str = ""
    insert_failures: dict[str, int] = field(default_factory=dict)  # failed INSERT requests, by ErrorClass value
    insert_latency: LatencyHistogram = field(default_factory=lambda: LatencyHistogram(INSERT_BOUNDS_S))

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items() if k != "insert_latency"}
        out["insert_failures"] = dict(self.insert_failures)
        return out


# ------------------------------------------------------------------------------------------ batches


@dataclass
class FrozenBatch:
    first_seq: int
    last_seq: int
    salts: tuple[int, ...]
    token: str
    profile: Profile
    body: bytes  # the JSONEachRow rows, newline-terminated, exactly as sent (one buffer: no per-row objects)
    offsets: list[int]  # row i is body[offsets[i]:offsets[i + 1]]
    line_seqs: list[int]  # the WAL seq of each row
    dead: list[DeadLetterEntry] = field(default_factory=list)  # transform failures

    @property
    def rows(self) -> int:
        return len(self.offsets) - 1

    def row_bytes(self, lo: int, hi: int) -> bytes:
        """Rows lo..hi-1 as one JSONEachRow body (a bisection half)."""
        return self.body[self.offsets[lo] : self.offsets[hi]]

    def row(self, i: int) -> bytes:
        return self.row_bytes(i, i + 1)


def batch_token(agent_id: str, first_seq: int, last_seq: int, salts: tuple[int, ...] | list[int]) -> str:
    """The dedup token of the WAL range ``[first_seq, last_seq]`` read from segments with ``salts``."""
    digest = zlib.crc32(",".join(f"{s:x}" for s in sorted(set(salts))).encode())
    return f"{agent_id}:{first_seq}-{last_seq}:{digest:08x}"


def freeze_batch(entries: list[WalEntry], profile: Profile, agent_id: str) -> FrozenBatch:
    """Transform and encode ``entries`` (in WAL order) into a batch with a stable identity."""
    body = bytearray()
    offsets = [0]
    seqs: list[int] = []
    dead: list[DeadLetterEntry] = []
    dumps = orjson.dumps
    for entry in entries:
        spans = entry.payload.split(b"\n")
        if spans and spans[-1] == b"":
            spans.pop()
        if not spans:
            continue
        resource_line, spans = spans[0], spans[1:]
        if entry.kind != SPAN_KIND:
            dead += [
                DeadLetterEntry("unsupported", f"record kind {entry.kind} is not shipped", entry.seq, raw=s)
                for s in spans
            ]
            continue
        try:
            resource = parse_resource(resource_line)
        except TransformError as exc:
            dead += [DeadLetterEntry("transform", exc.reason, entry.seq, raw=s) for s in spans]
            continue
        for line in spans:  # an empty line is a span too: it fails to parse and is dead-lettered
            try:
                row = transform_span(line, resource, profile)
            except TransformError as exc:
                dead.append(DeadLetterEntry("transform", exc.reason, entry.seq, raw=line))
                continue
            body += dumps(row, option=_NEWLINE)
            offsets.append(len(body))
            seqs.append(entry.seq)
    first, last = entries[0].seq, entries[-1].seq
    salts = tuple(sorted({e.salt for e in entries}))
    return FrozenBatch(
        first, last, salts, batch_token(agent_id, first, last, salts), profile, bytes(body), offsets, seqs, dead
    )


# ------------------------------------------------------------------------------------------ pacing


def backoff_delay(attempt: int, base: float, cap: float, rand: random.Random | None = None) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    ceiling = min(cap, base * (2 ** min(attempt, 62)))
    return (rand or random).uniform(0, ceiling)


class TokenBucket:
    """Rows per second with a one-second burst; ``take`` returns how long to wait first."""

    def __init__(self, rate: float, clock: Any = time.monotonic) -> None:
        self.rate = rate
        self.clock = clock
        self.tokens = rate
        self.stamp = clock()

    def take(self, n: int) -> float:
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= n
        return -self.tokens / self.rate if self.tokens < 0 else 0.0


class _ProfileChanged(Exception):
    pass


# ------------------------------------------------------------------------------------------ shipper


class Shipper:
    def __init__(self, wal_dir: str, sink: Sink, options: ShipperOptions | None = None) -> None:
        self.wal_dir = os.path.abspath(wal_dir)
        self.sink = sink
        self.options = options or ShipperOptions()
        parent = os.path.dirname(self.wal_dir)
        self.state_dir = self.options.state_dir or os.path.join(parent, "shipper")
        self.dead_letter = DeadLetter(self.options.dead_letter_dir or default_dead_letter_dir(self.wal_dir))
        self.stats = ShipperStats()
        self.reader: WalReader | None = None
        self._stop = threading.Event()
        self._deadline = float("inf")
        self._bucket = TokenBucket(self.options.drain_rows_per_s)
        self._agent_id: str | None = None
        self._last_problem = ""
        self._last_problem_time = 0.0
        self._failures = 0
        self._last_stats_log = time.monotonic()
        self._inflight: _Sending | None = None  # the batch being sent by the sender thread
        self._last_send_start = float("-inf")  # monotonic time the last batch was handed to the sender
        self._abandoned = False
        self._stopping_at_commit = False  # a stop had been requested when the last batch was committed

    # ------------------------------------------------------------------ control
    def request_stop(self, deadline_s: float | None = None) -> None:
        """Finish the in-flight batch, or abandon it (kept in the WAL) after the deadline."""
        wait = self.options.stop_deadline_s if deadline_s is None else deadline_s
        self._deadline = min(self._deadline, time.monotonic() + wait)
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def apply_options(self, **changes: Any) -> None:
        """Change live options (a reload): batch limits apply to the batch being collected from its next
        read on, the rate limit to the next send. Safe from another thread: the options object and the
        token bucket are replaced whole, never mutated under the shipper's feet."""
        self.options = replace(self.options, **changes)
        if "drain_rows_per_s" in changes:
            self._bucket = TokenBucket(self.options.drain_rows_per_s)

    def declare_waits(self, liveness: Any) -> None:
        """Declare every timed wait of this shipper (polls, backoffs, config retries, the rate limit) to
        ``liveness`` (:class:`~.report.Liveness`), so that the supervisor's heartbeat check tells a long but
        known wait from a hang. Call before :meth:`run` and before installing signal handlers."""
        stop = liveness.event()
        if self._stop.is_set():
            stop.set()
        self._stop = stop

    def _abandon(self) -> bool:
        return self._stop.is_set() and time.monotonic() >= self._deadline

    def _sleep(self, delay: float) -> None:
        end = time.monotonic() + delay
        if not self._stop.is_set():
            self._stop.wait(delay)
        if self._stop.is_set():
            remaining = min(end, self._deadline) - time.monotonic()
            if remaining > 0:
                time.sleep(remaining)

    # ------------------------------------------------------------------ problems (one line each)
    def _problem(self, message: str, error_class: ErrorClass) -> None:
        self.stats.last_error = message
        self._failures += 1
        now = time.monotonic()
        if message != self._last_problem or now - self._last_problem_time >= 600:
            level = logging.ERROR if error_class is ErrorClass.CONFIG else logging.WARNING
            log.log(level, "%s; data is kept in the WAL and retried", message)
            self._last_problem, self._last_problem_time = message, now
        else:
            log.debug("still failing: %s", message)

    def _recovered(self) -> None:
        if self._failures:
            log.info(
                "ClickHouse at %s accepts inserts again (after %d failed attempts)", self.sink.endpoint, self._failures
            )
        self._failures = 0
        self._last_problem = ""

    # ------------------------------------------------------------------ detection
    def ensure_detected(self) -> bool:
        """Detect the server and table, retrying until it works or a stop is requested."""
        attempt = 0
        while not self._stop.is_set():
            try:
                self.sink.detect()
                self._recovered()
                return True
            except SinkError as exc:
                self._problem(str(exc), exc.result.error_class)
                if exc.result.error_class is ErrorClass.CONFIG:
                    self.stats.retries_config += 1
                    self._stop.wait(self.options.config_retry_s)
                else:
                    self.stats.retries_transient += 1
                    self._stop.wait(backoff_delay(attempt, self.options.backoff_base_s, self.options.backoff_cap_s))
                    attempt += 1
        return False

    def agent_id(self) -> str:
        if self._agent_id is None:
            try:
                with open(os.path.join(self.wal_dir, "agent_id")) as f:
                    self._agent_id = f.read().strip() or "unknown"
            except FileNotFoundError:
                return "unknown"
        return self._agent_id

    # ------------------------------------------------------------------ the loop
    def _lock_consumer(self) -> int | None:
        """Take the WAL's consumer lock: one shipper per WAL, whoever started it.

        A previous shipper may still be finishing (e.g. its agent was killed and it got SIGTERM): wait
        for it instead of sharing the cursor. Returns the lock fd, or None if a stop came first.
        """
        fd = os.open(os.path.join(self.wal_dir, CONSUMER_LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        warned = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if not warned:
                    log.warning("another shipper is consuming %s; waiting for it to exit", self.wal_dir)
                    warned = True
                if self._stop.wait(0.2):
                    os.close(fd)
                    return None

    def run(self) -> ShipperStats:
        """Ship until :meth:`request_stop`; returns the stats."""
        os.makedirs(self.wal_dir, exist_ok=True)
        lock_fd = self._lock_consumer()
        if lock_fd is None:
            return self.stats
        try:
            return self._run_locked()
        finally:
            os.close(lock_fd)

    def _run_locked(self) -> ShipperStats:
        self.reader = WalReader(self.wal_dir)
        self.stats.committed_seq = self.reader.committed_seq
        self._inflight, self._abandoned, self._stopping_at_commit = None, False, False
        try:
            if not self.ensure_detected():
                return self.stats
            resume_last, resume_bisected = self._read_inflight()
            # Pipelined: batch N+1 is collected and frozen here while the sender thread sends batch N
            # (the POST and gzip release the GIL); N is committed before N+1 is recorded and sent.
            while not self._stop.is_set():
                entries = self._collect(resume_last)
                resumed = (
                    resume_last is not None and not resume_bisected and bool(entries) and entries[-1].seq == resume_last
                )
                resume_last = None
                if not entries:
                    continue
                batch = self._freeze(entries)
                if not self._finish() or self._abandoned or self._stopping_at_commit:
                    break  # unsent, like a batch the unpipelined loop would not have collected
                self._maybe_log_stats()
                self._start(batch, entries, resumed)
            self._finish()
            self._maybe_log_stats()
        finally:
            self.reader.close()
            log.info("shipper stopped: %s", self.stats.to_dict())
        return self.stats

    def _collect(self, resume_last: int | None) -> list[WalEntry]:
        assert self.reader is not None
        entries: list[WalEntry] = []
        items = size = 0
        started: float | None = None
        while not self._stop.is_set():
            o = self.options  # re-read: apply_options (SIGHUP) may have replaced it meanwhile
            max_records = 1_000_000 if resume_last is None else max(0, resume_last - self.reader.position)
            got = (
                self.reader.read(
                    max_records=max_records,
                    max_bytes=max(1, o.batch_bytes - size),
                    max_items=max(1, o.batch_rows - items),
                )
                if max_records
                else []
            )
            if got:
                entries += got
                items += sum(e.count for e in got)
                size += sum(len(e.payload) for e in got)
                if started is None:
                    started = time.monotonic()
            if resume_last is not None and self.reader.position >= resume_last:
                break
            if items >= o.batch_rows or size >= o.batch_bytes:
                break
            if started is not None and time.monotonic() - started >= o.batch_wait_s:
                break
            if not got and entries and resume_last is None and self._partial_batch_may_go(items):
                break
            if not got:
                self._stop.wait(o.poll_interval_s)
                if self._inflight is not None and self._inflight.done.is_set():
                    self._finish()  # commit the batch sent meanwhile without waiting for this one
        return entries

    def _partial_batch_may_go(self, items: int) -> bool:
        """The WAL ran dry with ``items`` spans collected: send them now instead of waiting out batch_wait?

        Only when nothing is in flight, and the batch is a good-sized insert (half of batch_rows: the
        10k-100k rows ClickHouse asks for) or the previous INSERT began at least batch_wait ago. So every
        INSERT is either large or at least batch_wait after the previous one (about one a second by
        default, however many hosts), and the first spans after a quiet spell go out at once.
        """
        if self._inflight is not None and not self._inflight.done.is_set():
            return False
        o = self.options
        return items >= max(1, o.batch_rows // 2) or time.monotonic() - self._last_send_start >= o.batch_wait_s

    def _ship(self, entries: list[WalEntry], resumed: bool = False) -> bool:
        """Ship one batch to the end and commit it; False if it was abandoned for a stop."""
        self._start(self._freeze(entries), entries, resumed)
        return self._finish()

    def _freeze(self, entries: list[WalEntry]) -> FrozenBatch:
        assert self.sink.profile is not None
        return freeze_batch(entries, self.sink.profile, self.agent_id())

    def _start(self, batch: FrozenBatch, entries: list[WalEntry], resumed: bool = False) -> None:
        """Record ``batch`` as in flight and start sending it in the sender thread (none may be in flight);
        :meth:`_finish` waits for it and commits it."""
        assert self.reader is not None
        assert self.sink.profile is not None
        assert self._inflight is None
        if batch.profile is not self.sink.profile:  # re-detected while it was being frozen
            batch = self._freeze(entries)
        self._write_inflight(batch)
        if resumed and self._already_stored(batch):
            log.info(
                "batch %d-%d was stored before the shipper stopped (probe of %d rows): not resending",
                batch.first_seq,
                batch.last_seq,
                min(PROBE_ROWS, batch.rows),
            )
            self.stats.resumed_batches_skipped += 1
            self.dead_letter.write(batch.dead)  # its transform failures were never written (no commit)
            self.reader.commit(batch.last_seq)
            self.stats.committed_seq = batch.last_seq
            return
        self._last_send_start = time.monotonic()
        self._inflight = _Sending(self._send_frozen, batch, entries)

    def _send_frozen(
        self, batch: FrozenBatch, entries: list[WalEntry]
    ) -> tuple[FrozenBatch, list[DeadLetterEntry] | None]:
        """In the sender thread: the batch as finally sent and the rows refused (None if abandoned)."""
        while True:
            try:
                return batch, self._send_batch(batch)
            except _ProfileChanged:
                assert self.sink.profile is not None
                log.warning(
                    "table %s now takes %s rows: re-encoding batch %d-%d",
                    self.sink.target,
                    self.sink.profile.value,
                    batch.first_seq,
                    batch.last_seq,
                )
                batch = freeze_batch(entries, self.sink.profile, self.agent_id())

    def _finish(self) -> bool:
        """Wait for the batch in flight (if any) and commit it; False if it was abandoned for a stop."""
        sending, self._inflight = self._inflight, None
        if sending is None:
            return True
        assert self.reader is not None
        batch, rejected = sending.wait()
        if rejected is None:
            self._abandoned = True
            return False
        dead = batch.dead + rejected
        while True:
            try:
                self.dead_letter.write(dead)
                break
            except OSError as exc:  # keep the batch uncommitted until its bad rows are kept somewhere
                self._problem(
                    f"cannot write the dead-letter file {self.dead_letter.path}: {exc.strerror}", ErrorClass.CONFIG
                )
                self._sleep(self.options.config_retry_s)
                if self._abandon():
                    self._abandoned = True
                    return False
        self.reader.commit(batch.last_seq)
        self._stopping_at_commit = self._stop.is_set()
        s = self.stats
        s.batches += 1
        s.committed_seq = batch.last_seq
        s.dead_lettered += len(dead)
        s.dead_lettered_transform += len(batch.dead)
        s.dead_lettered_rejected += len(rejected)
        if dead:
            log.warning(
                "batch %d-%d: %d span(s) dead-lettered to %s (first: %s)",
                batch.first_seq,
                batch.last_seq,
                len(dead),
                self.dead_letter.path,
                dead[0].error,
            )
        return True

    def _already_stored(self, batch: FrozenBatch) -> bool:
        """On a server without dedup tokens: did the previous run's insert of this batch commit?

        A JSONEachRow insert of under a million rows is one block, stored entirely or not at all, so
        finding every one of up to PROBE_ROWS sampled span ids means the whole batch is there. Any
        doubt (a partial find after a bisection, a failed probe) resends: at-least-once.
        """
        caps = self.sink.capabilities
        # A token only deduplicates on a table with a dedup window: our modern schema has one, a legacy
        # table kept on a server upgraded past 22.2 does not (the probe still guards it).
        if (
            not batch.rows
            or caps is None
            or batch.rows >= 1_000_000
            or (caps.dedup_token and batch.profile is Profile.MODERN)
        ):
            return False
        step = max(1, batch.rows // PROBE_ROWS)
        sample = [orjson.loads(batch.row(i)) for i in range(0, batch.rows, step)[:PROBE_ROWS]]
        stamps = [r["timestamp_ns"] for r in sample]
        try:
            found = self.sink.count_present([r["span_id"] for r in sample], min(stamps), max(stamps))
        except SinkError as exc:
            log.warning(
                "could not check whether batch %d-%d was stored (%s): resending it",
                batch.first_seq,
                batch.last_seq,
                exc,
            )
            return False
        return found >= len(sample)

    def _send_batch(self, batch: FrozenBatch) -> list[DeadLetterEntry] | None:
        """Send the whole batch (bisecting if needed); the rows the server refused, None if abandoned."""
        if not batch.rows:
            return []
        r = self._send(batch.body, batch.token, batch.rows, batch.profile, probe=lambda: self._already_stored(batch))
        if r is None:
            return None
        if r.ok:
            return []
        log.warning(
            "batch %d-%d (%d rows) refused as bad data, bisecting: %s",
            batch.first_seq,
            batch.last_seq,
            batch.rows,
            r.message,
        )
        self._write_inflight(batch, bisecting=True)  # from now on parts of it may get stored
        return self._bisect(batch, 0, batch.rows, "", r)

    def _bisect(
        self, batch: FrozenBatch, lo: int, hi: int, path: str, failed: InsertResult
    ) -> list[DeadLetterEntry] | None:
        if hi - lo == 1:
            return [
                DeadLetterEntry(
                    "rejected", failed.message, batch.line_seqs[lo], row=batch.row(lo), error_code=failed.code
                )
            ]
        mid = (lo + hi) // 2
        out: list[DeadLetterEntry] = []
        for a, b, tag in ((lo, mid, "0"), (mid, hi, "1")):
            sub = path + tag
            self.stats.bisect_requests += 1
            r = self._send(batch.row_bytes(a, b), f"{batch.token}:{sub}", b - a, batch.profile)
            if r is None:
                return None
            if not r.ok:
                bad = self._bisect(batch, a, b, sub, r)
                if bad is None:
                    return None
                out += bad
        return out

    def _send(
        self, body: bytes, token: str, rows: int, profile: Profile, probe: Callable[[], bool] | None = None
    ) -> InsertResult | None:
        """Send until OK or BAD_DATA; None if abandoned. Raises _ProfileChanged after a re-detection.

        ``probe``: after a broken connection, asks whether the server stored the body anyway (servers
        without dedup tokens); if so the body is not sent again.
        """
        attempt = 0
        o = self.options
        while True:
            if self._abandon():
                return None
            wait = self._bucket.take(rows)
            if wait > 0:
                self._sleep(wait)
                if self._abandon():
                    return None
            started = time.perf_counter()
            r = self.sink.insert(body, token)
            self.stats.insert_latency.observe(time.perf_counter() - started)
            self.stats.requests += 1
            if not r.ok:
                failures = self.stats.insert_failures
                failures[r.error_class.value] = failures.get(r.error_class.value, 0) + 1
            if r.ok:
                s = self.stats
                s.rows += rows
                s.bytes_raw += r.raw_bytes
                s.bytes_compressed += r.sent_bytes
                s.last_success_time = time.time()
                self._recovered()
                return r
            if r.error_class is ErrorClass.BAD_DATA:
                return r
            self._problem(self.sink.explain(r), r.error_class)
            if r.error_class is ErrorClass.TRANSIENT:
                self.stats.retries_transient += 1
                self._sleep(backoff_delay(attempt, o.backoff_base_s, o.backoff_cap_s))
                attempt += 1
                if r.status is None and not self._abandon():
                    # No HTTP answer: the connection broke. The server may have been restarted or upgraded
                    # meanwhile, so detect its version (compression, dedup token) and table again first.
                    try:
                        self.sink.detect()
                    except SinkError:
                        continue
                    if self.sink.profile is not profile:
                        raise _ProfileChanged()
                    if probe is not None and probe():
                        log.info("the connection broke after ClickHouse had stored the batch: not resending it")
                        self.stats.retries_found_stored += 1
                        return InsertResult(True, ErrorClass.OK, None, "stored before the connection broke", 200)
                continue
            # CONFIG: wait, re-detect (the table may have been created or changed), retry.
            self.stats.retries_config += 1
            self._sleep(o.config_retry_s)
            if self._abandon():
                return None
            if not self._redetect_while_misconfigured():
                if self._abandon():
                    return None
                continue  # the server is unreachable now: the INSERT's retry takes the transient path
            if self.sink.profile is not profile:
                raise _ProfileChanged()

    def _redetect_while_misconfigured(self) -> bool:
        """After a configuration error, detect until the server and table are usable (True). The INSERT is
        retried only then, so a table changed under the shipper (a column dropped) gives the table's
        diagnosis every ``config_retry`` instead of the INSERT's and the table's error in turn. False when
        detection fails for another reason (server unreachable) or the stop deadline passed."""
        while True:
            try:
                self.sink.detect()
                return True
            except SinkError as exc:
                self._problem(str(exc), exc.result.error_class)
                if exc.result.error_class is not ErrorClass.CONFIG:
                    return False
            self.stats.retries_config += 1
            self._sleep(self.options.config_retry_s)
            if self._abandon():
                return False

    # ------------------------------------------------------------------ in-flight identity
    @property
    def inflight_path(self) -> str:
        return os.path.join(self.state_dir, INFLIGHT_FILE)

    def _write_inflight(self, batch: FrozenBatch, bisecting: bool = False) -> None:
        try:
            os.makedirs(self.state_dir, mode=0o750, exist_ok=True)
            write_atomic(
                self.inflight_path,
                orjson.dumps(
                    {"first": batch.first_seq, "last": batch.last_seq, "token": batch.token, "bisecting": bisecting}
                ),
            )
        except OSError as exc:  # only dedup across restarts depends on it
            log.warning("cannot record the in-flight batch in %s: %s", self.inflight_path, exc.strerror)

    def _read_inflight(self) -> tuple[int | None, bool]:
        """The last seq of the batch in flight when the previous run ended (if still pending), and whether
        it had gone into bisection (then parts of it may be stored: never skip it as a whole)."""
        assert self.reader is not None
        try:
            with open(self.inflight_path, "rb") as f:
                obj = orjson.loads(f.read())
            first, last, bisecting = int(obj["first"]), int(obj["last"]), bool(obj.get("bisecting"))
        except FileNotFoundError:
            return None, False
        except (OSError, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            log.warning("ignoring unreadable %s", self.inflight_path)
            return None, False
        if first <= self.reader.committed_seq or last < first:
            return None, False
        log.info("resending the batch %d-%d that was in flight when the shipper last stopped", first, last)
        return last, bisecting

    def _maybe_log_stats(self) -> None:
        now = time.monotonic()
        if now - self._last_stats_log >= self.options.stats_log_interval_s:
            self._last_stats_log = now
            s = self.stats
            log.info(
                "shipped %d rows in %d batches (%d bytes, %d sent), %d dead-lettered, %d transient and "
                "%d config retries, cursor at %d",
                s.rows,
                s.batches,
                s.bytes_raw,
                s.bytes_compressed,
                s.dead_lettered,
                s.retries_transient,
                s.retries_config,
                s.committed_seq,
            )


class _Sending:
    """``fn(*args)`` running in a daemon thread (a send retried forever must not hold up exit)."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self.done = threading.Event()
        self._result: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, args), name="shipper-send", daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            self._result = fn(*args)
        except BaseException as exc:  # re-raised in the shipper thread by wait()
            self._error = exc
        finally:
            self.done.set()

    def wait(self) -> Any:
        self.done.wait()
        if self._error is not None:
            raise self._error
        return self._result


def run_in_thread(shipper: Shipper) -> threading.Thread:
    """Start ``shipper.run()`` in a daemon thread (tests and embedding)."""
    t = threading.Thread(target=shipper.run, name="shipper", daemon=True)
    t.start()
    return t
