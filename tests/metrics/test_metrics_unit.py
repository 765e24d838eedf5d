"""Pure logic of the metrics: merging child reports, histograms, sample keys, backlog marks, listen parsing."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from automagik_telemetry_agent.config import ConfigError, load_config, parse_listen
from automagik_telemetry_agent.metrics.catalogue import CATALOGUE, P
from automagik_telemetry_agent.metrics.exposition import AgentMetrics, MetricsListenError, merge_histograms
from automagik_telemetry_agent.metrics.histogram import LatencyHistogram
from automagik_telemetry_agent.metrics.samples import parse_sample, sample
from automagik_telemetry_agent.wal.backlog import MAX_MARKS, BacklogMarks

RECORDS = P + "ingest_records_received_total"
REJECTED_BAD_MAGIC = sample(P + "ingest_rejected_messages_total", reason="bad_magic")
FSYNC = P + "wal_fsync_duration_seconds"
CLIENT_QUEUE_FULL = sample(P + "client_dropped_spans_total", reason="queue_full")
LAST_SHIP = P + "shipper_last_success_timestamp_seconds"


def report(counters: dict | None = None, **kw: dict) -> dict:
    return {
        "counters": counters or {},
        "gauges": kw.get("gauges", {}),
        "histograms": kw.get("histograms", {}),
        "info": kw.get("info", {}),
        "max_counters": kw.get("max_counters", {}),
    }


def hist(*values: float, bounds: tuple[float, ...] = (0.01, 0.1, 1.0)) -> dict:
    h = LatencyHistogram(bounds)
    for v in values:
        h.observe(v)
    return h.to_dict()


# ---------------------------------------------------------------------------- monotonic merging
def test_counters_stay_monotonic_across_a_child_restart() -> None:
    m = AgentMetrics(version="test")
    m.observe("ingest", 100, report({RECORDS: 5, REJECTED_BAD_MAGIC: 1}))
    m.observe("ingest", 100, report({RECORDS: 9, REJECTED_BAD_MAGIC: 2}))
    # The child dies and its replacement starts counting from zero.
    m.observe("ingest", 200, report({RECORDS: 3, REJECTED_BAD_MAGIC: 0}))
    assert m.merged()["counters"] == {RECORDS: 12, REJECTED_BAD_MAGIC: 2}
    m.observe("ingest", 200, report({RECORDS: 4}))
    m.observe("ingest", 300, report({RECORDS: 1}))
    assert m.merged()["counters"][RECORDS] == 9 + 4 + 1


def test_late_report_of_a_replaced_pid_is_ignored() -> None:
    m = AgentMetrics(version="test")
    m.observe("shipper", 1, report({P + "shipper_rows_total": 10}))
    m.observe("shipper", 2, report({P + "shipper_rows_total": 5}))
    m.observe("shipper", 1, report({P + "shipper_rows_total": 11}))  # delivered late: already folded
    assert m.merged()["counters"][P + "shipper_rows_total"] == 15


def test_a_counter_never_goes_down_within_one_pid() -> None:
    """Ingest takes back a count when a WAL write is rolled back; the exposed counter must not dip."""
    m = AgentMetrics(version="test")
    m.observe("ingest", 7, report({RECORDS: 10}))
    m.observe("ingest", 7, report({RECORDS: 9}))
    assert m.merged()["counters"][RECORDS] == 10
    m.observe("ingest", 7, report({RECORDS: 12}))
    assert m.merged()["counters"][RECORDS] == 12


def test_histograms_add_bucket_by_bucket_across_a_restart() -> None:
    m = AgentMetrics(version="test")
    m.observe("ingest", 1, report(histograms={FSYNC: hist(0.005, 0.05, 5.0)}))
    m.observe("ingest", 2, report(histograms={FSYNC: hist(0.005, 0.5)}))
    merged = m.merged()["histograms"][FSYNC]
    assert merged["counts"] == [2, 1, 1, 1]
    assert merged["sum"] == pytest.approx(0.005 + 0.05 + 5.0 + 0.005 + 0.5)


def test_histograms_with_different_bounds_are_not_mixed() -> None:
    a, b = hist(0.5), hist(0.5, bounds=(0.2, 2.0))
    assert merge_histograms(a, b) == b


def test_client_counters_re_reported_after_an_ingest_restart_are_not_double_counted() -> None:
    """Clients send cumulative counts; after ingest restarts they report the same totals again."""
    m = AgentMetrics(version="test")
    m.observe("ingest", 1, report(max_counters={CLIENT_QUEUE_FULL: 40}))
    m.observe("ingest", 2, report(max_counters={CLIENT_QUEUE_FULL: 0}))  # nobody has reported yet
    assert m.merged()["max_counters"][CLIENT_QUEUE_FULL] == 40
    m.observe("ingest", 2, report(max_counters={CLIENT_QUEUE_FULL: 40}))  # the same client re-reports
    assert m.merged()["max_counters"][CLIENT_QUEUE_FULL] == 40
    m.observe("ingest", 2, report(max_counters={CLIENT_QUEUE_FULL: 45}))
    assert m.merged()["max_counters"][CLIENT_QUEUE_FULL] == 45
    m.observe("ingest", 3, report(max_counters={CLIENT_QUEUE_FULL: 45}))  # and once more
    assert m.merged()["max_counters"][CLIENT_QUEUE_FULL] == 45


def test_gauges_are_taken_as_reported_but_the_last_ship_time_survives_a_restart() -> None:
    m = AgentMetrics(version="test")
    m.observe("shipper", 1, report(gauges={LAST_SHIP: 1000.0, P + "shipper_consecutive_failures": 3}))
    m.observe("shipper", 2, report(gauges={P + "shipper_consecutive_failures": 0}))
    gauges = m.merged()["gauges"]
    assert gauges[LAST_SHIP] == 1000.0 and gauges[P + "shipper_consecutive_failures"] == 0


def test_malformed_report_entries_are_ignored() -> None:
    m = AgentMetrics(version="test")
    m.observe(
        "ingest",
        1,
        {
            "counters": {RECORDS: "x", P + "a_total": True, P + "b_total": float("nan"), P + "ok_total": 3},
            "histograms": {FSYNC: {"bounds": [1.0], "counts": [1], "sum": 1.0}},
            "gauges": None,
            "info": {"agent_id": 5},
        },
    )
    merged = m.merged()
    assert merged["counters"] == {P + "ok_total": 3} and merged["histograms"] == {} and merged["info"] == {}


def test_child_restarts_are_counted_per_child() -> None:
    m = AgentMetrics(version="test")
    m.child_restarted("shipper")
    m.child_restarted("shipper")
    m.observe("ingest", 1, report())
    assert m.summary()["child_restarts"] == {"shipper": 2, "ingest": 0}


# ---------------------------------------------------------------------------- histogram class
def test_latency_histogram_buckets_are_inclusive_upper_bounds() -> None:
    h = LatencyHistogram((0.1, 1.0))
    for v in (0.0, 0.1, 0.10001, 1.0, 7.0):
        h.observe(v)
    assert h.to_dict() == {"bounds": [0.1, 1.0], "counts": [2, 2, 1], "sum": pytest.approx(8.20001)}
    assert h.count == 5


def test_latency_histogram_refuses_unsorted_bounds() -> None:
    with pytest.raises(ValueError):
        LatencyHistogram((1.0, 0.5))


# ---------------------------------------------------------------------------- sample keys
@given(st.text(max_size=30), st.text(max_size=30))
def test_sample_keys_round_trip_any_label_value(a: str, b: str) -> None:
    key = sample(P + "client_reported_total", counter=a, other=b)
    assert parse_sample(key) == (P + "client_reported_total", {"counter": a, "other": b})


def test_exposition_escapes_hostile_label_values() -> None:
    m = AgentMetrics(version="test")
    weird = 'a"b\\c\nd}{x="y"'
    m.observe("ingest", 1, report(max_counters={sample(P + "client_reported_total", counter=weird): 2}))
    server = m.serve("127.0.0.1:0")
    assert server is not None
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).read().decode()
    finally:
        m.close()
    samples = {
        s.labels.get("counter"): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == P + "client_reported_total"
    }
    assert samples == {weird: 2}


# ---------------------------------------------------------------------------- exposition
def test_every_exposed_metric_is_in_the_catalogue_and_follows_the_naming_guide() -> None:
    m = AgentMetrics(version="test")
    for name, d in CATALOGUE.items():
        labels = {label: "x" for label in d.labels}
        if d.kind == "histogram":
            m.observe("a", 1, report(histograms={name: hist(0.5)}))
        elif name in (P + "up", P + "build_info", P + "child_up", P + "child_restarts_total", P + "agent_info"):
            continue
        elif d.kind == "counter":
            assert name.endswith("_total"), name
            m.observe(name, 1, report({sample(name, **labels): 1}))
        else:
            assert not name.endswith("_total"), name
            m.observe(name, 1, report(gauges={sample(name, **labels): 1}))
    m.observe("ingest", 1, report(info={"agent_id": "abc"}))
    text = m.exposition()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    exposed = {(f.name + "_total" if f.type == "counter" else f.name) for f in families.values()}
    assert exposed == set(CATALOGUE)
    for f in families.values():
        assert f.name.startswith(P)
        assert f.type == CATALOGUE[f.name + "_total" if f.type == "counter" else f.name].kind
        assert not any(word in f.name for word in ("_ms", "_milliseconds", "_kb", "_mb")), f.name


# ---------------------------------------------------------------------------- endpoint and its setting
def test_serve_with_an_empty_listen_address_serves_nothing() -> None:
    m = AgentMetrics(version="test")
    assert m.serve("") is None and m.summary()["metrics_port"] is None


def test_serve_reports_a_busy_port_as_one_clear_config_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(MetricsListenError) as err:
            AgentMetrics(version="test").serve(f"127.0.0.1:{port}")
    assert isinstance(err.value, ConfigError)
    message = str(err.value)
    assert f"127.0.0.1:{port}" in message and "--metrics-listen" in message and "\n" not in message


def test_serve_on_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    m = AgentMetrics(version="test")
    try:
        server = m.serve("[::1]:0")
    except MetricsListenError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    assert server is not None
    try:
        body = urllib.request.urlopen(f"http://[::1]:{server.port}/metrics", timeout=5).read().decode()
        assert f"{P}up 1.0" in body
    finally:
        m.close()


@pytest.mark.parametrize("value", ["127.0.0.1:9479", "[::1]:9479", "localhost:0", "0.0.0.0:80", ""])
def test_metrics_listen_accepts_host_port(value: str) -> None:
    assert parse_listen(value) == value


@pytest.mark.parametrize("value", ["9479", "127.0.0.1", "::1:9479", "127.0.0.1:70000", "host name:1", "[::1]"])
def test_metrics_listen_refuses_what_is_not_host_port(value: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, {"metrics.listen": value}, env={})
    assert str(err.value).startswith("--metrics-listen: ") and "host:port" in str(err.value)


# ---------------------------------------------------------------------------- WAL backlog marks
def test_backlog_marks_find_the_newest_mark_at_or_before_a_record() -> None:
    marks = BacklogMarks()
    marks.mark(1, 100.0, 1, 40)
    marks.wrote(1, 1, 40, 500, now=100.2)  # no mark: too soon, too few bytes
    marks.wrote(20, 1, 540, 500, now=101.5)  # a second passed: mark
    marks.wrote(40, 1, 1040, 2 * 1024 * 1024, now=101.6)  # no mark: the bytes before it are few
    marks.wrote(60, 1, 1040 + 2 * 1024 * 1024, 10, now=101.7)  # 2 MiB since the last mark: mark
    assert [m.seq for m in marks._marks] == [1, 20, 60]
    assert marks.find(19).seq == 1 and marks.find(20).seq == 20 and marks.find(59).seq == 20
    assert marks.find(70).seq == 60 and len(marks) == 1  # marks before it are forgotten


def test_backlog_marks_after_a_rolled_back_write_replace_later_marks() -> None:
    marks = BacklogMarks()
    marks.mark(1, 100.0, 1, 40)
    marks.mark(10, 102.0, 1, 900)
    marks.mark(10, 103.0, 1, 900)  # the same numbers given again after a rollback
    assert [(m.seq, m.time) for m in marks._marks] == [(1, 100.0), (10, 103.0)]


def test_backlog_marks_thinning_keeps_every_segment_start() -> None:
    marks = BacklogMarks()
    for i in range(MAX_MARKS + 1):
        seq = i + 1
        segment = (i // 999) * 999 + 1  # segment starts at odd and even positions
        marks.mark(seq, float(i), segment, 40)
    kept = list(marks._marks)
    assert len(kept) <= MAX_MARKS // 2 + 200
    assert {m.seq for m in kept} >= {i * 999 + 1 for i in range(MAX_MARKS // 999 + 1)}
    assert kept[-1].seq == MAX_MARKS + 1
