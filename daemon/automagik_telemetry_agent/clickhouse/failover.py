"""Several ClickHouse endpoints as one sink: the preferred healthy one takes the inserts, the others are failed over to.

:class:`FailoverSink` implements :class:`~.sink.Sink` over one :class:`~.http.ClickHouseHttpSink` per
endpoint (replicas of a shard and/or several shards: docs/scaling.md). Each endpoint is an explicit
little state machine, :class:`Health`:

* ``UNKNOWN`` -> detected on first use (version, table, and its **dedup domain**, below) -> ``UP``;
* ``UP`` -> a connection error, a stall, or a 5xx other than TOO_MANY_PARTS -> ``DOWN`` (the same body goes
  to the next endpoint at once, within the same :meth:`FailoverSink.insert`);
* ``DOWN`` -> a cheap probe (at most every ``probe_interval`` seconds) answers -> ``UNKNOWN`` (detected
  again before its next insert). The probe fits what took it down: ``GET /ping`` after no answer, the
  replicas' read-only flags after a keeper error (242, 225, 999, 319: such a server answers /ping while its
  tables stay read-only). After another error the server answered with, /ping makes it worth one more try
  when its turn comes, but is no reason to end the shipper's backoff (:meth:`FailoverSink.probe`). A table
  that is missing or of another row shape is checked again only every ``config_recheck`` seconds.

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

import enum
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from .errors import ErrorClass
from .http import KEEPER_CODES, PROBE_TIMEOUT_S, ClickHouseHttpSink
from .rows import Profile
from .schema import quote
from .sink import Capabilities, DetectResult, InsertResult, RowKeys, SinkError

__all__ = ["NO_ENDPOINT", "TOO_MANY_PARTS", "FailoverSink", "Health", "Member", "fails_over"]

log = logging.getLogger(__name__)

TOO_MANY_PARTS = 252  # the whole shard's table is behind with merges: another replica would not help
T = TypeVar("T")
STALL_PINGS = 2  # consecutive unanswered pings (stall_check apart) that give a pending insert up
MAX_PINS = 1024  # tokens remembered with their dedup domain (a batch is pinned until it is stored)
#: How the message of a result (or SinkError) starts when no endpoint could take the insert (or be detected).
NO_ENDPOINT = "no ClickHouse endpoint takes inserts"


class Health(enum.Enum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


@dataclass
class Member:
    """One endpoint and what the failover knows of it."""

    sink: ClickHouseHttpSink
    health: Health = Health.UNKNOWN
    domain: str = ""  # dedup domain: "zookeeper:<path of the replicated table>", or "endpoint:<url>"
    down_since: float | None = None  # start of the current outage (ends with an insert it takes)
    next_probe: float = 0.0
    answered_at: float | None = None  # when its probe last answered
    last_error: str = ""  # one line: why it went down
    last_result: InsertResult | None = None  # the failure that took it down (its probe fits it)
    inserts: int = 0
    failures: int = 0
    detected: bool = field(default=False)
    announce: bool = False  # went down and not yet logged (logged once another endpoint took over)
    reported: str = ""  # the last configuration problem logged for it (each logged once)

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
        config_recheck: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not members:
            raise ValueError("a failover sink needs at least one endpoint")
        self.members = [Member(s) for s in members]
        self.probe_interval = probe_interval
        self.stall_check = stall_check
        self.config_recheck = config_recheck
        self._clock = clock
        self._active = self.members[0]
        self._pins: OrderedDict[str, str] = OrderedDict()
        self.profile: Profile | None = None
        self.failovers = 0  # switches of the active endpoint (metrics)
        self.stalls = 0  # inserts given up on a server that stopped answering
        self._blocked_domain: str | None = None  # the domain the last insert that failed everywhere was pinned to
        self._origin: tuple[InsertResult, ClickHouseHttpSink] | None = None  # the last member result returned

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
    def _down(self, m: Member, why: str, result: InsertResult | None = None) -> None:
        now = self._clock()
        if m.down_since is None:
            m.down_since, m.announce = now, True
        elif m.last_error != why:
            m.announce = m.announce or m.health is not Health.DOWN
        config = result is not None and result.error_class is ErrorClass.CONFIG
        m.health, m.last_error, m.last_result = Health.DOWN, why, result
        m.next_probe = now + (max(self.probe_interval, self.config_recheck) if config else self.probe_interval)
        m.failures += 1
        log.debug("ClickHouse endpoint %s is down: %s", m.endpoint, why)

    def _took_insert(self, m: Member) -> None:
        """``m`` took an insert: it is UP, and an outage of it is over (logged once)."""
        if m.down_since is not None:
            log.info(
                "ClickHouse endpoint %s takes inserts again (down %.1f s)", m.endpoint, self._clock() - m.down_since
            )
        m.health, m.last_error, m.last_result, m.down_since, m.announce = Health.UP, "", None, None, False
        for other in self.members:
            if other.announce and other.health is Health.DOWN:
                log.warning(
                    "ClickHouse endpoint %s is down (%s): inserting into %s",
                    other.endpoint,
                    other.last_error,
                    m.endpoint,
                )
            other.announce = False

    def _switch_to(self, m: Member) -> None:
        if m is not self._active:
            log.info("inserting into %s at %s (was %s)", m.sink.target, m.endpoint, self._active.endpoint)
            self._active = m
            self.failovers += 1

    def _probe_says(self, m: Member, evidence: bool) -> bool:
        """What a cheap probe of the DOWN endpoint ``m`` says of it, fitting what took it down. With
        ``evidence`` (the shipper's backoff), an endpoint that answered with an error of its own counts only
        once its probe shows more than that it answers (:meth:`.http.ClickHouseHttpSink.probe`)."""
        last = m.last_result
        if last is None or not (evidence or last.code in KEEPER_CODES):
            return m.sink.ping()
        return m.sink.probe(last)

    def _probe_due(self, m: Member, evidence: bool = False) -> bool:
        """Whether ``m`` may be tried now: not DOWN, or DOWN with its probe due and answering (it is then
        UNKNOWN: detected before use)."""
        if m.health is not Health.DOWN:
            return True
        now = self._clock()
        if now < m.next_probe:
            return False
        m.next_probe = now + self.probe_interval
        if m.last_result is not None and m.last_result.error_class is ErrorClass.CONFIG:
            m.next_probe = now + max(self.probe_interval, self.config_recheck)
            answered = m.sink.ping()  # detected again: the table may have been fixed
        else:
            answered = self._probe_says(m, evidence)
        if answered:
            m.health, m.detected, m.answered_at = Health.UNKNOWN, False, now
        return answered

    def _detect_member(self, m: Member) -> DetectResult:
        """``m``'s detection and dedup domain. With other endpoints to go to, a /ping first: a frozen server
        would hold each of the detection's queries for the read timeout."""
        answered = m.answered_at is not None and self._clock() - m.answered_at < self.probe_interval
        if len(self.members) > 1 and not answered and not m.sink.ping():
            r = InsertResult(
                False,
                ErrorClass.TRANSIENT,
                message=f"no answer to /ping within {PROBE_TIMEOUT_S:g} s",
                unsent=True,
            )
            raise SinkError(r, m.sink.explain(r))
        d = m.sink.detect()
        m.domain = self._domain_of(m)
        return d

    def _config_problem(self, m: Member, why: str, result: InsertResult) -> None:
        if m.reported != why:
            log.error("ClickHouse endpoint %s is not usable: %s", m.endpoint, why)
            m.reported = why
        self._down(m, why, result)

    def _ready(self, m: Member) -> bool:
        """Usable now: not DOWN (or its probe answered), detected, and of this sink's row profile."""
        if not self._probe_due(m):
            return False
        if m.detected:
            return True
        try:
            d = self._detect_member(m)
        except SinkError as exc:
            if exc.result.error_class is ErrorClass.CONFIG:
                self._config_problem(m, str(exc), exc.result)
            else:
                self._down(m, str(exc), exc.result)
            return False
        if self.profile is not None and d.profile is not self.profile:
            why = f"its table {m.sink.target} takes {d.profile.value} rows, the others {self.profile.value}"
            self._config_problem(m, why, InsertResult(False, ErrorClass.CONFIG, message=why))
            return False
        m.detected, m.reported, m.health = True, "", Health.UP
        return True

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
                    m.domain = self._domain_of(m, timeout=2.0)
                except SinkError:
                    continue
            if m.domain == active.domain:
                shard.append(m.sink)
        return shard

    def _domain_of(self, m: Member, timeout: float | None = None) -> str:
        """The replicated table's ZooKeeper path (shared by the replicas of a shard), else the endpoint."""
        sql = (
            "SELECT zookeeper_path FROM system.replicas WHERE database = "
            f"{quote(m.sink.database)} AND table = {quote(m.sink.table)} FORMAT TabSeparated"
        )
        path = (m.sink.query(sql) if timeout is None else m.sink.query(sql, timeout=timeout)).strip()
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
            token = token.rpartition(":")[0]
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

    def _in(self, m: Member, domain: str | None) -> bool:
        """Whether ``m`` may take a batch pinned to ``domain`` (an endpoint of no known domain yet may: its
        detection tells)."""
        return domain is None or not m.domain or m.domain == domain

    def _summary(self, domain: str | None) -> str:
        """Every endpoint (of ``domain``) with its last error: the same words while nothing changes."""
        parts = [
            m.last_error or f"ClickHouse at {m.endpoint}: {m.health.value}" for m in self.members if self._in(m, domain)
        ]
        pinned = (
            f" of {domain.partition(':')[2]} (a batch that may already be stored there waits for them)"
            if domain
            else ""
        )
        return f"{NO_ENDPOINT}{pinned}: " + "; ".join(parts)

    def detect(self) -> DetectResult:
        """Detect the first usable endpoint in preference order. None usable: the one endpoint's
        :class:`SinkError`, the first one's when every endpoint has a configuration problem, else a
        TRANSIENT one naming every endpoint."""
        errors: list[tuple[Member, SinkError]] = []
        skipped = False
        for m in self._order():
            if not self._probe_due(m):
                skipped = True
                continue
            try:
                d = self._detect_member(m)
            except SinkError as exc:
                errors.append((m, exc))
                if exc.result.error_class is not ErrorClass.CONFIG or len(self.members) > 1:
                    self._down(m, str(exc), exc.result)
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
        result = InsertResult(False, ErrorClass.TRANSIENT, message=self._summary(None), unsent=True)
        raise SinkError(result, result.message)

    def insert(self, body: bytes, token: str | None = None) -> InsertResult:
        """Insert into the preferred usable endpoint, failing over at once; never raises."""
        domain = self.pinned_domain(token)
        last: InsertResult | None = None
        for m in self._order():
            if not self._in(m, domain):
                continue
            if not self._ready(m) or not self._in(m, domain):
                continue
            r = self._insert_watched(m, body, token)
            m.inserts += 1
            if r.ok or r.error_class is ErrorClass.BAD_DATA:
                self._took_insert(m)
                self._switch_to(m)
                self._unpin(token)
                self._blocked_domain = None
                return r
            if r.maybe_stored and domain is None:
                domain = m.domain
                self._pin(token, domain)
            if not fails_over(r):
                self._origin = (r, m.sink)
                return r
            self._down(m, m.sink.explain(r), r)
            last = r
        return self._everywhere_failed(last, domain)

    def _everywhere_failed(self, last: InsertResult | None, domain: str | None) -> InsertResult:
        """The result of an insert no endpoint took: TRANSIENT, naming each endpoint (of its domain) with its
        last error; the code, status and ``unsent`` of the last failure (none tried: nothing sent)."""
        self._blocked_domain = domain
        for m in self.members:
            m.announce = False  # this result's line names them all
        if last is None:
            return InsertResult(False, ErrorClass.TRANSIENT, message=self._summary(domain), unsent=True)
        return InsertResult(
            False,
            ErrorClass.TRANSIENT,
            last.code,
            self._summary(domain),
            last.status,
            last.raw_bytes,
            last.sent_bytes,
            last.encoding,
            last.finding,
            last.unsent,
        )

    def _insert_watched(self, m: Member, body: bytes, token: str | None) -> InsertResult:
        """``m``'s insert, given up when it stalls and ``m`` stops answering /ping (only with somewhere else
        to go: a single endpoint waits for its own read timeout)."""
        if len(self.members) == 1:
            return m.sink.insert(body, token)
        box: list[InsertResult] = []
        raised: list[BaseException] = []
        done = threading.Event()
        session = m.sink.session

        def run() -> None:
            try:
                box.append(m.sink.insert(body, token))
            except BaseException as exc:  # handed to the caller (insert never raises: a bug)
                raised.append(exc)
            finally:
                done.set()
                if m.sink.session is not session:  # given up: its session was replaced
                    session.close()

        started = self._clock()
        threading.Thread(target=run, name=f"insert {m.endpoint}", daemon=True).start()
        unanswered = 0
        while not done.wait(self.stall_check if unanswered == 0 else 0.0):  # after a miss: ping again at once
            # Two pings in a row without an answer: a server that is merely overloaded still answers one of
            # them, and failing over from it would add its load to another replica.
            unanswered = 0 if m.sink.ping() else unanswered + 1
            if unanswered >= STALL_PINGS and not done.is_set():
                m.sink.reset_session()  # the stalled request keeps the old one until its read timeout
                self.stalls += 1
                return _stalled(m.endpoint, self._clock() - started)
        if raised:
            raise raised[0]
        return box[0]

    def probe(self, last: InsertResult) -> bool:
        """Whether an insert would likely succeed now, found cheaply (each endpoint of the blocked batch's
        domain at most once per ``probe_interval``, in the way its own failure calls for)."""
        if last.code == TOO_MANY_PARTS:
            return False
        domain = self._blocked_domain
        for m in self._order():
            if not self._in(m, domain):
                continue
            if m.health is Health.DOWN:
                if self._probe_due(m, evidence=True):
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
            self._down(self._active, str(exc), exc.result)
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
            clock=self._clock,
        )

    def close(self) -> None:
        for m in self.members:
            m.sink.close()
