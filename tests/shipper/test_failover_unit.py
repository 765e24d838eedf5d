"""FailoverSink's logic with fake endpoints (no server): when it fails over, where a maybe-stored batch may go,
when it goes back, what it logs, and how it gives up an insert into a server that stopped answering.

Each fake member is a :class:`ClickHouseHttpSink` whose network calls (detect, query, insert, ping, the
read-only probe) are replaced by a small model of a server: alive or refusing connections, read-only
(keeper trouble), frozen (an insert that never returns and a ping that gets no answer), or answering the
next inserts with given results. Time is a fake clock, so probe intervals are exact.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

import pytest

from automagik_telemetry_agent.clickhouse.errors import ErrorClass
from automagik_telemetry_agent.clickhouse.failover import FailoverSink, Health
from automagik_telemetry_agent.clickhouse.http import ClickHouseHttpSink
from automagik_telemetry_agent.clickhouse.rows import Profile
from automagik_telemetry_agent.clickhouse.sink import Capabilities, DetectResult, InsertResult, SinkError

SHARD_1 = "/clickhouse/tables/1/db.traces_local"
SHARD_2 = "/clickhouse/tables/2/db.traces_local"
BODY = b'{"span_id":"a"}\n'
TOKEN = "agent-1:1-10:0badcafe"
FAILOVER_LOG = "automagik_telemetry_agent.clickhouse.failover"
NO_ENDPOINT = "no ClickHouse endpoint"  # how the message of an insert no endpoint took starts

OK = InsertResult(True, ErrorClass.OK, None, "", 200)
REFUSED = InsertResult(
    False,
    ErrorClass.TRANSIENT,
    None,
    "ConnectionError: Failed to establish a new connection: [Errno 111] Connection refused",
    None,
    unsent=True,
)
RESET = InsertResult(False, ErrorClass.TRANSIENT, None, "ConnectionError: ('Connection aborted.', ...)", None)
READ_ONLY = InsertResult(
    False, ErrorClass.TRANSIENT, 242, "Code: 242, e.displayText() = DB::Exception: Table is in readonly mode", 500
)
TOO_MANY_PARTS = InsertResult(
    False, ErrorClass.TRANSIENT, 252, "Code: 252, e.displayText() = DB::Exception: Too many parts (300)", 500
)
MEMORY = InsertResult(False, ErrorClass.TRANSIENT, 241, "Code: 241, e.displayText() = DB::Exception: Memory limit", 500)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeMember(ClickHouseHttpSink):
    """One endpoint: ``alive`` (else every call is refused), ``read_only`` (inserts get 242), ``frozen``
    (an insert blocks until ``thaw``, ping gets no answer), ``results`` (the next inserts' answers)."""

    def __init__(self, name: str, zookeeper_path: str = "", profile: Profile = Profile.LEGACY) -> None:
        super().__init__(f"http://{name}.test:8123", "db", "traces_local")
        self.name = name
        self.zookeeper_path = zookeeper_path
        self.table_profile = profile
        self.alive = True
        self.read_only = False
        self.frozen = False
        self.table_missing = False
        self.thawed = threading.Event()
        self.results: list[InsertResult] = []
        self.calls: list[str] = []
        self.stored: list[tuple[bytes, str | None]] = []

    def _refused(self) -> SinkError:
        return SinkError(REFUSED, f"ClickHouse at {self.endpoint} unavailable ({REFUSED.message})")

    def detect(self) -> DetectResult:
        self.calls.append("detect")
        if not self.alive:
            raise self._refused()
        if self.table_missing:
            r = InsertResult(False, ErrorClass.CONFIG, 60, "Code: 60, Table db.traces_local doesn't exist", 404)
            raise SinkError(r, f"table db.traces_local does not exist on ClickHouse at {self.endpoint}")
        self.capabilities = Capabilities("18.16.1", False, False)
        self.profile = self.table_profile
        return DetectResult(self.capabilities, {}, self.table_profile)

    def query(self, sql: str, timeout: float | None = None) -> str:
        self.calls.append("query")
        if not self.alive:
            raise self._refused()
        return self.zookeeper_path + "\n" if "system.replicas" in sql else ""

    def ping(self) -> bool:
        self.calls.append("ping")
        return self.alive and not self.frozen

    def replicas_writable(self) -> bool:
        self.calls.append("read-only flags")
        return self.alive and not self.frozen and not self.read_only

    def insert(self, body: bytes, token: str | None = None) -> InsertResult:
        self.calls.append("insert")
        if self.frozen:
            self.thawed.wait(10)
        if not self.alive:
            return REFUSED
        if self.read_only:
            return READ_ONLY
        if self.results:
            return self.results.pop(0)
        self.stored.append((body, token))
        return OK

    def count(self, call: str) -> int:
        return self.calls.count(call)


def failover(*members: FakeMember, clock: Clock | None = None, **kw: Any) -> FailoverSink:
    sink = FailoverSink(list(members), clock=clock or Clock(), **kw)
    sink.detect()
    return sink


def test_a_refused_connection_fails_over_within_the_same_insert(caplog: pytest.LogCaptureFixture) -> None:
    a, b = FakeMember("a", SHARD_1), FakeMember("b", SHARD_1)
    sink = failover(a, b)
    assert sink.endpoint == a.endpoint and sink.insert(BODY, TOKEN).ok and a.stored == [(BODY, TOKEN)]
    a.alive = False
    with caplog.at_level(logging.INFO, FAILOVER_LOG):
        r = sink.insert(b"second\n", "agent-1:11-20:0badcafe")
    assert r.ok and b.stored == [(b"second\n", "agent-1:11-20:0badcafe")]
    assert a.count("insert") == 2 and sink.endpoint == b.endpoint
    assert sink.health() == {a.endpoint: Health.DOWN, b.endpoint: Health.UP}
    assert sink.pinned_domain("agent-1:11-20:0badcafe") is None  # refused: that body went nowhere
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and a.endpoint in warnings[0] and b.endpoint in warnings[0], warnings
    # Later inserts go straight to b: a gets nothing, not even a ping, until its probe is due.
    a.calls.clear()
    for i in range(5):
        assert sink.insert(b"more\n", f"agent-1:{30 + i}-{30 + i}:0badcafe").ok
    assert a.calls == []


def test_a_refused_connection_pins_nothing_so_another_shard_may_take_it() -> None:
    a, b = FakeMember("a", SHARD_1), FakeMember("b", SHARD_2)
    sink = failover(a, b)
    a.alive = False
    assert sink.insert(BODY, TOKEN).ok and b.stored == [(BODY, TOKEN)]


def test_a_maybe_stored_batch_stays_in_its_dedup_domain_until_stored() -> None:
    """a and c are replicas of shard 1, b is shard 2. A reset after sending (a may have stored the body):
    the retry goes to c, which deduplicates it, never to b, where it would be a second copy."""
    clock = Clock()
    a, b, c = FakeMember("a", SHARD_1), FakeMember("b", SHARD_2), FakeMember("c", SHARD_1)
    sink = failover(a, b, c, clock=clock)
    a.results = [RESET]
    c.alive = False
    r = sink.insert(BODY, TOKEN)
    a.alive = False  # and then a is gone
    assert not r.ok and r.error_class is ErrorClass.TRANSIENT
    assert sink.pinned_domain(TOKEN) == f"zookeeper:{SHARD_1}"
    assert (BODY, TOKEN) not in b.stored and b.count("insert") == 0
    assert r.message.startswith(NO_ENDPOINT) and SHARD_1 in r.message
    assert a.endpoint in r.message and c.endpoint in r.message and b.endpoint not in r.message
    # While pinned, the batch and each part of its bisection wait for shard 1; other batches use b.
    for _ in range(3):
        clock.advance(0.3)
        assert not sink.insert(BODY, TOKEN).ok
        assert not sink.insert(BODY[:5], TOKEN + ":0").ok
        assert not sink.insert(BODY[5:], TOKEN + ":01").ok
    assert b.count("insert") == 0
    clock.advance(0.2)  # a's and c's probes are due
    for m in (a, b, c):
        m.calls.clear()
    assert sink.probe(r) is False  # b answering is no news for this batch: only a and c are probed
    assert (a.calls, b.calls, c.calls) == (["ping"], [], ["ping"])
    assert sink.insert(b"other\n", "agent-1:11-20:0badcafe").ok and b.stored == [(b"other\n", "agent-1:11-20:0badcafe")]
    # c comes back: the batch goes there, and is no longer pinned once stored.
    c.alive = True
    clock.advance(1.0)
    assert sink.probe(r) is True
    assert sink.insert(BODY, TOKEN).ok and c.stored[-1] == (BODY, TOKEN)
    assert sink.pinned_domain(TOKEN) is None and sink.pinned_domain(TOKEN + ":0") is None
    assert (BODY, TOKEN) not in b.stored


def test_a_maybe_stored_bisection_part_is_pinned_on_its_own() -> None:
    a, b, c = FakeMember("a", SHARD_1), FakeMember("b", SHARD_2), FakeMember("c", SHARD_1)
    sink = failover(a, b, c)
    a.results = [RESET]
    c.alive = False
    part = TOKEN + ":1"
    assert not sink.insert(BODY, part).ok
    assert sink.pinned_domain(part) == f"zookeeper:{SHARD_1}" and sink.pinned_domain(TOKEN) is None
    assert sink.pinned_domain(TOKEN + ":0") is None  # its sibling part was not sent: free to go anywhere


def test_too_many_parts_does_not_fail_over_and_its_probe_waits_the_backoff_out() -> None:
    a, b = FakeMember("a", SHARD_1), FakeMember("b", SHARD_1)
    sink = failover(a, b)
    a.results = [TOO_MANY_PARTS]
    a.calls.clear()
    r = sink.insert(BODY, TOKEN)
    assert r.code == 252 and not r.ok and b.count("insert") == 0  # the whole shard's table is behind
    assert sink.health()[a.endpoint] is Health.UP and sink.endpoint == a.endpoint
    assert sink.probe(r) is False and a.calls == ["insert"]
    assert "code 252" in sink.explain(r) and a.endpoint in sink.explain(r)


def test_an_answered_server_error_fails_over_but_a_ping_is_no_evidence_it_is_over() -> None:
    clock = Clock()
    a, b = FakeMember("a", SHARD_1), FakeMember("b", SHARD_1)
    sink = failover(a, b, clock=clock)
    a.results = [MEMORY, MEMORY]
    b.results = [MEMORY]
    r = sink.insert(BODY, TOKEN)
    assert not r.ok and r.code == 241 and a.endpoint in r.message and b.endpoint in r.message
    clock.advance(1.0)
    a.calls.clear()
    b.calls.clear()
    assert sink.probe(r) is False  # both answered /ping all along: retry after the backoff, not each second
    assert a.calls == b.calls == []
    clock.advance(1.0)
    assert sink.insert(BODY, TOKEN).ok  # after the backoff, each is tried again (a: ping first)


def test_goes_back_to_the_preferred_endpoint_once_its_probe_answers() -> None:
    clock = Clock()
    a, b = FakeMember("a", SHARD_1), FakeMember("b", SHARD_1)
    sink = failover(a, b, clock=clock, probe_interval=1.0)
    a.alive = False
    assert sink.insert(BODY, "t:1-1:0").ok and sink.endpoint == b.endpoint
    pings = a.count("ping")
    for i in range(10):  # 0.5 s of inserts: a's probe is not due yet
        clock.advance(0.05)
        assert sink.insert(BODY, f"t:{i + 2}-{i + 2}:0").ok
    assert a.count("ping") == pings and sink.endpoint == b.endpoint
    a.alive = True  # back, but nobody knows until its probe
    clock.advance(0.3)
    assert sink.insert(BODY, "t:20-20:0").ok and sink.endpoint == b.endpoint
    clock.advance(0.3)  # 1.1 s since it went down: probed (once), detected, taken back
    assert sink.insert(BODY, "t:21-21:0").ok
    assert sink.endpoint == a.endpoint and a.stored[-1] == (BODY, "t:21-21:0")
    assert a.count("ping") == pings + 1
    assert sink.health() == {a.endpoint: Health.UP, b.endpoint: Health.UP}


def test_a_down_endpoint_is_probed_at_most_once_per_interval() -> None:
    clock = Clock()
    a, b = FakeMember("a"), FakeMember("b")
    sink = failover(a, b, clock=clock, probe_interval=1.0)
    a.alive = b.alive = False
    r = sink.insert(BODY, TOKEN)
    assert a.calls == ["ping", "detect", "query", "insert"] and b.calls == ["ping"]  # b: no answer, not detected
    a.calls.clear()
    b.calls.clear()
    for _ in range(100):  # the shipper's backoff probing and retrying as fast as it likes for 10 s
        clock.advance(0.1)
        sink.probe(r)
        sink.insert(BODY, TOKEN)
        with pytest.raises(SinkError):
            sink.detect()
    for m in (a, b):  # never tried again while its probe says it is down
        assert m.count("ping") <= 10 and set(m.calls) == {"ping"}, m.calls


def test_a_member_whose_table_takes_another_row_profile_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    a, b = FakeMember("a", SHARD_1), FakeMember("b", SHARD_1, profile=Profile.MODERN)
    sink = failover(a, b, clock=clock)
    assert sink.profile is Profile.LEGACY
    a.alive = False
    with caplog.at_level(logging.INFO, FAILOVER_LOG):
        for _ in range(100):  # 100 s of retries
            r = sink.insert(BODY, TOKEN)
            assert not r.ok and r.error_class is ErrorClass.TRANSIENT
            clock.advance(1.0)
    assert b.count("insert") == 0 and b.count("detect") <= 5  # checked again every config_recheck (30 s)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "modern" in errors[0] and b.endpoint in errors[0], errors
    a.alive = True
    clock.advance(1.0)
    assert sink.insert(BODY, TOKEN).ok and a.stored[-1] == (BODY, TOKEN)


def test_all_endpoints_down_is_one_transient_result_naming_every_endpoint(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    a, b, c = FakeMember("a"), FakeMember("b"), FakeMember("c")
    sink = failover(a, b, c, clock=clock)
    a.alive = b.alive = c.alive = False
    messages = set()
    with caplog.at_level(logging.INFO, FAILOVER_LOG):
        for _ in range(20):
            r = sink.insert(BODY, TOKEN)
            assert not r.ok and r.error_class is ErrorClass.TRANSIENT and r.unsent
            messages.add(sink.explain(r))
            clock.advance(0.5)
    (message,) = messages  # the same words on every attempt: the shipper logs it once
    assert message.startswith(NO_ENDPOINT)
    for m in (a, b, c):
        assert m.endpoint in message
    assert "Connection refused" in message
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # that one line is the shipper's
    with pytest.raises(SinkError) as raised:
        sink.detect()
    assert raised.value.result.error_class is ErrorClass.TRANSIENT and str(raised.value) == message


def test_a_table_missing_everywhere_is_a_configuration_error_missing_on_one_is_failed_over() -> None:
    a, b = FakeMember("a", SHARD_1), FakeMember("b", SHARD_1)
    a.table_missing = b.table_missing = True
    sink = FailoverSink([a, b], clock=Clock())
    with pytest.raises(SinkError) as raised:
        sink.detect()
    assert raised.value.result.error_class is ErrorClass.CONFIG  # the shipper says what to fix, retries slowly
    b.table_missing = False
    sink = FailoverSink([a, b], clock=Clock())
    sink.detect()
    assert sink.endpoint == b.endpoint and sink.insert(BODY, TOKEN).ok


def test_a_frozen_endpoint_is_not_detected_it_fails_its_ping() -> None:
    """Detecting a frozen server would hold each query for the read timeout (60 s): a /ping comes first."""
    a, b = FakeMember("a", SHARD_1), FakeMember("b", SHARD_1)
    a.frozen = True
    sink = FailoverSink([a, b], clock=Clock())
    sink.detect()
    assert sink.endpoint == b.endpoint and a.calls == ["ping"]
    assert sink.health()[a.endpoint] is Health.DOWN


def test_after_a_keeper_error_the_probe_reads_the_read_only_flags_and_no_insert_is_sent() -> None:
    """ZooKeeper down: every replica answers /ping but its table is read-only (242). The probe asks the
    read-only flags, so no batch is sent until they clear, however often the shipper probes."""
    clock = Clock()
    a, b = FakeMember("a", SHARD_1), FakeMember("b", SHARD_1)
    sink = failover(a, b, clock=clock)
    a.read_only = b.read_only = True
    r = sink.insert(BODY, TOKEN)
    assert r.code == 242 and a.endpoint in r.message and b.endpoint in r.message
    a.calls.clear()
    b.calls.clear()
    for _ in range(30):
        clock.advance(0.5)
        assert sink.probe(r) is False
        assert not sink.insert(BODY, TOKEN).ok
    assert set(a.calls) == set(b.calls) == {"read-only flags"}  # no insert, no ping
    assert 10 <= a.count("read-only flags") <= 16
    b.read_only = False
    clock.advance(1.0)
    assert sink.probe(r) is True
    assert sink.insert(BODY, TOKEN).ok and b.stored == [(BODY, TOKEN)]


def test_a_stalled_insert_is_given_up_when_ping_gets_no_answer() -> None:
    a, b = FakeMember("a", SHARD_1), FakeMember("b", SHARD_1)
    sink = FailoverSink([a, b], stall_check=0.05)
    sink.detect()
    old_session = a.session
    a.frozen = True
    started = time.monotonic()
    r = sink.insert(BODY, TOKEN)
    elapsed = time.monotonic() - started
    assert r.ok and b.stored == [(BODY, TOKEN)] and elapsed < 1.0, elapsed
    assert sink.health()[a.endpoint] is Health.DOWN and sink.stalls == 1
    assert a.session is not old_session  # the given-up request keeps the old session
    assert "stopped answering" in sink.members[0].last_error
    assert sink.pinned_domain(TOKEN) is None  # pinned to shard 1 by the stall, unpinned once b stored it
    a.thawed.set()  # the abandoned request returns; nothing waits for it


def test_a_stalled_insert_stays_in_its_dedup_domain() -> None:
    a, b, c = FakeMember("a", SHARD_1), FakeMember("b", SHARD_2), FakeMember("c", SHARD_1)
    sink = FailoverSink([a, b, c], stall_check=0.05)
    sink.detect()
    a.frozen = True
    assert sink.insert(BODY, TOKEN).ok
    assert c.stored == [(BODY, TOKEN)] and b.stored == []
    a.thawed.set()


def test_a_slow_insert_of_a_server_that_answers_ping_is_waited_for() -> None:
    a, b = FakeMember("a", SHARD_1), FakeMember("b", SHARD_1)
    sink = FailoverSink([a, b], stall_check=0.05)
    sink.detect()
    a.frozen = True
    a.ping = lambda: True  # type: ignore[method-assign]  # busy, not frozen: it answers /ping
    threading.Timer(0.4, a.thawed.set).start()
    r = sink.insert(BODY, TOKEN)
    assert r.ok and a.stored == [(BODY, TOKEN)] and b.stored == [] and sink.stalls == 0


def test_one_unanswered_ping_of_an_overloaded_server_does_not_give_its_insert_up() -> None:
    """Only two unanswered pings in a row are a stall: a busy server that misses one is waited for."""
    a, b = FakeMember("a", SHARD_1), FakeMember("b", SHARD_1)
    sink = FailoverSink([a, b], stall_check=0.05)
    sink.detect()
    answers = iter([False, True, False, True, False, True])
    a.frozen = True
    a.ping = lambda: next(answers, True)  # type: ignore[method-assign]
    threading.Timer(0.4, a.thawed.set).start()
    r = sink.insert(BODY, TOKEN)
    assert r.ok and a.stored == [(BODY, TOKEN)] and b.stored == [] and sink.stalls == 0


def test_the_shard_read_by_the_insert_policy_is_every_replica_of_the_active_ones_domain() -> None:
    """Endpoints never used yet (UNKNOWN) of the active endpoint's shard are read too; other shards and
    endpoints that are down are not."""
    a, b, c, d = (FakeMember(n, path) for n, path in (("a", SHARD_1), ("b", SHARD_2), ("c", SHARD_1), ("d", SHARD_1)))
    sink = failover(a, b, c, d)
    d.alive = False
    assert sink.health()[c.endpoint] is Health.UNKNOWN
    assert sink.shard_sinks() == [a, c]  # d does not answer: left out of this reading


def test_the_http_probe_fits_the_failure() -> None:
    """ClickHouseHttpSink.probe: /ping after no answer; the read-only flags after keeper errors; nothing
    after an error the server answered with (it was there: /ping says nothing new)."""
    m = FakeMember("a")
    assert m.probe(REFUSED) and m.probe(RESET) and m.calls == ["ping", "ping"]
    m.calls.clear()
    for code in (225, 242, 319, 999):
        assert m.probe(InsertResult(False, ErrorClass.TRANSIENT, code, "", 500))
    assert m.calls == ["read-only flags"] * 4
    m.calls.clear()
    assert not m.probe(TOO_MANY_PARTS) and not m.probe(MEMORY) and m.calls == []
    assert m.probe(InsertResult(False, ErrorClass.TRANSIENT, None, "not ClickHouse: HTTP 503", 503))  # a proxy
    assert m.calls == ["ping"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_refused_connection_is_unsent_and_a_reset_after_sending_may_be_stored() -> None:
    """errors._never_sent against real sockets: refused is surely not stored; a server that reads the
    request and drops the connection may have stored it."""
    refused = ClickHouseHttpSink(f"http://127.0.0.1:{_closed_port()}", "db", "t", connect_timeout=1, read_timeout=1)
    r = refused.insert(BODY)
    assert r.unsent and not r.maybe_stored and not refused.ping()

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)

    def drop() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.close()

    t = threading.Thread(target=drop, daemon=True)
    t.start()
    try:
        dropped = ClickHouseHttpSink(
            f"http://127.0.0.1:{listener.getsockname()[1]}", "db", "t", connect_timeout=1, read_timeout=2
        )
        r = dropped.insert(BODY)
    finally:
        t.join(5)
        listener.close()
    assert r.error_class is ErrorClass.TRANSIENT and r.status is None
    assert not r.unsent and r.maybe_stored
