"""Several ClickHouse endpoints as one sink: the preferred healthy one takes the inserts, the others are failed over to.

:class:`FailoverSink` implements :class:`~.sink.Sink` over one :class:`~.http.ClickHouseHttpSink` per
endpoint (replicas of a shard and/or several shards: docs/scaling.md). Each endpoint is an explicit
little state machine, :class:`~.endpoints.Health`: ``UNKNOWN`` -> detected on first use -> ``UP`` -> no
answer, a stall or a 5xx other than TOO_MANY_PARTS -> ``DOWN`` (the same body goes to the next endpoint at
once, within the same :meth:`FailoverSink.insert`) -> a cheap probe fitting what took it down answers ->
``UNKNOWN``. :mod:`.endpoints` holds those states and what moves them (the probes, the detection, the
dedup domains, the stall watch); this module decides which endpoint takes each insert.

**Dedup domains keep retries exactly-once.** A failed insert after which the body may still have been
stored (:attr:`~.sink.InsertResult.maybe_stored`: a reset or timeout after sending, a stall, code 319) pins
that batch's token to the endpoint's dedup domain: the ZooKeeper path of its replicated table (every
replica of a shard shares it and deduplicates the same block, on 18.16 by the block's checksum) or, for a
plain table, the endpoint itself. Until it is stored, the batch (and each part of its bisection, token
``<token>:<path>``) goes only to endpoints of that domain, never to another shard, where it would be a
second copy. A failure before the request left (refused, connect timeout) pins nothing: that body went
nowhere.

**A frozen server** (SIGSTOP, a network black hole) accepts connections and never answers; a read timeout
(60 s) would be the failover time. With other endpoints to go to, every insert runs in a helper thread and
is watched: once it has been pending ``stall_check`` seconds, the endpoint is pinged (1 s timeout) every
``stall_check`` seconds, and if two pings in a row get no answer (an overloaded server still answers one
of them: failing over from it would only move its load) the insert is given up (its outcome unknown, so its
token is pinned as above) and the next endpoint of the domain takes it, about 4 s after it was sent. For
the same reason an endpoint is pinged before it is detected (its detection queries would each be held by
a frozen server).

Going back: the first endpoint in :attr:`FailoverSink.members` order is preferred (the factory orders
them); while another one serves, the preferred one is probed every ``probe_interval`` and taken back as
soon as it answers.

**One line per outage.** An endpoint that goes down while another takes its inserts is logged once (a
warning naming both), and once more (info) when it takes inserts again; a probe that answers and an
insert that fails again do not repeat it. When no endpoint takes an insert, the result names every
endpoint with its last error, in the same words until one of them changes, so the shipper's own
once-per-problem line covers the whole outage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from .endpoints import MAX_PINS as MAX_PINS  # and STALL_PINGS: still importable from here, where they were
from .endpoints import NO_ENDPOINT, TOO_MANY_PARTS, DedupPins, Endpoints, Health, Member, fails_over
from .endpoints import STALL_PINGS as STALL_PINGS
from .errors import ErrorClass
from .http import ClickHouseHttpSink
from .resource import Profile
from .sink import Capabilities, DetectResult, InsertResult, RowKeys, SinkError

__all__ = ["NO_ENDPOINT", "TOO_MANY_PARTS", "FailoverSink", "Health", "Member", "fails_over"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class FailoverSink:
    """The :class:`~.sink.Sink` over several endpoints (see the module docstring)."""

    def __init__(
        self,
        members: list[ClickHouseHttpSink],
        *,
        probe_interval: float = 1.0,
        stall_check: float = 2.0,
        config_recheck: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not members:
            raise ValueError("a failover sink needs at least one endpoint")
        self._endpoints = Endpoints(
            members, probe_interval=probe_interval, stall_check=stall_check, config_recheck=config_recheck, clock=clock
        )
        self._active = self.members[0]
        self._pins = DedupPins()
        self.profile: Profile | None = None
        self.failovers = 0  # switches of the active endpoint (metrics)
        self._blocked_domain: str | None = None  # the domain the last insert that failed everywhere was pinned to
        self._origin: tuple[InsertResult, ClickHouseHttpSink] | None = None  # the last member result returned

    # ------------------------------------------------------------------ what the shipper reads
    @property
    def members(self) -> list[Member]:
        """Every endpoint, in preference order (the factory orders them)."""
        return self._endpoints.members

    @property
    def probe_interval(self) -> float:
        return self._endpoints.probe_interval

    @property
    def stall_check(self) -> float:
        return self._endpoints.stall_check

    @property
    def config_recheck(self) -> float:
        return self._endpoints.config_recheck

    @property
    def stalls(self) -> int:
        """Inserts given up on a server that stopped answering (metrics)."""
        return self._endpoints.stalls

    @property
    def endpoint(self) -> str:
        return self._active.endpoint

    @property
    def database(self) -> str:
        return self._active.sink.database

    @property
    def table(self) -> str:
        return self._active.sink.table

    @property
    def target(self) -> str:
        return self._active.sink.target

    @property
    def capabilities(self) -> Capabilities | None:
        return self._active.sink.capabilities

    @property
    def active(self) -> Member:
        return self._active

    def health(self) -> dict[str, Health]:
        """Every endpoint's state (``status`` and the metrics show it)."""
        return {m.endpoint: m.health for m in self.members}

    def _switch_to(self, m: Member) -> None:
        if m is not self._active:
            log.info("inserting into %s at %s (was %s)", m.sink.target, m.endpoint, self._active.endpoint)
            self._active = m
            self.failovers += 1

    def shard_sinks(self) -> list[ClickHouseHttpSink]:
        """The active endpoint and every other one of its dedup domain (the replicas of its shard) that is
        not down, the domain of each found out if not yet known (a light query, 2 s at most; one that does
        not answer is left out): what the insert policy reads to see the whole shard's inserts."""
        active = self._active
        if not active.domain:
            return [active.sink]
        shard = [active.sink]
        for m in self.members:
            if m is active or m.health is Health.DOWN:
                continue
            if not m.domain:
                try:
                    m.domain = self._endpoints.domain_of(m, timeout=2.0)
                except SinkError:
                    continue
            if m.domain == active.domain:
                shard.append(m.sink)
        return shard

    def pinned_domain(self, token: str | None) -> str | None:
        """The dedup domain a token (or the batch it is a bisection part of: ``<token>:<path>``) is bound to."""
        return self._pins.domain(token)

    # ------------------------------------------------------------------ the Sink protocol
    def _order(self) -> list[Member]:
        """Preferred first: the preferred endpoint, then the active one, then the rest in order."""
        rest = [m for m in self.members[1:] if m is not self._active]
        head = [self.members[0]] + ([self._active] if self._active is not self.members[0] else [])
        return head + rest

    def detect(self) -> DetectResult:
        """Detect the first usable endpoint in preference order. None usable: the one endpoint's
        :class:`SinkError`, the first one's when every endpoint has a configuration problem, else a
        TRANSIENT one naming every endpoint."""
        errors: list[tuple[Member, SinkError]] = []
        skipped = False
        for m in self._order():
            if not self._endpoints.probe_due(m):
                skipped = True
                continue
            try:
                d = self._endpoints.detect(m)
            except SinkError as exc:
                errors.append((m, exc))
                if exc.result.error_class is not ErrorClass.CONFIG or len(self.members) > 1:
                    self._endpoints.down(m, str(exc), exc.result)
                continue
            if self.profile is None:
                self.profile = d.profile
            if d.profile is not self.profile:
                log.warning("the tables now take %s rows (were %s)", d.profile.value, self.profile.value)
                self.profile = d.profile
            m.detected, m.reported, m.health = True, "", Health.UP
            for other, error in errors:
                if error.result.error_class is ErrorClass.CONFIG and other.reported != str(error):
                    log.error("ClickHouse endpoint %s is not usable: %s", other.endpoint, error)
                    other.reported = str(error)
            self._switch_to(m)
            return d
        if errors and (
            len(self.members) == 1
            or (not skipped and all(e.result.error_class is ErrorClass.CONFIG for _, e in errors))
        ):
            raise errors[0][1]
        result = InsertResult(False, ErrorClass.TRANSIENT, message=self._endpoints.summary(None), unsent=True)
        raise SinkError(result, result.message)

    def insert(self, body: bytes, token: str | None = None) -> InsertResult:
        """Insert into the preferred usable endpoint, failing over at once; never raises."""
        domain = self.pinned_domain(token)
        last: InsertResult | None = None
        for m in self._order():
            if not m.in_domain(domain):
                continue
            if not self._endpoints.ready(m, self.profile) or not m.in_domain(domain):
                continue
            r = self._endpoints.insert_watched(m, body, token)
            m.inserts += 1
            if r.ok or r.error_class is ErrorClass.BAD_DATA:
                self._endpoints.took_insert(m)
                self._switch_to(m)
                self._pins.unpin(token)
                self._blocked_domain = None
                return r
            if r.maybe_stored and domain is None:
                domain = m.domain
                self._pins.pin(token, domain)
            if not fails_over(r):
                self._origin = (r, m.sink)
                return r
            self._endpoints.down(m, m.sink.explain(r), r)
            last = r
        return self._everywhere_failed(last, domain)

    def _everywhere_failed(self, last: InsertResult | None, domain: str | None) -> InsertResult:
        """The result of an insert no endpoint took: TRANSIENT, naming each endpoint (of its domain) with its
        last error; the code, status and ``unsent`` of the last failure (none tried: nothing sent)."""
        self._blocked_domain = domain
        for m in self.members:
            m.announce = False  # this result's line names them all
        if last is None:
            return InsertResult(False, ErrorClass.TRANSIENT, message=self._endpoints.summary(domain), unsent=True)
        return InsertResult(
            False,
            ErrorClass.TRANSIENT,
            last.code,
            self._endpoints.summary(domain),
            last.status,
            last.raw_bytes,
            last.sent_bytes,
            last.encoding,
            last.finding,
            last.unsent,
        )

    def probe(self, last: InsertResult) -> bool:
        """Whether an insert would likely succeed now, found cheaply (each endpoint of the blocked batch's
        domain at most once per ``probe_interval``, in the way its own failure calls for)."""
        if last.code == TOO_MANY_PARTS:
            return False
        domain = self._blocked_domain
        for m in self._order():
            if not m.in_domain(domain):
                continue
            if m.health is Health.DOWN:
                if self._endpoints.probe_due(m, evidence=True):
                    return True
            elif m.health is Health.UNKNOWN:
                return True  # its probe answered (or it was never tried): worth the retry
            elif self._returned(last, m) and m.sink.probe(last):
                return True  # its own failure, one that did not fail over (a 4xx)
        return False

    def _returned(self, r: InsertResult, m: Member) -> bool:
        """Whether ``r`` is ``m``'s own result, returned by the last :meth:`insert` as it was."""
        return self._origin is not None and self._origin[0] is r and self._origin[1] is m.sink

    def explain(self, r: InsertResult) -> str:
        if r.message.startswith(NO_ENDPOINT):
            return r.message
        if self._origin is not None and self._origin[0] is r:
            return self._origin[1].explain(r)
        return self._active.sink.explain(r)

    def _on_active(self, call: Callable[[ClickHouseHttpSink], T]) -> T:
        """A query on the active endpoint, on the next usable one if it cannot be reached."""
        try:
            return call(self._active.sink)
        except SinkError as exc:
            if exc.result.error_class is not ErrorClass.TRANSIENT:
                raise
            self._endpoints.down(self._active, str(exc), exc.result)
            self.detect()
            return call(self._active.sink)

    def query(self, sql: str) -> str:
        return self._on_active(lambda s: s.query(sql))

    def read(self, sql: str, fmt: str) -> bytes:
        return self._on_active(lambda s: s.read(sql, fmt))

    def count_present(self, span_ids: list[str], min_ns: int, max_ns: int) -> int:
        return self._on_active(lambda s: s.count_present(span_ids, min_ns, max_ns))

    def count_rows(self, columns: tuple[str, ...], keys: list[tuple[object, ...]], min_ns: int, max_ns: int) -> int:
        return self._on_active(lambda s: s.count_rows(columns, keys, min_ns, max_ns))

    def for_table(self, table: str, row_keys: RowKeys) -> FailoverSink:
        return FailoverSink(
            [m.sink.for_table(table, row_keys) for m in self.members],
            probe_interval=self.probe_interval,
            stall_check=self.stall_check,
            config_recheck=self.config_recheck,
            clock=self._endpoints.clock,
        )

    def close(self) -> None:
        for m in self.members:
            m.sink.close()
