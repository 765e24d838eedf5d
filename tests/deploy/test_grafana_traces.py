"""The traces dashboard's SQL runs, and answers correctly, on both schema profiles.

Every panel query and variable query of deploy/grafana/dashboards/automagik-telemetry-traces.json is
interpolated the way Grafana and the ClickHouse plugin would (deploy_helpers.interpolate) and run against

* the legacy profile on a real ClickHouse 18.16 (the ``clickhouse`` fixture), and
* the modern profile on chDB 26.9 (``chdb_session_factory``),

each holding the same known spans (rows made by the shipper's own transform). Results are checked against
what the spans imply: counts, rates, error ratios, the top errors, the spans of one trace, the time range
and the variable filters (including a service name with a quote in it).
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from automagik_telemetry_agent.clickhouse.rows import Profile, parse_resource, transform_span
from automagik_telemetry_agent.clickhouse.schema import apply

from .deploy_helpers import ALL, TRACES_DASHBOARD, Query, dashboard_queries, interpolate, iter_panels, load_json

T0 = 1_714_564_800  # 2024-05-01 12:00:00 UTC: the dashboard's time range is [T0, T0 + 3600]
T1 = T0 + 3600
INTERVAL = 600
QUOTED = "it's-svc"  # a service name with a quote: ${service:singlequote} must escape it


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace: int
    span: int
    parent: int | None
    start: float  # seconds after T0
    duration_ms: float
    error: str | None = None

    @property
    def trace_id(self) -> str:
        return f"{self.trace:032x}"

    @property
    def span_id(self) -> str:
        return f"{self.span:016x}"


def make_spans() -> list[Span]:
    spans: list[Span] = []
    n = 0

    def add(
        service: str,
        name: str,
        start: float,
        duration: float,
        error: str | None = None,
        trace: int | None = None,
        parent: int | None = None,
    ) -> Span:
        nonlocal n
        n += 1
        s = Span(service, name, trace if trace is not None else 1000 + n, n, parent, start, duration, error)
        spans.append(s)
        return s

    errors = ["card declined"] * 3 + ["timeout"] * 2
    for i in range(20):  # 5 errors among 20 checkout requests, spread over the hour
        add("checkout", "POST /cart", 30 + i * 170, 10.0 + i, errors[i] if i < len(errors) else None)
    for i in range(10):
        add("checkout", "db.query", 45 + i * 330, 1.0 + i / 10)
    for i in range(30):
        add("search", "GET /search", 5 + i * 115, 5.0 + (i % 7), "index missing" if i == 29 else None)
    add(QUOTED, "odd", 1800, 2.0)
    # One trace across two services (the trace lookup), and a span outside the time range.
    root = add("checkout", "POST /cart", 2000, 40.0, trace=42)
    add("checkout", "db.query", 2000.010, 3.0, trace=42, parent=root.span)
    add("search", "GET /search", 2000.020, 7.0, trace=42, parent=root.span)
    add("old-svc", "old", -7200, 1.0)
    return spans


SPANS = make_spans()
IN_RANGE = [s for s in SPANS if 0 <= s.start <= 3600]
TRACE = 42


def rows(profile: Profile) -> bytes:
    """JSONEachRow body of every span, made by the shipper's transform for ``profile``."""
    out = []
    for s in SPANS:
        resource = parse_resource(
            orjson.dumps({"attributes": [{"key": "service.name", "value": {"stringValue": s.service}}]})
        )
        start_ns = (T0 * 10**9) + round(s.start * 1e9)
        span: dict[str, Any] = {
            "traceId": s.trace_id,
            "spanId": s.span_id,
            "name": s.name,
            "kind": 2,
            "startTimeUnixNano": str(start_ns),
            "endTimeUnixNano": str(start_ns + round(s.duration_ms * 1e6)),
        }
        if s.parent is not None:
            span["parentSpanId"] = f"{s.parent:016x}"
        if s.error is not None:
            span["status"] = {"code": 2, "message": s.error}
        out.append(orjson.dumps(transform_span(orjson.dumps(span), resource, profile)))
    return b"\n".join(out) + b"\n"


# ------------------------------------------------------------------------------------------------ engines
@dataclass
class Engine:
    name: str
    database: str
    run: Callable[[str], list[dict[str, Any]]]  # SQL -> rows (JSONEachRow)


