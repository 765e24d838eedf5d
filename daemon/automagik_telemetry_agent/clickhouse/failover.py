"""Several ClickHouse endpoints as one sink: the preferred healthy one takes the inserts, the others are failed over to.

:class:`FailoverSink` implements :class:`~.sink.Sink` over one :class:`~.http.ClickHouseHttpSink` per
endpoint (replicas of a shard and/or several shards: docs/scaling.md). Each endpoint is an explicit
little state machine, :class:`Health`:

* ``UNKNOWN`` -> detected on first use (version, table, and its **dedup domain**, below) -> ``UP``;
* ``UP`` -> a connection error, a stall, or a 5xx other than TOO_MANY_PARTS -> ``DOWN`` (the same body goes
  to the next endpoint at once, within the same :meth:`FailoverSink.insert`);
* ``DOWN`` -> a cheap probe (``GET /ping``, at most every ``probe_interval`` seconds) answers -> ``UP``.

**Dedup domains keep retries exactly-once.** A failed insert after which the body may still have been
stored (:attr:`~.sink.InsertResult.maybe_stored`: a reset or timeout after sending, code 319) pins that
batch's token to the endpoint's dedup domain: the ZooKeeper path of its replicated table (every replica of
a shard shares it and deduplicates the same block, on 18.16 by the block's checksum) or, for a plain table,
the endpoint itself. Until it is stored, the batch goes only to endpoints of that domain, never to another
shard, where it would be a second copy. A failure before the request left (refused, connect timeout) pins
nothing: that body went nowhere.

**A frozen server** (SIGSTOP, a network black hole) accepts connections and never answers; a read timeout
(60 s) would be the failover time. With other endpoints to go to, every insert runs in a helper thread and
is watched: once it has been pending ``stall_check`` seconds, the endpoint is pinged (1 s timeout) every
``stall_check`` seconds, and if the ping gets no answer the insert is given up (its outcome unknown, so its
token is pinned as above) and the next endpoint of the domain takes it.

Going back: the first endpoint in :attr:`FailoverSink.members` order is preferred (the factory orders
them); while another one serves, the preferred one is probed every ``probe_interval`` and taken back as
soon as it answers.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from .errors import ErrorClass
from .http import ClickHouseHttpSink
from .rows import Profile
from .schema import quote
from .sink import Capabilities, DetectResult, InsertResult, RowKeys, SinkError

__all__ = ["TOO_MANY_PARTS", "FailoverSink", "Health"]

log = logging.getLogger(__name__)

TOO_MANY_PARTS = 252  # the whole shard's table is behind with merges: another replica would not help
T = TypeVar("T")
MAX_PINS = 1024  # tokens remembered with their dedup domain (a batch is pinned until it is stored)


class Health(enum.Enum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


@dataclass
class Member:
    """One endpoint and what the failover knows of it."""

    sink: ClickHouseHttpSink
    health: Health = Health.UNKNOWN
    domain: str = ""  # dedup domain: ZooKeeper path of the replicated table, or "endpoint:<url>"
    down_since: float = 0.0
    next_probe: float = 0.0
    last_error: str = ""
    inserts: int = 0
    failures: int = 0
    detected: bool = field(default=False)

    @property
    def endpoint(self) -> str:
        return self.sink.endpoint


def fails_over(r: InsertResult) -> bool:
    """Whether another endpoint may succeed where this one failed: no answer, or a server error of this
    server (5xx: down, read-only replica, keeper trouble), but not TOO_MANY_PARTS (the shard's table)."""
    if r.ok or r.error_class is not ErrorClass.TRANSIENT or r.code == TOO_MANY_PARTS:
        return False
    return r.status is None or r.status >= 500


def _stalled(endpoint: str, seconds: float) -> InsertResult:
    return InsertResult(
        False,
        ErrorClass.TRANSIENT,
        message=f"ClickHouse at {endpoint} stopped answering: no answer to /ping while an INSERT was pending "
        f"{seconds:.1f} s (given up; it may have been stored)",
    )


class FailoverSink:
    """The :class:`~.sink.Sink` over several endpoints (see the module docstring)."""

    def __init__(
        self,
        members: list[ClickHouseHttpSink],
        *,
        probe_interval: float = 1.0,
        stall_check: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not members:
            raise ValueError("a failover sink needs at least one endpoint")
        self.members = [Member(s) for s in members]
        self.probe_interval = probe_interval
        self.stall_check = stall_check
        self._clock = clock
        self._active = self.members[0]
        self._pins: OrderedDict[str, str] = OrderedDict()
        self.profile: Profile | None = None
        self.failovers = 0  # switches of the active endpoint (metrics)

    # ------------------------------------------------------------------ what the shipper reads
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

    # ------------------------------------------------------------------ member states
    def _down(self, m: Member, why: str) -> None:
        now = self._clock()
        if m.health is not Health.DOWN:
            m.down_since = now
            log.warning("ClickHouse endpoint %s is down (%s): failing over", m.endpoint, why)
        m.health, m.last_error, m.next_probe = Health.DOWN, why, now + self.probe_interval
        m.failures += 1

    def _up(self, m: Member) -> None:
        if m.health is Health.DOWN:
            log.info("ClickHouse endpoint %s answers again (down %.1f s)", m.endpoint, self._clock() - m.down_since)
        m.health, m.last_error = Health.UP, ""

    def _switch_to(self, m: Member) -> None:
        if m is not self._active:
            log.info("inserting into %s at %s (was %s)", m.sink.target, m.endpoint, self._active.endpoint)
            self._active = m
            self.failovers += 1

    def _probe_due(self, m: Member) -> bool:
        """A DOWN endpoint whose probe is due answered /ping (it is then UNKNOWN: detected before use)."""
        if m.health is not Health.DOWN or self._clock() < m.next_probe:
            return m.health is not Health.DOWN
        m.next_probe = self._clock() + self.probe_interval
        if m.sink.ping():
            m.health, m.detected = Health.UNKNOWN, False
            return True
        return False

    def _ready(self, m: Member) -> bool:
        """Usable now: not DOWN (or its probe answered), detected, and of this sink's row profile."""
        if not self._probe_due(m):
            return False
        if m.detected:
            return True
        try:
            d = m.sink.detect()
            m.domain = self._domain_of(m)
        except SinkError as exc:
            if exc.result.error_class is ErrorClass.CONFIG:
                log.error("ClickHouse endpoint %s is not usable: %s", m.endpoint, exc)
            self._down(m, str(exc))
            return False
        if self.profile is not None and d.profile is not self.profile:
            self._down(m, f"its table {m.sink.target} takes {d.profile.value} rows, the others {self.profile.value}")
            log.error("ClickHouse endpoint %s: %s; not failing over to it", m.endpoint, m.last_error)
            return False
        m.detected = True
        self._up(m)
        return True

    def _domain_of(self, m: Member) -> str:
        """The replicated table's ZooKeeper path (shared by the replicas of a shard), else the endpoint."""
        sql = (
            "SELECT zookeeper_path FROM system.replicas WHERE database = "
            f"{quote(m.sink.database)} AND table = {quote(m.sink.table)} FORMAT TabSeparated"
        )
        path = m.sink.query(sql).strip()
        return f"zookeeper:{path}" if path else f"endpoint:{m.endpoint}"

    # ------------------------------------------------------------------ pins
    def _pin(self, token: str | None, domain: str) -> None:
        if token is None:
            return
        self._pins[token] = domain
        self._pins.move_to_end(token)
        while len(self._pins) > MAX_PINS:
            self._pins.popitem(last=False)

    def pinned_domain(self, token: str | None) -> str | None:
        """The dedup domain a token (or the batch it is a bisection part of: ``<token>:<path>``) is bound to."""
        while token:
            if token in self._pins:
                return self._pins[token]
            token = token.rpartition(":")[0] if token.count(":") > 2 else ""
        return None

    def _unpin(self, token: str | None) -> None:
        if token is not None:
            for t in [t for t in self._pins if t == token or t.startswith(token + ":")]:
                del self._pins[t]

    # ------------------------------------------------------------------ the Sink protocol
    def _order(self) -> list[Member]:
        """Preferred first: the preferred endpoint, then the active one, then the rest in order."""
        rest = [m for m in self.members[1:] if m is not self._active]
        head = [self.members[0]] + ([self._active] if self._active is not self.members[0] else [])
        return head + rest

    def detect(self) -> DetectResult:
        """Detect the first usable endpoint in preference order; the last endpoint's :class:`SinkError` if none is."""
        last: SinkError | None = None
        for m in self._order():
            if not self._probe_due(m):
                continue
            try:
                d = m.sink.detect()
                m.domain = self._domain_of(m)
            except SinkError as exc:
                last = exc
                if exc.result.error_class is not ErrorClass.CONFIG or len(self.members) > 1:
                    self._down(m, str(exc))
                continue
            if self.profile is None:
                self.profile = d.profile
            if d.profile is not self.profile:
                log.warning("the tables now take %s rows (were %s)", d.profile.value, self.profile.value)
                self.profile = d.profile
            m.detected = True
            self._up(m)
            self._switch_to(m)
            return d
        if last is None:
            result = self._none_available()
            raise SinkError(result, self.explain(result))
        raise last

    def _none_available(self) -> InsertResult:
        detail = "; ".join(f"{m.endpoint}: {m.last_error or m.health.value}" for m in self.members)
        return InsertResult(
            False, ErrorClass.TRANSIENT, message=f"no ClickHouse endpoint is usable ({detail})", unsent=True
        )

    def insert(self, body: bytes, token: str | None = None) -> InsertResult:
        """Insert into the preferred usable endpoint, failing over at once; never raises."""
        domain = self.pinned_domain(token)
        last: InsertResult | None = None
        for m in self._order():
            if domain is not None and m.detected and m.domain != domain:
                continue
            if not self._ready(m) or (domain is not None and m.domain != domain):
                continue
            r = self._insert_watched(m, body, token)
            m.inserts += 1
            if r.ok or r.error_class is ErrorClass.BAD_DATA:
                self._up(m)
                self._switch_to(m)
                self._unpin(token)
                return r
            if r.maybe_stored and domain is None:
                domain = m.domain
                self._pin(token, domain)
            if not fails_over(r):
                return r
            self._down(m, m.sink.explain(r))
            last = r
        return last if last is not None else self._none_available()

    def _insert_watched(self, m: Member, body: bytes, token: str | None) -> InsertResult:
        """``m``'s insert, given up when it stalls and ``m`` stops answering /ping (only with somewhere else
        to go: a single endpoint waits for its own read timeout)."""
        if len(self.members) == 1:
            return m.sink.insert(body, token)
        box: list[InsertResult] = []
        done = threading.Event()

        def run() -> None:
            try:
                box.append(m.sink.insert(body, token))
            finally:
                done.set()

        started = self._clock()
        threading.Thread(target=run, name=f"insert {m.endpoint}", daemon=True).start()
        while not done.wait(self.stall_check):
            if not m.sink.ping():
                m.sink.reset_session()  # the stalled request keeps the old one until its read timeout
                return _stalled(m.endpoint, self._clock() - started)
        return box[0]

    def probe(self, last: InsertResult) -> bool:
        """Whether an insert would likely succeed now (cheap: /ping, or the replicas' read-only flags)."""
        if last.code == TOO_MANY_PARTS:
            return False
        for m in self._order():
            if m.health is Health.DOWN:
                if self._probe_due(m):
                    return True
            elif m.sink.probe(last):
                return True
        return False

    def explain(self, r: InsertResult) -> str:
        return self._active.sink.explain(r)

    def _on_active(self, call: Callable[[ClickHouseHttpSink], T]) -> T:
        """A query on the active endpoint, on the next usable one if it cannot be reached."""
        try:
            return call(self._active.sink)
        except SinkError as exc:
            if exc.result.error_class is not ErrorClass.TRANSIENT:
                raise
            self._down(self._active, str(exc))
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
            clock=self._clock,
        )

    def close(self) -> None:
        for m in self.members:
            m.sink.close()
