"""The endpoints of a :class:`~.failover.FailoverSink`: what it knows of each one, and what changes that.

Each endpoint is a :class:`Member`, an explicit little state machine, :class:`Health`:

* ``UNKNOWN`` -> detected on first use (version, table, and its **dedup domain**) -> ``UP``;
* ``UP`` -> a connection error, a stall, or a 5xx other than TOO_MANY_PARTS -> ``DOWN`` (the same body goes
  to the next endpoint at once, within the same :meth:`~.failover.FailoverSink.insert`);
* ``DOWN`` -> a cheap probe (at most every ``probe_interval`` seconds) answers -> ``UNKNOWN`` (detected
  again before its next insert). The probe fits what took it down: ``GET /ping`` after no answer, the
  replicas' read-only flags after a keeper error (242, 225, 999, 319: such a server answers /ping while its
  tables stay read-only). After another error the server answered with, /ping makes it worth one more try
  when its turn comes, but is no reason to end the shipper's backoff (:meth:`~.failover.FailoverSink.probe`).
  A table that is missing or of another row shape is checked again only every ``config_recheck`` seconds.

:class:`Endpoints` holds the members and moves them between those states: the probes, the detection with
the dedup domain (the ZooKeeper path of a replicated table, else the endpoint itself), and the watch that
gives a stalled insert up (:meth:`Endpoints.insert_watched`: a frozen server accepts connections and never
answers, so with other endpoints to go to it is pinged while an insert is pending, and before it is
detected). :class:`DedupPins` remembers which dedup domain each maybe-stored batch is bound to. What the
failover does with all this (which endpoint takes the next insert, when a pin is set) is in
:mod:`.failover`, whose module docstring tells the whole story.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import ErrorClass
from .http import KEEPER_CODES, PROBE_TIMEOUT_S, ClickHouseHttpSink
from .resource import Profile
from .sink import DetectResult, InsertResult, SinkError
from .sql import quote

__all__ = [
    "MAX_PINS",
    "NO_ENDPOINT",
    "STALL_PINGS",
    "TOO_MANY_PARTS",
    "DedupPins",
    "Endpoints",
    "Health",
    "Member",
    "fails_over",
]

#: The failover's one logger: its lines keep the name they had before this module was split from it.
log = logging.getLogger("automagik_telemetry_agent.clickhouse.failover")

TOO_MANY_PARTS = 252  # the whole shard's table is behind with merges: another replica would not help
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

    def in_domain(self, domain: str | None) -> bool:
        """Whether it may take a batch pinned to ``domain`` (an endpoint of no known domain yet may: its
        detection tells)."""
        return domain is None or not self.domain or self.domain == domain


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


class Endpoints:
    """The members of a failover sink, in preference order, and the transitions of their states."""

    def __init__(
        self,
        sinks: list[ClickHouseHttpSink],
        *,
        probe_interval: float,
        stall_check: float,
        config_recheck: float,
        clock: Callable[[], float],
    ) -> None:
        self.members = [Member(s) for s in sinks]
        self.probe_interval = probe_interval
        self.stall_check = stall_check
        self.config_recheck = config_recheck
        self.clock = clock
        self.stalls = 0  # inserts given up on a server that stopped answering

    # ------------------------------------------------------------------ member states
    def down(self, m: Member, why: str, result: InsertResult | None = None) -> None:
        now = self.clock()
        if m.down_since is None:
            m.down_since, m.announce = now, True
        elif m.last_error != why:
            m.announce = m.announce or m.health is not Health.DOWN
        config = result is not None and result.error_class is ErrorClass.CONFIG
        m.health, m.last_error, m.last_result = Health.DOWN, why, result
        m.next_probe = now + (max(self.probe_interval, self.config_recheck) if config else self.probe_interval)
        m.failures += 1
        log.debug("ClickHouse endpoint %s is down: %s", m.endpoint, why)

    def took_insert(self, m: Member) -> None:
        """``m`` took an insert: it is UP, and an outage of it is over (logged once)."""
        if m.down_since is not None:
            log.info(
                "ClickHouse endpoint %s takes inserts again (down %.1f s)", m.endpoint, self.clock() - m.down_since
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

    def _probe_says(self, m: Member, evidence: bool) -> bool:
        """What a cheap probe of the DOWN endpoint ``m`` says of it, fitting what took it down. With
        ``evidence`` (the shipper's backoff), an endpoint that answered with an error of its own counts only
        once its probe shows more than that it answers (:meth:`.http.ClickHouseHttpSink.probe`)."""
        last = m.last_result
        if last is None or not (evidence or last.code in KEEPER_CODES):
            return m.sink.ping()
        return m.sink.probe(last)

    def probe_due(self, m: Member, evidence: bool = False) -> bool:
        """Whether ``m`` may be tried now: not DOWN, or DOWN with its probe due and answering (it is then
        UNKNOWN: detected before use)."""
        if m.health is not Health.DOWN:
            return True
        now = self.clock()
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

    def detect(self, m: Member) -> DetectResult:
        """``m``'s detection and dedup domain. With other endpoints to go to, a /ping first: a frozen server
        would hold each of the detection's queries for the read timeout."""
        answered = m.answered_at is not None and self.clock() - m.answered_at < self.probe_interval
        if len(self.members) > 1 and not answered and not m.sink.ping():
            r = InsertResult(
                False,
                ErrorClass.TRANSIENT,
                message=f"no answer to /ping within {PROBE_TIMEOUT_S:g} s",
                unsent=True,
            )
            raise SinkError(r, m.sink.explain(r))
        d = m.sink.detect()
        m.domain = self.domain_of(m)
        return d

    def config_problem(self, m: Member, why: str, result: InsertResult) -> None:
        if m.reported != why:
            log.error("ClickHouse endpoint %s is not usable: %s", m.endpoint, why)
            m.reported = why
        self.down(m, why, result)

    def ready(self, m: Member, profile: Profile | None) -> bool:
        """Usable now: not DOWN (or its probe answered), detected, and of the row ``profile`` (if known)."""
        if not self.probe_due(m):
            return False
        if m.detected:
            return True
        try:
            d = self.detect(m)
        except SinkError as exc:
            if exc.result.error_class is ErrorClass.CONFIG:
                self.config_problem(m, str(exc), exc.result)
            else:
                self.down(m, str(exc), exc.result)
            return False
        if profile is not None and d.profile is not profile:
            why = f"its table {m.sink.target} takes {d.profile.value} rows, the others {profile.value}"
            self.config_problem(m, why, InsertResult(False, ErrorClass.CONFIG, message=why))
            return False
        m.detected, m.reported, m.health = True, "", Health.UP
        return True

    def domain_of(self, m: Member, timeout: float | None = None) -> str:
        """The replicated table's ZooKeeper path (shared by the replicas of a shard), else the endpoint."""
        sql = (
            "SELECT zookeeper_path FROM system.replicas WHERE database = "
            f"{quote(m.sink.database)} AND table = {quote(m.sink.table)} FORMAT TabSeparated"
        )
        path = (m.sink.query(sql) if timeout is None else m.sink.query(sql, timeout=timeout)).strip()
        return f"zookeeper:{path}" if path else f"endpoint:{m.endpoint}"

    def summary(self, domain: str | None) -> str:
        """Every endpoint (of ``domain``) with its last error: the same words while nothing changes."""
        parts = [
            m.last_error or f"ClickHouse at {m.endpoint}: {m.health.value}" for m in self.members if m.in_domain(domain)
        ]
        pinned = (
            f" of {domain.partition(':')[2]} (a batch that may already be stored there waits for them)"
            if domain
            else ""
        )
        return f"{NO_ENDPOINT}{pinned}: " + "; ".join(parts)

    # ------------------------------------------------------------------ the stall watch
    def insert_watched(self, m: Member, body: bytes, token: str | None) -> InsertResult:
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

        started = self.clock()
        threading.Thread(target=run, name=f"insert {m.endpoint}", daemon=True).start()
        unanswered = 0
        while not done.wait(self.stall_check if unanswered == 0 else 0.0):  # after a miss: ping again at once
            # Two pings in a row without an answer: a server that is merely overloaded still answers one of
            # them, and failing over from it would add its load to another replica.
            unanswered = 0 if m.sink.ping() else unanswered + 1
            if unanswered >= STALL_PINGS and not done.is_set():
                m.sink.reset_session()  # the stalled request keeps the old one until its read timeout
                self.stalls += 1
                return _stalled(m.endpoint, self.clock() - started)
        if raised:
            raise raised[0]
        return box[0]


class DedupPins:
    """The dedup domain each maybe-stored batch is bound to until it is stored (the newest ``MAX_PINS``)."""

    def __init__(self) -> None:
        self._pins: OrderedDict[str, str] = OrderedDict()

    def pin(self, token: str | None, domain: str) -> None:
        if token is None:
            return
        self._pins[token] = domain
        self._pins.move_to_end(token)
        while len(self._pins) > MAX_PINS:
            self._pins.popitem(last=False)

    def domain(self, token: str | None) -> str | None:
        """The dedup domain a token (or the batch it is a bisection part of: ``<token>:<path>``) is bound to."""
        while token:
            if token in self._pins:
                return self._pins[token]
            token = token.rpartition(":")[0]
        return None

    def unpin(self, token: str | None) -> None:
        if token is not None:
            for t in [t for t in self._pins if t == token or t.startswith(token + ":")]:
                del self._pins[t]