def _parse(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def legacy(clickhouse: Any) -> Iterator[Engine]:
    database = f"deploy_{uuid.uuid4().hex[:10]}"
    apply(clickhouse.query, Profile.LEGACY, database, "traces", 0)
    clickhouse.query(f"CREATE TABLE {database}.empty AS {database}.traces")  # one migrated table per database
    clickhouse.query(f"INSERT INTO {database}.traces FORMAT JSONEachRow", data=rows(Profile.LEGACY))
    try:
        yield Engine("legacy 18.16", database, lambda sql: _parse(clickhouse.query(sql + "\nFORMAT JSONEachRow")))
    finally:
        clickhouse.ensure_running()
        clickhouse.query(f"DROP DATABASE IF EXISTS {database}")


@pytest.fixture(scope="module")
def modern(chdb_session_factory: Callable[..., Any]) -> Engine:
    session = chdb_session_factory("deploy-dashboard")

    def execute(sql: str) -> str:
        return str(session.query(sql))

    apply(execute, Profile.MODERN, "telemetry", "traces", 0)
    execute("CREATE TABLE telemetry.empty AS telemetry.traces")
    execute("INSERT INTO telemetry.traces FORMAT JSONEachRow\n" + rows(Profile.MODERN).decode())
    return Engine("modern chDB", "telemetry", lambda sql: _parse(execute(sql + "\nFORMAT JSONEachRow")))


@pytest.fixture(
    params=[pytest.param("legacy", marks=pytest.mark.clickhouse), pytest.param("modern", marks=pytest.mark.chdb)]
)
def engine(request: pytest.FixtureRequest) -> Engine:
    return request.getfixturevalue(request.param)


# -------------------------------------------------------------------------------------------------- tests
DASHBOARD = load_json(TRACES_DASHBOARD)
QUERIES = dashboard_queries(DASHBOARD, "rawSql")


def panel_query(title: str) -> Query:
    (query,) = [q for q in QUERIES if q.panel is not None and q.panel["title"] == title]
    return query


def run(engine: Engine, query: Query, table: str = "traces", **values: Any) -> list[dict[str, Any]]:
    settings = {
        "datasource": "ch",
        "database": engine.database,
        "table": table,
        "service": ALL,
        "span_name": ALL,
        "trace_id": f"{TRACE:032x}",
        **values,
    }
    return engine.run(interpolate(query.text, DASHBOARD, settings, T0, T1, INTERVAL))


def number(value: Any) -> float:
    return float(value)  # 64-bit integers arrive quoted in JSON


def test_dashboard_targets_use_the_clickhouse_plugin_through_the_datasource_variable() -> None:
    assert QUERIES, "no SQL found in the traces dashboard"
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "grafana-clickhouse-datasource"
    for panel in iter_panels(DASHBOARD):
        if panel["type"] == "row":
            continue
        for thing in (panel, *panel["targets"]):
            assert thing["datasource"] == {"type": "grafana-clickhouse-datasource", "uid": "${datasource}"}, panel[
                "title"
            ]
        for target in panel["targets"]:
            # format: 0 = time series, 1 = table (the plugin's formats); time series need a `time` column.
            assert target["format"] == (0 if panel["type"] == "timeseries" else 1), panel["title"]
            assert target["editorType"] == "sql"
    titles = {p["title"] for p in iter_panels(DASHBOARD)}
    assert {
        "Request rate by service",
        "Error rate by service",
        "Duration p50 / p95 / p99",
        "Top errors",
        "Trace lookup",
        "Latency and errors by service and span name",
    } <= titles


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: q.where)
@pytest.mark.parametrize("selection", ["all", "filtered"])
def test_every_query_runs_on_both_profiles_and_on_an_empty_table(engine: Engine, query: Query, selection: str) -> None:
    values = {} if selection == "all" else {"service": ["checkout", QUOTED], "span_name": ["POST /cart", "odd"]}
    got = run(engine, query, **values)
    assert got, f"{query.where} returned nothing on {engine.name}"
    run(engine, query, table="empty", **values)  # no data must not be an error (no division error, no NaN crash)
    if query.target is not None and query.target["format"] == 0:
        for row in got:
            assert "time" in row, f"{query.where}: a time series needs a `time` column"


def test_request_rate_by_service_adds_up_to_the_spans_in_range(engine: Engine) -> None:
    got = run(engine, panel_query("Request rate by service"))
    per_service: Counter[str] = Counter()
    for row in got:
        per_service[row["service_name"]] += round(number(row["spans_per_second"]) * INTERVAL)
    assert per_service == Counter(s.service for s in IN_RANGE)
    assert "old-svc" not in per_service  # outside the time range


