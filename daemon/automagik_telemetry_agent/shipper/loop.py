"""The shipper loop: WAL -> frozen batches -> ClickHouse, committing the WAL cursor only on success.

One batch at a time, in WAL order (pipelined: while a sender thread sends batch N, the shipper thread
collects and freezes batch N+1, which is recorded in flight and sent only once N is committed, and not at
all if a stop was requested by then):

1. **Collect** records after the durable cursor until ``batch_rows`` spans, ``batch_bytes`` WAL bytes,
   or ``batch_wait`` after the first record of a partial batch; a partial batch goes earlier when the
   WAL runs dry, nothing is in flight, and it holds half of ``batch_rows`` or the previous INSERT began
   ``batch_wait`` ago (:meth:`Shipper._partial_batch_may_go`). ``batch_wait`` is the insert policy's
   (:mod:`.insert_policy`: it grows while the shard is busy) or the option ``batch_wait_s``. Having
   read everything, the loop waits for the writer's next write (:class:`~..wal.watch.WalWatch`, an
   inotify watch), at most ``idle_wait_s`` or until the batch's deadline; without inotify, or while a
   batch is in flight, it looks again every ``poll_interval_s``.
2. **Freeze**: transform every span (a :class:`~.transform.TransformError` dead-letters that span,
   it is never sent), encode the rows, and fix the batch's identity: the WAL range
   ``[first, last]``, the segment salts it touched and the exact body bytes. The dedup token
   ``{agent_id}:{first}-{last}:{crc32(salts)}`` derives only from that identity, so every retry
   sends the same bytes with the same token. The range is written to ``<state_dir>/inflight.json``
   before the first send, so a restarted shipper rebuilds the very same batch (same token).
3. **Send** in the sender thread and act on the class of the answer (:mod:`.delivery`, the retry policy):

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
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..clickhouse.errors import ErrorClass
from ..clickhouse.sink import Sink
from ..paths import default_dead_letter_dir, shipper_state_dir
from ..wal.reader import WalEntry, WalReader
from ..wal.signals import Signal
from ..wal.watch import WalWatch
from .batch import FrozenBatch, freeze_batch
from .dead_letter import DeadLetter, DeadLetterEntry
from .delivery import PROBE_ROWS, Delivery, ProfileChanged
from .inflight import InflightRecord
from .insert_policy import InsertPolicy
from .options import ShipperOptions, ShipperStats
from .sending import Sending
from .signals import SHIPMENTS, Shipment
from .stop import StopRequest

if TYPE_CHECKING:
    from ..lifecycle.liveness import Liveness

__all__ = ["Shipper"]

log = logging.getLogger(__name__)

#: What the sender thread hands back: the batch as finally sent, and the rows refused (None: abandoned).
SendOutcome = tuple[FrozenBatch, "list[DeadLetterEntry] | None"]


# ------------------------------------------------------------------------------------------ shipper


class Shipper:
    def __init__(
        self,
        wal_dir: str,
        sink: Sink,
        options: ShipperOptions | None = None,
        shipment: Shipment = SHIPMENTS[Signal.TRACES],
        policy: InsertPolicy | None = None,
    ) -> None:
        """Ship one signal's records (``shipment``: spans by default) from the WAL in ``wal_dir`` to ``sink``
        (that signal's table). ``policy``: the insert policy steering batch_wait (shared by the signals of
        one process); without one, always ``options.batch_wait_s``. :meth:`run` opens a watch of the WAL
        directory of its own unless :meth:`use_watch` gave it one (shared by the signals of one process)."""
        self.wal_dir = os.path.abspath(wal_dir)
        self.sink = sink
        self.shipment = shipment
        self.options = options or ShipperOptions()
        self.state_dir = self.options.state_dir or shipper_state_dir(self.wal_dir)
        self.inflight = InflightRecord(self.state_dir, shipment.inflight_file)
        self.dead_letter = DeadLetter(self.options.dead_letter_dir or default_dead_letter_dir(self.wal_dir))
        self.stats = ShipperStats()
        self.reader: WalReader | None = None
        self._stop = StopRequest()  # the one stop event and deadline, shared with the delivery
        self.policy = policy
        self._watch_given = False  # else run() opens (and closes) a watch of its own
        self._watch: WalWatch | None = None
        self._delivery = Delivery(
            sink,
            self.stats,
            self._stop,
            lambda: self.options,
            self.inflight,
            shipment,
            on_too_many_parts=policy.too_many_parts if policy is not None else None,
        )
        self._last_idle_commit = 0.0
        self._agent_id: str | None = None
        self._last_stats_log = time.monotonic()
        self._sending: Sending[SendOutcome] | None = None  # the batch being sent by the sender thread
        self._last_send_start = float("-inf")  # monotonic time the last batch was handed to the sender
        self._abandoned = False
        self._stopping_at_commit = False  # a stop had been requested when the last batch was committed

    # ------------------------------------------------------------------ control
    def request_stop(self, deadline_s: float | None = None) -> None:
        """Finish the in-flight batch, or abandon it (kept in the WAL) after the deadline."""
        self._stop.request(self.options.stop_deadline_s if deadline_s is None else deadline_s)

    @property
    def consecutive_failures(self) -> int:
        """Failed attempts since the last success (0 when healthy)."""
        return self._delivery.consecutive_failures

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def apply_options(self, **changes: Any) -> None:
        """Change live options (a reload): batch limits apply to the batch being collected from its next
        read on, the rate limit to the next send. Safe from another thread: the options object and the
        token bucket are replaced whole, never mutated under the shipper's feet."""
        self.options = replace(self.options, **changes)
        if "drain_rows_per_s" in changes:
            self._delivery.set_rate(self.options.drain_rows_per_s)

    def use_watch(self, watch: WalWatch | None) -> None:
        """Wait on ``watch`` (shared with the other signals' shippers, closed by its owner; None: poll)
        instead of a watch of its own. Call before :meth:`run`."""
        self._watch_given = True
        self._watch = watch

    def declare_waits(self, liveness: Liveness) -> None:
        """Declare every timed wait of this shipper (polls, backoffs, config retries, the rate limit) to
        ``liveness``, so that the supervisor's heartbeat check tells a long but
        known wait from a hang. Call before :meth:`run` and before installing signal handlers."""
        self._stop.declare_waits(liveness)

    def batch_wait(self) -> float:
        """The batch_wait in force: the insert policy's, else the option's."""
        return self.policy.wait_s if self.policy is not None else self.options.batch_wait_s

    # ------------------------------------------------------------------ detection
    def ensure_detected(self) -> bool:
        """Detect the server and table, retrying until it works or a stop is requested."""
        return self._delivery.ensure_detected()

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
        path = os.path.join(self.wal_dir, self.shipment.consumer_lock)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
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
        if not self._watch_given:
            self._watch = WalWatch.open(self.wal_dir)
        try:
            return self._run_locked()
        finally:
            os.close(lock_fd)
            if not self._watch_given and self._watch is not None:
                self._watch.close()
                self._watch = None

    def _run_locked(self) -> ShipperStats:
        self.reader = WalReader(self.wal_dir, signal=self.shipment.signal)
        self.stats.committed_seq = self.reader.committed_seq
        self._sending, self._abandoned, self._stopping_at_commit = None, False, False
        delay = self.policy.start_delay() if self.policy is not None else 0.0
        self._last_send_start = time.monotonic() - self.batch_wait() + delay  # jittered start (fleet policy)
        try:
            if not self.ensure_detected():
                return self.stats
            resume = self.inflight.pending(self.reader.committed_seq)
            resume_last = resume.last_seq if resume is not None else None
            resume_bisected = resume is not None and resume.bisecting
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
            seen = self._watch.changes() if self._watch is not None else 0  # before the read: see WalWatch
            done_resuming = resume_last is not None and self.reader.position >= resume_last
            position = self.reader.position
            got = (
                []
                if done_resuming
                else self.reader.read(
                    max_records=1_000_000,
                    max_bytes=max(1, o.batch_bytes - size),
                    max_items=max(1, o.batch_rows - items),
                    up_to=resume_last,
                )
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
            if self.policy is not None:
                self.policy.maybe_sample()
            if started is not None and time.monotonic() - started >= self.batch_wait():
                break
            if not got and not self.reader.at_end and not done_resuming:
                continue  # it stopped after passing many records of other signals: read on
            if not got and entries and resume_last is None and self._partial_batch_may_go(items):
                break
            if not got:
                if not entries:
                    self._commit_idle()
                if entries:
                    assert started is not None
                    self._wait_while_collecting(started, items, size)
                else:
                    self._wait_for_records(seen, passed_others=self.reader.position > position)
                if self._sending is not None and self._sending.done.is_set():
                    self._finish()  # commit the batch sent meanwhile without waiting for this one
        return entries

    def _wait_for_records(self, seen: int, passed_others: bool) -> None:
        """Nothing of this signal collected and the WAL has nothing more for now: wait for its next write
        (``seen``: the watch's generation before the read that found nothing). ``passed_others``: that read
        went past other signals' records: while they flow, look again every ``quiet_signal_wait_s``
        rather than at each of their writes (the three signals' threads would wake together every time)."""
        o = self.options
        watch = self._watch
        if watch is None or self._polling():
            self._stop.wait(o.poll_interval_s)
        elif passed_others:
            self._stop.wait(o.quiet_signal_wait_s)
        elif watch.changes() == seen:
            self._stop.wait_readable(watch.fileno(), o.idle_wait_s)

    def _wait_while_collecting(self, started: float, items: int, size: int) -> None:
        """A partial batch is collected (its first record at ``started``; ``items`` rows, ``size`` WAL
        bytes) and the WAL has nothing more for now: wait until the batch may go (its deadline, or the
        time it reaches half of ``batch_rows`` or all of ``batch_bytes`` at the rate it has been filling),
        but at least ``poll_interval_s``: a trickle's writes need no look each, the batch goes at its deadline."""
        o = self.options
        if self._polling():
            self._stop.wait(o.poll_interval_s)
            return
        now = time.monotonic()
        due = min(started, self._last_send_start) + self.batch_wait()
        elapsed = max(now - started, 1e-3)
        half = max(1, o.batch_rows // 2)
        fill = min((half - items) * elapsed / max(items, 1), (o.batch_bytes - size) * elapsed / max(size, 1))
        timeout = min(due - now, fill, o.idle_wait_s)
        self._stop.wait(max(o.poll_interval_s, timeout))

    def _polling(self) -> bool:
        """Look again every ``poll_interval_s`` rather than wait for a write: there is no watch (or it
        failed), or a batch is in flight (its commit must not wait for the next write)."""
        in_flight = self._sending is not None and not self._sending.done.is_set()
        return self._watch is None or self._watch.closed or in_flight

    def _commit_idle(self) -> None:
        """Nothing of this signal to ship: move its cursor over the other signals' records (at most once a
        second, and never while a batch of it is in flight), so that retention is not held up by it."""
        now = time.monotonic()
        if self.reader is None or self._sending is not None or now - self._last_idle_commit < 1.0:
            return
        self._last_idle_commit = now
        self.stats.committed_seq = self.reader.commit_idle()

    def _partial_batch_may_go(self, items: int) -> bool:
        """The WAL ran dry with ``items`` spans collected: send them now instead of waiting out batch_wait?

        Only when nothing is in flight, and the batch is a good-sized insert (half of batch_rows: the
        10k-100k rows ClickHouse asks for) or the previous INSERT began at least batch_wait ago. So every
        INSERT is either large or at least batch_wait after the previous one (about one a second by
        default, however many hosts), and the first spans after a quiet spell go out at once.
        """
        if self._sending is not None and not self._sending.done.is_set():
            return False
        o = self.options
        return items >= max(1, o.batch_rows // 2) or time.monotonic() - self._last_send_start >= self.batch_wait()

    def _freeze(self, entries: list[WalEntry]) -> FrozenBatch:
        assert self.sink.profile is not None
        return freeze_batch(entries, self.sink.profile, self.agent_id(), self.shipment)

    def _start(self, batch: FrozenBatch, entries: list[WalEntry], resumed: bool = False) -> None:
        """Record ``batch`` as in flight and start sending it in the sender thread (none may be in flight);
        :meth:`_finish` waits for it and commits it."""
        assert self.reader is not None
        assert self.sink.profile is not None
        assert self._sending is None
        if batch.profile is not self.sink.profile:  # re-detected while it was being frozen
            batch = self._freeze(entries)
        self.inflight.write(batch)
        if resumed and self._delivery.already_stored(batch):
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
        self._sending = Sending(lambda: self._send_frozen(batch, entries))

    def _send_frozen(self, batch: FrozenBatch, entries: list[WalEntry]) -> SendOutcome:
        """In the sender thread: the batch as finally sent and the rows refused (None if abandoned)."""
        while True:
            try:
                return batch, self._delivery.send_batch(batch)
            except ProfileChanged:
                assert self.sink.profile is not None
                log.warning(
                    "table %s now takes %s rows: re-encoding batch %d-%d",
                    self.sink.target,
                    self.sink.profile.value,
                    batch.first_seq,
                    batch.last_seq,
                )
                batch = freeze_batch(entries, self.sink.profile, self.agent_id(), self.shipment)

    def _finish(self) -> bool:
        """Wait for the batch in flight (if any) and commit it; False if it was abandoned for a stop."""
        sending, self._sending = self._sending, None
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
                self._delivery.problem(
                    f"cannot write the dead-letter file {self.dead_letter.path}: {exc.strerror}", ErrorClass.CONFIG
                )
                self._stop.sleep(self.options.config_retry_s)
                if self._stop.abandon():
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
