"""Talking to the sink under the retry policy: a frozen batch sent until it is stored (in the sender thread).

The class of every answer (:mod:`..clickhouse.errors`) decides what comes next:

* OK: done; the consecutive-failure count goes back to 0.
* TRANSIENT: the same bytes again, forever, after a capped exponential backoff with full jitter. After
  a broken connection (no HTTP answer) the server and table are detected again first, and on a server
  without dedup tokens a probe asks whether the body was stored anyway (then it is not sent again).
* BAD_DATA: bisect; each part gets the token ``token + ":" + path``; the single rows still refused
  are handed back, to be dead-lettered with the server's text.
* CONFIG: one actionable line, then every ``config_retry_s`` detect again until the table is usable,
  then retry.

Each problem is logged once (again after ten minutes), not once per attempt. Before any send a token
bucket bounds the rows per second. Every wait ends at the stop deadline (:class:`.stop.StopRequest`):
the send is then abandoned (None). :meth:`Delivery.already_stored` is also the restarted shipper's
probe of its in-flight batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import orjson

from ..clickhouse.errors import ErrorClass
from ..clickhouse.resource import Profile
from ..clickhouse.sink import InsertResult, Sink, SinkError
from ..wal.signals import Signal
from .batch import FrozenBatch
from .bisect import bisect
from .dead_letter import DeadLetterEntry, DeadLetterReason
from .inflight import InflightRecord
from .options import ShipperOptions, ShipperStats
from .pacing import TokenBucket, backoff_delay
from .signals import SHIPMENTS, Probe, Shipment
from .stop import StopRequest

__all__ = ["PROBE_ROWS", "Delivery", "ProfileChanged"]

TOO_MANY_PARTS = 252
TOO_MANY_PARTS_HEADSTART = 3  # doublings of the backoff skipped after a 252

log = logging.getLogger(__name__)

PROBE_ROWS = 16  # span ids checked when a restarted shipper resends its in-flight batch (no dedup token)


class ProfileChanged(Exception):
    """The table was re-detected with another row profile during a send: re-encode the batch."""


class Delivery:
    """The shipper's side of the sink: detection, sends with their retries, the problems and their count.

    ``options`` returns the shipper's current options (a reload replaces them whole); ``stats`` and
    ``inflight`` are the shipper's own, ``stop`` its one stop request.
    """

    def __init__(
        self,
        sink: Sink,
        stats: ShipperStats,
        stop: StopRequest,
        options: Callable[[], ShipperOptions],
        inflight: InflightRecord,
        shipment: Shipment = SHIPMENTS[Signal.TRACES],
        on_too_many_parts: Callable[[], None] | None = None,
    ) -> None:
        self.sink = sink
        self._on_too_many_parts = on_too_many_parts
        self._shipment = shipment
        self.stats = stats
        self._stop = stop
        self._options = options
        self._inflight = inflight
        self._bucket = TokenBucket(options().drain_rows_per_s)
        self._last_problem = ""
        self._last_problem_time = 0.0
        self._failures = 0

    def set_rate(self, rows_per_s: float) -> None:
        """The rate limit of the next send (the token bucket is replaced whole: safe from another thread)."""
        self._bucket = TokenBucket(rows_per_s)

    @property
    def consecutive_failures(self) -> int:
        """Failed attempts since the last success (0 when healthy)."""
        return self._failures

    # ------------------------------------------------------------------ problems (one line each)
    def problem(self, message: str, error_class: ErrorClass) -> None:
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
                self.problem(str(exc), exc.result.error_class)
                if exc.result.error_class is ErrorClass.CONFIG:
                    self.stats.retries_config += 1
                    self._stop.wait(self._options().config_retry_s)
                else:
                    self.stats.retries_transient += 1
                    self._back_off(attempt, exc.result, until_stop=True)
                    attempt += 1
        return False

    def already_stored(self, batch: FrozenBatch) -> bool:
        """On a server without dedup tokens: did the previous run's insert of this batch commit?

        A JSONEachRow insert of under a million rows is one block, stored entirely or not at all, so
        finding every one of up to PROBE_ROWS sampled span ids means the whole batch is there. Any
        doubt (a partial find after a bisection, a failed probe) resends: at-least-once.
        """
        caps = self.sink.capabilities
        # A token only deduplicates on a table with a dedup window: our modern schema has one, a legacy
        # table kept on a server upgraded past 22.2 does not (the probe still guards it).
        probe = self._shipment.probe
        if (
            probe is Probe.NONE
            or not batch.rows
            or caps is None
            or batch.rows >= 1_000_000
            or (caps.dedup_token and batch.profile is Profile.MODERN)
        ):
            return False
        step = max(1, batch.rows // PROBE_ROWS)
        sample = [orjson.loads(batch.row(i)) for i in range(0, batch.rows, step)[:PROBE_ROWS]]
        stamps = [r["timestamp_ns"] for r in sample]
        try:
            if probe is Probe.SPAN_IDS:
                found = self.sink.count_present([r["span_id"] for r in sample], min(stamps), max(stamps))
            else:
                columns = self._shipment.probe_columns
                keys = [tuple(r[c] for c in columns) for r in sample]
                found = self.sink.count_rows(columns, keys, min(stamps), max(stamps))
        except SinkError as exc:
            log.warning(
                "could not check whether batch %d-%d was stored (%s): resending it",
                batch.first_seq,
                batch.last_seq,
                exc,
            )
            return False
        return found >= len(sample)

    # ------------------------------------------------------------------ sending
    def send_batch(self, batch: FrozenBatch) -> list[DeadLetterEntry] | None:
        """Send the whole batch (bisecting if needed); the rows the server refused, None if abandoned.
        Raises :class:`ProfileChanged` after a re-detection found another row profile."""
        if not batch.rows:
            return []
        r = self._send(batch.body, batch.token, batch.rows, batch.profile, probe=lambda: self.already_stored(batch))
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
        self._inflight.write(batch, bisecting=True)  # from now on parts of it may get stored
        found = bisect(batch.rows, lambda lo, hi, path: self._send_part(batch, lo, hi, path), r)
        if found.abandoned:
            return None
        return [
            DeadLetterEntry(
                DeadLetterReason.REJECTED,
                why.message,
                batch.line_seqs[i],
                row=batch.row(i),
                error_code=why.code,
                signal=self._shipment.signal.value,
            )
            for i, why in found.refused
        ]

    def _send_part(self, batch: FrozenBatch, lo: int, hi: int, path: str) -> InsertResult | None:
        """One bisection part: rows ``lo..hi-1`` with the token ``<batch token>:<path>``."""
        self.stats.bisect_requests += 1
        return self._send(batch.row_bytes(lo, hi), f"{batch.token}:{path}", hi - lo, batch.profile)

    def _send(
        self, body: bytes, token: str, rows: int, profile: Profile, probe: Callable[[], bool] | None = None
    ) -> InsertResult | None:
        """Send until OK or BAD_DATA; None if abandoned. Raises ProfileChanged after a re-detection.

        ``probe``: after a broken connection, asks whether the server stored the body anyway (servers
        without dedup tokens); if so the body is not sent again.
        """
        attempt = 0
        o = self._options()
        while True:
            if self._stop.abandon():
                return None
            wait = self._bucket.take(rows)
            if wait > 0:
                self._stop.sleep(wait)
                if self._stop.abandon():
                    return None
            started = time.perf_counter()
            r = self.sink.insert(body, token)
            self.stats.insert_latency.observe(time.perf_counter() - started)
            self.stats.requests += 1
            if not r.ok:
                failures = self.stats.insert_failures
                failures[r.error_class.value] = failures.get(r.error_class.value, 0) + 1
            if r.ok:
                return self._stored(r, rows)
            if r.error_class is ErrorClass.BAD_DATA:
                return r
            self.problem(self.sink.explain(r), r.error_class)
            if r.code == TOO_MANY_PARTS and self._on_too_many_parts is not None:
                self._on_too_many_parts()  # the insert policy makes the following batches fewer and larger
            if r.error_class is ErrorClass.TRANSIENT:
                self.stats.retries_transient += 1
                self._back_off(attempt, r, until_stop=False)
                attempt += 1
                if r.status is None and not self._stop.abandon():
                    # No HTTP answer: the connection broke. The server may have been restarted or upgraded
                    # meanwhile, so detect its version (compression, dedup token) and table again first.
                    try:
                        self.sink.detect()
                    except SinkError:
                        continue
                    if self.sink.profile is not profile:
                        raise ProfileChanged()
                    if probe is not None and probe():
                        log.info("the connection broke after ClickHouse had stored the batch: not resending it")
                        self.stats.retries_found_stored += 1
                        found = InsertResult(True, ErrorClass.OK, None, "stored before the connection broke", 200)
                        return self._stored(found, rows)
                continue
            # CONFIG: wait, re-detect (the table may have been created or changed), retry.
            self.stats.retries_config += 1
            self._stop.sleep(o.config_retry_s)
            if self._stop.abandon():
                return None
            if not self._redetect_while_misconfigured():
                if self._stop.abandon():
                    return None
                continue  # the server is unreachable now: the INSERT's retry takes the transient path
            if self.sink.profile is not profile:
                raise ProfileChanged()

    def _stored(self, r: InsertResult, rows: int) -> InsertResult:
        """``rows`` are in the table (inserted now, or found there after a broken connection): count them."""
        s = self.stats
        s.rows += rows
        s.bytes_raw += r.raw_bytes
        s.bytes_compressed += r.sent_bytes
        s.last_success_time = time.time()
        self._recovered()
        return r

    def _back_off(self, attempt: int, last: InsertResult, until_stop: bool) -> None:
        """The capped, jittered backoff after the transient failure ``last``, cut short as soon as the sink's
        cheap probe (:meth:`~..clickhouse.sink.Sink.probe`, every ``probe_interval_s``) says it is back: a
        server that returns is written to within about a second, one that is still down gets a light query
        per interval, never the batch. ``until_stop``: a stop request ends it (between batches), else only the
        stop's deadline does (a send in progress)."""
        o = self._options()
        wait = self._stop.wait if until_stop else self._stop.sleep
        # TOO_MANY_PARTS: merges are behind on the whole shard; a quick retry only adds to the pile, so its
        # backoff starts three doublings later (up to 8 s with the default base) and is never cut short.
        parts = last.code == TOO_MANY_PARTS
        steps = attempt + TOO_MANY_PARTS_HEADSTART if parts else attempt
        end = time.monotonic() + backoff_delay(steps, o.backoff_base_s, o.backoff_cap_s)
        probing = o.probe_interval_s > 0 and not parts
        while not self._stop.abandon():
            remaining = end - time.monotonic()
            if remaining <= 0:
                return
            wait(min(o.probe_interval_s, remaining) if probing else remaining)
            if time.monotonic() >= end or self._stop.abandon() or not probing:
                return
            if until_stop and self._stop.is_set():
                return
            self.stats.probes += 1
            if self.sink.probe(last):
                self.stats.probe_recoveries += 1
                log.info("ClickHouse at %s answers its probe: retrying now", self.sink.endpoint)
                return

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
                self.problem(str(exc), exc.result.error_class)
                if exc.result.error_class is not ErrorClass.CONFIG:
                    return False
            self.stats.retries_config += 1
            self._stop.sleep(self._options().config_retry_s)
            if self._stop.abandon():
                return False