def test_time_buckets_follow_the_interval(engine: Engine) -> None:
    got = run(engine, panel_query("Request rate by service"), service=["search"])
    times = sorted({row["time"] for row in got})
    assert times == [f"2024-05-01 {12 + m // 60:02d}:{m % 60:02d}:00" for m in range(0, 60, 10)], times


def test_error_rate_and_overview_match_the_spans(engine: Engine) -> None:
    errors = [s for s in IN_RANGE if s.error]
    (row,) = run(engine, panel_query("Error ratio"))
    assert number(row["error_ratio"]) == pytest.approx(len(errors) / len(IN_RANGE))
    (row,) = run(engine, panel_query("Spans"), service=["checkout"])
    assert number(row["spans"]) == sum(s.service == "checkout" for s in IN_RANGE)
    by_bucket = run(engine, panel_query("Error rate by service"), service=["search"])
    buckets: dict[int, list[Span]] = {}
    for s in IN_RANGE:
        if s.service == "search":
            buckets.setdefault(int(s.start) // INTERVAL, []).append(s)
    expected = [sum(bool(s.error) for s in b) / len(b) for _, b in sorted(buckets.items())]
    assert expected[-1] > 0  # the data has an error bucket to find
    assert [number(r["error_ratio"]) for r in by_bucket] == pytest.approx(expected)


def test_latency_table_by_service_and_span_name(engine: Engine) -> None:
    got = run(engine, panel_query("Latency and errors by service and span name"))
    table = {(r["service_name"], r["span_name"]): r for r in got}
    expected = Counter((s.service, s.name) for s in IN_RANGE)
    assert {k: number(r["spans"]) for k, r in table.items()} == expected
    cart = table[("checkout", "POST /cart")]
    durations = sorted(s.duration_ms for s in IN_RANGE if (s.service, s.name) == ("checkout", "POST /cart"))
    assert number(cart["errors"]) == 5
    assert number(cart["max_ms"]) == pytest.approx(durations[-1])
    assert durations[0] <= number(cart["p50_ms"]) <= number(cart["p95_ms"]) <= number(cart["p99_ms"]) <= durations[-1]
    assert got[0]["span_name"] == "POST /cart"  # slowest p99 first


def test_top_errors_rank_messages_and_link_the_latest_trace(engine: Engine) -> None:
    got = run(engine, panel_query("Top errors"))
    assert [(r["service_name"], r["span_name"], r["status_message"], number(r["errors"])) for r in got] == [
        ("checkout", "POST /cart", "card declined", 3),
        ("checkout", "POST /cart", "timeout", 2),
        ("search", "GET /search", "index missing", 1),
    ]
    latest = max((s for s in IN_RANGE if s.error == "card declined"), key=lambda s: s.start)
    assert got[0]["latest_trace_id"] == latest.trace_id


def test_trace_lookup_returns_every_span_of_the_trace_in_start_order(engine: Engine) -> None:
    got = run(engine, panel_query("Trace lookup"))
    expected = sorted((s for s in SPANS if s.trace == TRACE), key=lambda s: s.start)
    assert [r["span_id"] for r in got] == [s.span_id for s in expected]
    assert [r["service_name"] for r in got] == ["checkout", "checkout", "search"]
    assert got[1]["parent_span_id"] == expected[0].span_id
    assert run(engine, panel_query("Trace lookup"), trace_id="0" * 32) == []
    assert run(engine, panel_query("Trace lookup"), trace_id="x' OR '1'='1") == []  # quoted, not injected


def test_filters_select_services_and_span_names_including_quoted_ones(engine: Engine) -> None:
    (row,) = run(engine, panel_query("Spans"), service=[QUOTED])
    assert number(row["spans"]) == 1
    (row,) = run(engine, panel_query("Spans"), service=["checkout", "search"], span_name=["db.query"])
    assert number(row["spans"]) == sum(s.name == "db.query" for s in IN_RANGE)
    (var,) = [q for q in QUERIES if q.where == "variable service"]
    assert [r["service_name"] for r in run(engine, var)] == sorted({s.service for s in IN_RANGE})
    (var,) = [q for q in QUERIES if q.where == "variable span_name"]
    assert [r["span_name"] for r in run(engine, var, service=["search", QUOTED])] == ["GET /search", "odd"]
