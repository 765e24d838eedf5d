"""The logs and metrics dashboards' SQL runs, and answers correctly, on both schema profiles.

Every panel query and variable query of deploy/grafana/dashboards/automagik-telemetry-logs.json and
automagik-telemetry-metrics.json is interpolated the way Grafana and the ClickHouse plugin would
(deploy_helpers.interpolate) and run against

* the legacy profile on a real ClickHouse 18.16 (the ``clickhouse`` fixture), and
* the modern profile on chDB (``chdb_session_factory``),

each holding the same known log records and metric data points, made by the shipper's own transforms
(log_rows.transform_log, metric_rows.transform_metric) into the tables schema.apply creates. Results are
checked against what the records imply: counts per severity, service and time bucket, the text search, the
errors and exceptions, the logs of one trace; counter rates across resets and processes, gauges' last values,
and histogram quantiles of the increases and of the latest point (against a reference implementation of
Prometheus's histogram_quantile and against numbers worked out by hand).

The metrics dashboard's series key needs the attributes, whose columns differ between the profiles: two hidden
variables read the table's columns from system.columns and name the right ones; the tests run those variable
queries and use what they answer, as Grafana would.
"""

from __future__ import annotations

import json
import math
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import orjson
import pytest

from automagik_telemetry_agent.clickhouse.log_rows import transform_log
from automagik_telemetry_agent.clickhouse.metric_rows import transform_metric
from automagik_telemetry_agent.clickhouse.rows import Profile, parse_resource
from automagik_telemetry_agent.clickhouse.schema import apply
from automagik_telemetry_agent.config.settings import SETTINGS_BY_KEY

from .deploy_helpers import (
    ALL,
    LOGS_DASHBOARD,
    METRICS_DASHBOARD,
    Query,
    dashboard_queries,
    interpolate,
    iter_panels,
    load_json,
    variables,
)

T0 = 1_714_564_800  # 2024-05-01 12:00:00 UTC: the dashboards' time range is [T0, T0 + 3600]
T1 = T0 + 3600
INTERVAL = 600
BUCKETS = 6  # time buckets in the range
QUOTED = "it's-svc"  # a service name with a quote: ${service:singlequote} must escape it
TRACE = 42
S = 10**9


def resource(service: str, host: str = "", instance: str = "") -> bytes:
    attributes = [{"key": "service.name", "value": {"stringValue": service}}]
    if host:
        attributes.append({"key": "host.name", "value": {"stringValue": host}})
    if instance:
        attributes.append({"key": "service.instance.id", "value": {"stringValue": instance}})
    return orjson.dumps({"attributes": attributes})


def string_attributes(values: dict[str, str]) -> list[dict[str, Any]]:
    return [{"key": k, "value": {"stringValue": v}} for k, v in values.items()]


def ns(t: float) -> int:
    """Nanoseconds of ``t`` seconds after T0."""
    return T0 * S + round(t * S)


def bucket(t: float) -> int:
    return math.floor(t / INTERVAL)


# ============================================================================================== log data
@dataclass(frozen=True)
class Log:
    service: str
    t: float  # seconds after T0
    severity: int
    body: str
    text: str = ""  # severityText (empty: the transform names the number's range)
    trace: int | None = None
    span: int | None = None
    exception: tuple[str, str] | None = None  # (type, message)
    source: tuple[str, int] | None = None  # (file, line)

    @property
    def level(self) -> str:
        if self.severity == 0:
            return self.text.upper() if self.text else "UNSPECIFIED"
        return ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")[(self.severity - 1) // 4]

    @property
    def is_error(self) -> bool:
        return self.severity >= 17 or self.exception is not None

    @property
    def trace_id(self) -> str:
        return f"{self.trace:032x}" if self.trace is not None else ""


def make_logs() -> list[Log]:
    logs: list[Log] = []
    logs += [Log("checkout", 10 + i * 90, 9, f"order {i} placed") for i in range(40)]
    logs += [Log("checkout", 100 + i * 500, 13, "slow payment provider") for i in range(6)]
    declined = ("ValueError", "card declined")
    for i, t in enumerate((300, 1300, 2300)):
        logs.append(Log("checkout", t, 17, "payment failed", trace=100 + i, exception=declined, source=("pay.py", 7)))
    logs.append(Log("checkout", 3300, 18, "payment failed", trace=103, exception=("TimeoutError", "provider timeout")))
    logs += [Log("search", 20 + i * 110, 5, f"query took {i} ms") for i in range(30)]
    logs += [Log("search", t, 17, "index missing") for t in (700, 2900)]
    logs.append(Log("search", 3500, 21, "out of memory"))
    logs.append(Log("search", 1500, 9, "lookup failed", trace=104, exception=("KeyError", "'sku'")))
    logs.append(Log("search", 1600, 9, "Reordering the ORDER book"))
    logs.append(Log(QUOTED, 1800, 0, "It's quoted"))
    logs.append(Log(QUOTED, 1900, 0, "a notice", text="notice"))
    # One trace across two services (the trace's logs), and a record outside the time range.
    logs.append(Log("checkout", 2000.0, 9, "cart start", trace=TRACE, span=1))
    logs.append(Log("search", 2000.01, 5, "cache miss", trace=TRACE, span=2))
    logs.append(Log("checkout", 2000.02, 17, "boom", trace=TRACE, span=1, exception=("RuntimeError", "boom")))
    logs.append(Log("old-svc", -7200, 17, "old"))
    return logs


LOGS = make_logs()
LOGS_IN_RANGE = [r for r in LOGS if 0 <= r.t <= 3600]


def log_rows(profile: Profile) -> bytes:
    """JSONEachRow body of every log record, made by the shipper's transform for ``profile``."""
    out = []
    for r in LOGS:
        record: dict[str, Any] = {
            "timeUnixNano": str(ns(r.t)),
            "severityNumber": r.severity,
            "body": {"stringValue": r.body},
        }
        if r.text:
            record["severityText"] = r.text
        attributes = {"user.id": "u1"}
        if r.exception is not None:
            attributes |= {"exception.type": r.exception[0], "exception.message": r.exception[1]}
        if r.source is not None:
            attributes |= {"code.filepath": r.source[0], "code.lineno": str(r.source[1])}
        record["attributes"] = string_attributes(attributes)
        if r.trace is not None:
            record["traceId"] = r.trace_id
        if r.span is not None:
            record["spanId"] = f"{r.span:016x}"
        row = transform_log(orjson.dumps(record), parse_resource(resource(r.service, "h1")), profile)
        out.append(orjson.dumps(row))
    return b"\n".join(out) + b"\n"


# =========================================================================================== metric data
@dataclass
class Series:
    """One series of one metric: its identity and its points ``(t, start_t, value)`` (value: a number, or
    ``(bucket counts, sum)`` for a histogram)."""

    metric: str
    kind: str  # gauge | sum | histogram
    service: str
    host: str
    instance: str
    attributes: dict[str, str]
    points: list[tuple[float, float, Any]] = field(default_factory=list)
    temporality: int = 2  # 1 delta, 2 cumulative
    monotonic: bool = True
    bounds: Sequence[float] = ()
    as_int: bool = False

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(self.attributes.items()))

    def line(self) -> bytes:
        points = []
        for t, start, value in self.points:
            p: dict[str, Any] = {
                "timeUnixNano": str(ns(t)),
                "startTimeUnixNano": str(ns(start)),
                # Deliberately not sorted: the modern Map keeps this order, the series key must not care.
                "attributes": string_attributes(dict(sorted(self.attributes.items(), reverse=True))),
            }
            if self.kind == "histogram":
                counts, total = value
                p |= {
                    "count": str(sum(counts)),
                    "sum": total,
                    "bucketCounts": [str(c) for c in counts],
                    "explicitBounds": list(self.bounds),
                }
            elif self.as_int:
                p["asInt"] = str(value)
            else:
                p["asDouble"] = value
            points.append(p)
        data: dict[str, Any] = {"dataPoints": points}
        if self.kind != "gauge":
            data["aggregationTemporality"] = self.temporality
        if self.kind == "sum":
            data["isMonotonic"] = self.monotonic
        metric = {"name": self.metric, "unit": "ms" if self.kind == "histogram" else "1", "description": "d"}
        return orjson.dumps({**metric, self.kind: data})


EVERY_MINUTE = [30 + 60 * k for k in range(60)]  # t of point k: 30, 90, ..., 3570
BOUNDS = (10.0, 50.0, 100.0, 500.0)
CART_INC = (4, 3, 2, 1, 0)  # observations per minute in each bucket of /cart (sum 560 per minute)
CART_OFFSET = (1000, 0, 0, 0, 0)  # what /cart observed before the time range (sum 5000)
SLOW_INC = (0, 0, 0, 2, 1)  # /slow: two in (100, 500], one above 500 (sum 1600 per minute)
JOB_BOUNDS = (1.0, 2.0, 4.0)
JOB_COUNTS = (2, 1, 1, 0)  # job.duration (delta): every 2 minutes


def scaled(inc: Sequence[int], n: int, offset: Sequence[int] | None = None) -> list[int]:
    return [(offset[i] if offset else 0) + n * c for i, c in enumerate(inc)]


def make_series() -> list[Series]:
    api_get_a = Series("http.server.requests", "sum", "api", "h1", "a", {"method": "GET", "code": "200"})
    api_get_a.points = [(-30, -1000, 5)] + [(t, -1000, 10 * (k + 1)) for k, t in enumerate(EVERY_MINUTE)]
    # The same attributes from another process of the service: a separate series (its values interleaved with
    # the first one's would look like resets), whose rate adds up with the first. It restarts at k = 45 without
    # a new start time (the value goes down: a reset all the same).
    api_get_b = Series("http.server.requests", "sum", "api", "h1", "b", {"method": "GET", "code": "200"})
    api_get_b.points = [(t, -2000, 1000 + 5 * (k + 1) if k < 45 else 5 * (k - 44)) for k, t in enumerate(EVERY_MINUTE)]
    # Restarts at k = 30 with a new start time.
    api_post = Series("http.server.requests", "sum", "api", "h1", "a", {"method": "POST", "code": "200"})
    api_post.points = [
        (t, -1000, 2 * (k + 1)) if k < 30 else (t, 1790, 2 * (k - 29)) for k, t in enumerate(EVERY_MINUTE)
    ]
    jobs = Series("jobs.processed", "sum", "worker", "h2", "w", {}, temporality=1, as_int=True)
    jobs.points = [(60 + 120 * j, 120 * j - 60, 3) for j in range(30)]

    high = Series("queue.depth", "gauge", "worker", "h2", "w", {"queue": "high"}, as_int=True)
    high.points = [(t, 0, k % 7) for k, t in enumerate(EVERY_MINUTE)]
    high_x = Series("queue.depth", "gauge", "worker", "h2", "x", {"queue": "high"}, as_int=True)
    high_x.points = [(t, 0, 1000) for t in EVERY_MINUTE]
    low = Series("queue.depth", "gauge", "worker", "h2", "w", {"queue": "low"})
    low.points = [(t, 0, 100.5 - k) for k, t in enumerate(EVERY_MINUTE)]
    connections = Series("connections.active", "sum", "api", "h1", "a", {}, monotonic=False, as_int=True)
    connections.points = [(t, -1000, 50 + k % 3) for k, t in enumerate(EVERY_MINUTE)]

    cart = Series("http.server.duration", "histogram", "api", "h1", "a", {"route": "/cart"}, bounds=BOUNDS)
    cart.points = [
        (t, -5000, (scaled(CART_INC, k + 1, CART_OFFSET), 5000.0 + 560.0 * (k + 1))) for k, t in enumerate(EVERY_MINUTE)
    ]
    slow = Series("http.server.duration", "histogram", "api", "h1", "a", {"route": "/slow"}, bounds=BOUNDS)
    slow.points = [
        (t, -5000, (scaled(SLOW_INC, k + 1), 1600.0 * (k + 1)))
        if k < 40
        else (t, 2390, (scaled(SLOW_INC, k - 39), 1600.0 * (k - 39)))
        for k, t in enumerate(EVERY_MINUTE)
    ]
    job_duration = Series("job.duration", "histogram", "worker", "h2", "w", {}, temporality=1, bounds=JOB_BOUNDS)
    job_duration.points = [(60 + 120 * j, 120 * j - 60, (list(JOB_COUNTS), 5.0)) for j in range(30)]
    return [api_get_a, api_get_b, api_post, jobs, high, high_x, low, connections, cart, slow, job_duration]


SERIES = make_series()
#: A batch the shipper re-sent (at-least-once on 18.16): one point stored twice must not change a rate.
DUPLICATE = (0, 11)  # SERIES[0], its point 11


def metric_rows(profile: Profile) -> tuple[bytes, bytes]:
    """JSONEachRow bodies of every data point, and of the duplicated one (inserted on its own)."""
    out, dup = [], b""
    for i, s in enumerate(SERIES):
        rows = transform_metric(s.line(), parse_resource(resource(s.service, s.host, s.instance)), profile)
        assert len(rows) == len(s.points)
        out += [orjson.dumps(r) for r in rows]
        if i == DUPLICATE[0]:
            dup = orjson.dumps(rows[DUPLICATE[1]]) + b"\n"
    return b"\n".join(out) + b"\n", dup


def in_range(s: Series) -> list[tuple[float, float, Any]]:
    return [p for p in s.points if 0 <= p[0] <= 3600]


# ---- what the metrics imply, computed independently of the SQL
def counter_increases(s: Series) -> list[tuple[float, float]]:
    """``(t, increase)`` per point of a monotonic sum: Prometheus's rule (a decrease or a new start time is
    a reset: the new value is the increase); the first cumulative point in range only serves as the base."""
    points = in_range(s)
    if s.temporality == 1:
        return [(t, float(v)) for t, _, v in points]
    out = []
    for (_, start0, v0), (t, start, v) in pairwise(points):
        out.append((t, float(v) if (start != start0 or v < v0) else float(v - v0)))
    return out


def histogram_increases(s: Series) -> list[tuple[float, list[int], float]]:
    points = in_range(s)
    if s.temporality == 1:
        return [(t, list(counts), total) for t, _, (counts, total) in points]
    out = []
    for (_, start0, (c0, sum0)), (t, start, (c, total)) in pairwise(points):
        reset = start != start0 or any(a < b for a, b in zip(c, c0, strict=True))
        out.append((t, list(c), total) if reset else (t, [a - b for a, b in zip(c, c0, strict=True)], total - sum0))
    return out


def histogram_quantile(q: float, counts: Sequence[float], bounds: Sequence[float]) -> float:
    """Prometheus's histogram_quantile over explicit buckets (``counts`` has one more entry: +Inf)."""
    rank = q * sum(counts)
    cumulative = 0.0
    for i, c in enumerate(counts):
        if cumulative + c >= rank:
            if i == len(bounds):
                return bounds[-1]
            lower = min(0.0, bounds[0]) if i == 0 else bounds[i - 1]
            return lower + (bounds[i] - lower) * (rank - cumulative) / c
        cumulative += c
    raise AssertionError("unreachable")


def add(a: Sequence[float], b: Sequence[float]) -> list[float]:
    return [x + y for x, y in zip(a, b, strict=True)]


# ================================================================================================ engines
@dataclass
class Engine:
    name: str
    database: str
    run: Callable[[str], list[dict[str, Any]]]  # SQL -> rows (JSONEachRow)


def _parse(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def load(execute: Callable[..., Any], database: str, profile: Profile, insert: Callable[[str, bytes], Any]) -> None:
    apply(execute, profile, database, "traces", 0)
    for table in ("logs", "metrics"):  # one migrated table per database; the copies stay empty
        execute(f"CREATE TABLE {database}.empty_{table} AS {database}.{table}")
    insert(f"{database}.logs", log_rows(profile))
    points, duplicate = metric_rows(profile)
    insert(f"{database}.metrics", points)
    insert(f"{database}.metrics", duplicate)


@pytest.fixture(scope="module")
def legacy(clickhouse: Any) -> Iterator[Engine]:
    database = f"deploy_{uuid.uuid4().hex[:10]}"

    def insert(table: str, body: bytes) -> None:
        clickhouse.query(f"INSERT INTO {table} FORMAT JSONEachRow", data=body)

    load(clickhouse.query, database, Profile.LEGACY, insert)
    try:
        yield Engine("legacy 18.16", database, lambda sql: _parse(clickhouse.query(sql + "\nFORMAT JSONEachRow")))
    finally:
        clickhouse.ensure_running()
        clickhouse.query(f"DROP DATABASE IF EXISTS {database}")


@pytest.fixture(scope="module")
def modern(chdb_session_factory: Callable[..., Any]) -> Engine:
    session = chdb_session_factory("deploy-logs-metrics")

    def execute(sql: str) -> str:
        return str(session.query(sql))

    def insert(table: str, body: bytes) -> None:
        execute(f"INSERT INTO {table} FORMAT JSONEachRow\n" + body.decode())

    load(execute, "telemetry", Profile.MODERN, insert)
    return Engine("modern chDB", "telemetry", lambda sql: _parse(execute(sql + "\nFORMAT JSONEachRow")))


@pytest.fixture(
    params=[pytest.param("legacy", marks=pytest.mark.clickhouse), pytest.param("modern", marks=pytest.mark.chdb)]
)
def engine(request: pytest.FixtureRequest) -> Engine:
    return request.getfixturevalue(request.param)


def number(value: Any) -> float:
    return float(value)  # 64-bit integers arrive quoted in JSON


# ============================================================================================== both
LOGS_DB = load_json(LOGS_DASHBOARD)
METRICS_DB = load_json(METRICS_DASHBOARD)
LOG_QUERIES = dashboard_queries(LOGS_DB, "rawSql")
METRIC_QUERIES = dashboard_queries(METRICS_DB, "rawSql")
#: The hidden variables that name the attribute columns of the table's profile (filled in by running them).
DETECTED = ("attribute_arrays", "resource_arrays")


def panel_query(queries: list[Query], title: str) -> Query:
    (query,) = [q for q in queries if q.panel is not None and q.panel["title"] == title]
    return query


def variable_query(queries: list[Query], name: str) -> Query:
    (query,) = [q for q in queries if q.where == f"variable {name}"]
    return query


@pytest.mark.parametrize("dashboard", [LOGS_DB, METRICS_DB], ids=["logs", "metrics"])
def test_dashboard_targets_use_the_clickhouse_plugin_through_the_datasource_variable(
    dashboard: dict[str, Any],
) -> None:
    """The traces dashboard's conventions: the plugin through the `datasource` variable, SQL editor, time
    series (format 0, a `time` column) for time series panels and tables (format 1) for everything else."""
    assert dashboard_queries(dashboard, "rawSql")
    defs = variables(dashboard)
    assert defs["datasource"]["type"] == "datasource"
    assert defs["datasource"]["query"] == "grafana-clickhouse-datasource"
    assert defs["database"]["query"] == "telemetry"
    for panel in iter_panels(dashboard):
        if panel["type"] == "row":
            continue
        for thing in (panel, *panel["targets"]):
            assert thing["datasource"] == {"type": "grafana-clickhouse-datasource", "uid": "${datasource}"}, panel[
                "title"
            ]
        for target in panel["targets"]:
            assert target["format"] == (0 if panel["type"] == "timeseries" else 1), panel["title"]
            assert target["editorType"] == "sql"
    for var in defs.values():
        if var["type"] == "query":
            assert var["datasource"] == {"type": "grafana-clickhouse-datasource", "uid": "${datasource}"}
            assert var["definition"] == var["query"]["rawSql"]


def test_table_variables_default_to_the_agents_tables() -> None:
    """What `clickhouse.logs_table` / `clickhouse.metrics_table` default to, and what schema.apply creates."""
    assert variables(LOGS_DB)["logs_table"]["query"] == SETTINGS_BY_KEY["clickhouse.logs_table"].default == "logs"
    assert (
        variables(METRICS_DB)["metrics_table"]["query"]
        == SETTINGS_BY_KEY["clickhouse.metrics_table"].default
        == "metrics"
    )


# ================================================================================================ logs
def run_logs(engine: Engine, query: Query, table: str = "logs", **values: Any) -> list[dict[str, Any]]:
    settings = {
        "datasource": "ch",
        "database": engine.database,
        "logs_table": table,
        "service": ALL,
        "min_severity": "0",
        "search": "",
        "trace_id": f"{TRACE:032x}",
        **values,
    }
    return engine.run(interpolate(query.text, LOGS_DB, settings, T0, T1, INTERVAL))


@pytest.mark.parametrize("query", LOG_QUERIES, ids=lambda q: q.where)
@pytest.mark.parametrize("selection", ["all", "filtered"])
def test_every_logs_query_runs_on_both_profiles_and_on_an_empty_table(
    engine: Engine, query: Query, selection: str
) -> None:
    values = {} if selection == "all" else {"service": ["checkout", QUOTED], "min_severity": "9", "search": "O"}
    got = run_logs(engine, query, **values)
    assert got, f"{query.where} returned nothing on {engine.name}"
    run_logs(engine, query, table="empty_logs", **values)  # no data must not be an error
    if query.target is not None and query.target["format"] == 0:
        for row in got:
            assert "time" in row, f"{query.where}: a time series needs a `time` column"


def test_log_totals(engine: Engine) -> None:
    (row,) = run_logs(engine, panel_query(LOG_QUERIES, "Log records"))
    assert number(row["records"]) == len(LOGS_IN_RANGE)  # not the old record
    (row,) = run_logs(engine, panel_query(LOG_QUERIES, "Errors"))
    errors = sum(r.is_error for r in LOGS_IN_RANGE)
    assert number(row["errors"]) == errors == 9  # ERROR/FATAL, and an INFO record with an exception
    (row,) = run_logs(engine, panel_query(LOG_QUERIES, "Error ratio"))
    assert number(row["error_ratio"]) == pytest.approx(errors / len(LOGS_IN_RANGE))
    (row,) = run_logs(engine, panel_query(LOG_QUERIES, "Exceptions"))
    assert number(row["exceptions"]) == sum(r.exception is not None for r in LOGS_IN_RANGE) == 6
    (row,) = run_logs(engine, panel_query(LOG_QUERIES, "Log records"), service=[QUOTED])
    assert number(row["records"]) == 2


def test_volume_by_severity_counts_each_level_in_its_time_bucket(engine: Engine) -> None:
    got = run_logs(engine, panel_query(LOG_QUERIES, "Volume by severity"))
    volume = {(r["time"], r["severity"]): number(r["records"]) for r in got}
    expected: Counter[tuple[str, str]] = Counter()
    for r in LOGS_IN_RANGE:
        b = bucket(r.t) * INTERVAL // 60
        expected[(f"2024-05-01 {12 + b // 60:02d}:{b % 60:02d}:00", r.level)] += 1
    assert volume == expected
    per_level = Counter({level: 0 for level in ("DEBUG", "INFO", "WARN", "ERROR", "FATAL")})
    for (_, level), n in volume.items():
        per_level[level] += int(n)
    assert per_level == Counter(
        {"INFO": 43, "DEBUG": 31, "ERROR": 7, "WARN": 6, "FATAL": 1, "UNSPECIFIED": 1, "NOTICE": 1}
    )
    # The minimum severity drops the lower levels (and the records without a number).
    got = run_logs(engine, panel_query(LOG_QUERIES, "Volume by severity"), min_severity="13")
    assert {r["severity"] for r in got} == {"WARN", "ERROR", "FATAL"}
    assert sum(number(r["records"]) for r in got) == sum(r.severity >= 13 for r in LOGS_IN_RANGE)


def test_volume_by_service_and_the_service_table(engine: Engine) -> None:
    got = run_logs(engine, panel_query(LOG_QUERIES, "Volume by service"))
    per_service: Counter[str] = Counter()
    for row in got:
        per_service[row["service_name"]] += int(number(row["records"]))
    assert per_service == Counter(r.service for r in LOGS_IN_RANGE)
    assert {row["time"] for row in got} == {f"2024-05-01 12:{m:02d}:00" for m in range(0, 60, 10)}
    table = {r["service_name"]: r for r in run_logs(engine, panel_query(LOG_QUERIES, "Records by service"))}
    assert list(table) == ["checkout", "search", QUOTED]  # most records first
    checkout = table["checkout"]
    assert [number(checkout[k]) for k in ("records", "warnings", "errors", "exceptions")] == [52, 6, 5, 5]
    search = table["search"]
    assert [number(search[k]) for k in ("records", "warnings", "errors", "exceptions")] == [36, 0, 4, 1]
    assert search["last_seen"].startswith("2024-05-01 12:58:20")


def test_search_is_case_insensitive_newest_first_and_quoted(engine: Engine) -> None:
    search = panel_query(LOG_QUERIES, "Search")
    got = run_logs(engine, search, search="ORDER")
    expected = sorted((r for r in LOGS_IN_RANGE if "order" in r.body.lower()), key=lambda r: -r.t)
    assert [r["body"] for r in got] == [r.body for r in expected]
    assert len(got) == 41 and got[0]["body"] == "order 39 placed" and got[0]["severity"] == "INFO"
    assert [r["body"] for r in run_logs(engine, search, search="it's")] == ["It's quoted"]
    assert [r["body"] for r in run_logs(engine, search, search="ORDER", service=["search"])] == [
        "Reordering the ORDER book"
    ]
    assert run_logs(engine, search, search="x' OR '1'='1") == []  # quoted, not injected
    assert len(run_logs(engine, search)) == len(LOGS_IN_RANGE)  # empty: every record (up to 500)


def test_recent_errors_show_the_exception_and_the_source(engine: Engine) -> None:
    got = run_logs(engine, panel_query(LOG_QUERIES, "Recent errors"))
    expected = sorted((r for r in LOGS_IN_RANGE if r.is_error), key=lambda r: -r.t)
    assert [(r["service_name"], r["body"]) for r in got] == [(r.service, r.body) for r in expected]
    by_body = {(r["body"], r["trace_id"]): r for r in got}
    declined = by_body[("payment failed", f"{100:032x}")]
    assert (declined["severity"], declined["exception_type"], declined["exception_message"], declined["source"]) == (
        "ERROR",
        "ValueError",
        "card declined",
        "pay.py:7",
    )
    info_exception = by_body[("lookup failed", f"{104:032x}")]
    assert (info_exception["severity"], info_exception["exception_type"], info_exception["source"]) == (
        "INFO",
        "KeyError",
        "",
    )
    assert got[0]["severity"] == "FATAL" and got[0]["exception_type"] == ""


def test_top_exceptions_rank_type_and_message_and_link_the_latest_trace(engine: Engine) -> None:
    got = run_logs(engine, panel_query(LOG_QUERIES, "Top exceptions"))
    top = got[0]
    assert (top["service_name"], top["exception_type"], top["exception_message"], number(top["records"])) == (
        "checkout",
        "ValueError",
        "card declined",
        3,
    )
    assert top["latest_trace_id"] == f"{102:032x}"
    assert {(r["exception_type"], number(r["records"])) for r in got[1:]} == {
        ("TimeoutError", 1),
        ("KeyError", 1),
        ("RuntimeError", 1),
    }


def test_logs_of_one_trace_in_time_order(engine: Engine) -> None:
    query = panel_query(LOG_QUERIES, "Logs of one trace")
    got = run_logs(engine, query, service=["nothing"], min_severity="21")  # the filters do not apply
    assert [(r["service_name"], r["body"], r["severity"]) for r in got] == [
        ("checkout", "cart start", "INFO"),
        ("search", "cache miss", "DEBUG"),
        ("checkout", "boom", "ERROR"),
    ]
    assert [r["span_id"] for r in got] == [f"{1:016x}", f"{2:016x}", f"{1:016x}"]
    assert got[2]["exception_type"] == "RuntimeError"
    assert run_logs(engine, query, trace_id="0" * 32) == []
    assert run_logs(engine, query, trace_id="x' OR '1'='1") == []


def test_logs_service_variable_lists_the_services_in_range(engine: Engine) -> None:
    got = run_logs(engine, variable_query(LOG_QUERIES, "service"))
    assert [r["service_name"] for r in got] == sorted({r.service for r in LOGS_IN_RANGE})


# ============================================================================================= metrics
def detected(engine: Engine, table: str) -> dict[str, str]:
    """What the hidden variables answer for ``table``: the expressions naming its attribute arrays."""
    out = {}
    for name in DETECTED:
        sql = interpolate(
            variable_query(METRIC_QUERIES, name).text,
            METRICS_DB,
            {"database": engine.database, "metrics_table": table},
            T0,
            T1,
            INTERVAL,
        )
        (row,) = engine.run(sql)
        out[name] = row["columns"]
    return out


def run_metrics(
    engine: Engine, query: Query, metric: str, table: str = "metrics", **values: Any
) -> list[dict[str, Any]]:
    settings = {
        "datasource": "ch",
        "database": engine.database,
        "metrics_table": table,
        "service": ALL,
        "metric": metric,
        **detected(engine, table),
        **values,
    }
    return engine.run(interpolate(query.text, METRICS_DB, settings, T0, T1, INTERVAL))


#: A metric each panel shows something for.
PANEL_METRIC = {
    "About this metric": "http.server.requests",
    "Counter rate": "http.server.requests",
    "Gauge": "queue.depth",
    "Latest value by series": "queue.depth",
    "Histogram p50 / p95 / p99": "http.server.duration",
    "Histogram observations per second": "http.server.duration",
    "Histogram quantiles over the time range": "http.server.duration",
    "Histogram quantiles of the latest point": "http.server.duration",
}


def test_the_hidden_variables_name_the_attribute_columns_of_each_profile(engine: Engine) -> None:
    got = detected(engine, "metrics")
    if engine.name.startswith("modern"):
        assert got == {
            "attribute_arrays": "mapKeys(attributes), mapValues(attributes)",
            "resource_arrays": "mapKeys(resource_attributes), mapValues(resource_attributes)",
        }
    else:
        assert got == {
            "attribute_arrays": "attribute_keys, attribute_values",
            "resource_arrays": "resource_keys, resource_values",
        }
    for name in DETECTED:
        assert variables(METRICS_DB)[name]["hide"] == 2  # not something to pick
        assert variables(METRICS_DB)[name]["refresh"] == 1  # on load (and when database or table change)


@pytest.mark.parametrize("query", METRIC_QUERIES, ids=lambda q: q.where)
@pytest.mark.parametrize("selection", ["all", "filtered"])
def test_every_metrics_query_runs_on_both_profiles_and_on_an_empty_table(
    engine: Engine, query: Query, selection: str
) -> None:
    if query.panel is None and query.where.removeprefix("variable ") in DETECTED:
        return  # run by detected() on every call below
    metric = PANEL_METRIC.get(query.panel["title"], "") if query.panel is not None else "queue.depth"
    values = {} if selection == "all" else {"service": ["worker", "api", QUOTED]}
    got = run_metrics(engine, query, metric, **values)
    assert got, f"{query.where} returned nothing on {engine.name}"
    assert run_metrics(engine, query, metric, table="empty_metrics", **values) == []
    if query.target is not None and query.target["format"] == 0:
        for row in got:
            assert "time" in row, f"{query.where}: a time series needs a `time` column"


def test_every_metrics_panel_is_tested() -> None:
    assert {q.panel["title"] for q in METRIC_QUERIES if q.panel is not None} == set(PANEL_METRIC)


def test_metric_variable_lists_the_metrics_of_the_selected_services(engine: Engine) -> None:
    var = variable_query(METRIC_QUERIES, "metric")
    assert [r["metric_name"] for r in run_metrics(engine, var, "")] == sorted({s.metric for s in SERIES})
    assert [r["metric_name"] for r in run_metrics(engine, var, "", service=["worker"])] == [
        "job.duration",
        "jobs.processed",
        "queue.depth",
    ]
    var = variable_query(METRIC_QUERIES, "service")
    assert [r["service_name"] for r in run_metrics(engine, var, "")] == ["api", "worker"]


def test_about_this_metric(engine: Engine) -> None:
    (row,) = run_metrics(engine, panel_query(METRIC_QUERIES, "About this metric"), "http.server.requests")
    assert (row["metric_type"], row["aggregation_temporality"], number(row["is_monotonic"]), row["metric_unit"]) == (
        "SUM",
        "CUMULATIVE",
        1,
        "1",
    )
    assert number(row["series"]) == 3  # GET from two processes, POST (its restart is not a new series)
    assert number(row["points"]) == 3 * 60 + 1  # the re-sent point is stored twice
    (row,) = run_metrics(engine, panel_query(METRIC_QUERIES, "About this metric"), "job.duration")
    assert (row["metric_type"], row["aggregation_temporality"], number(row["series"])) == ("HISTOGRAM", "DELTA", 1)


def test_counter_rate_is_the_increase_per_second_across_resets_processes_and_duplicates(engine: Engine) -> None:
    got = run_metrics(engine, panel_query(METRIC_QUERIES, "Counter rate"), "http.server.requests")
    rates = {(r["time"], r["service_name"], r["hostname"], r["attributes"]): number(r["per_second"]) for r in got}
    expected: dict[tuple[str, str, str, str], float] = defaultdict(float)
    for s in SERIES:
        if s.metric == "http.server.requests":
            for t, increase in counter_increases(s):
                m = bucket(t) * INTERVAL // 60
                expected[(f"2024-05-01 12:{m:02d}:00", s.service, s.host, s.label)] += increase / INTERVAL
    assert rates == pytest.approx(dict(expected))
    # By hand: GET grows by 10 + 5 a minute (two processes), POST by 2, through their resets; the first bucket
    # has one increase fewer (the first point in the range is the base).
    get = [rates[(f"2024-05-01 12:{m:02d}:00", "api", "h1", "code=200, method=GET")] for m in range(0, 60, 10)]
    assert get == pytest.approx([9 * 15 / 600] + [10 * 15 / 600] * 5)
    post = [rates[(f"2024-05-01 12:{m:02d}:00", "api", "h1", "code=200, method=POST")] for m in range(0, 60, 10)]
    assert post == pytest.approx([9 * 2 / 600] + [10 * 2 / 600] * 5)
    # A delta counter: every value counts, the first one too.
    got = run_metrics(engine, panel_query(METRIC_QUERIES, "Counter rate"), "jobs.processed")
    assert [(r["service_name"], r["hostname"], r["attributes"]) for r in got] == [("worker", "h2", "")] * BUCKETS
    assert [number(r["per_second"]) for r in got] == pytest.approx([5 * 3 / 600] * BUCKETS)
    # Gauges and histograms are not counters.
    assert run_metrics(engine, panel_query(METRIC_QUERIES, "Counter rate"), "queue.depth") == []


def test_counter_rate_follows_the_service_filter(engine: Engine) -> None:
    query = panel_query(METRIC_QUERIES, "Counter rate")
    assert run_metrics(engine, query, "http.server.requests", service=["worker"]) == []
    assert len(run_metrics(engine, query, "http.server.requests", service=["api", QUOTED])) == 2 * BUCKETS


def test_gauge_is_the_last_value_per_bucket_with_processes_added_up(engine: Engine) -> None:
    got = run_metrics(engine, panel_query(METRIC_QUERIES, "Gauge"), "queue.depth")
    values = {(r["time"], r["attributes"]): number(r["value"]) for r in got}
    expected = {}
    for b in range(BUCKETS):
        last = 10 * b + 9  # the last point k of bucket b
        expected[(f"2024-05-01 12:{b * 10:02d}:00", "queue=high")] = last % 7 + 1000  # processes w and x
        expected[(f"2024-05-01 12:{b * 10:02d}:00", "queue=low")] = 100.5 - last
    assert values == pytest.approx(expected)
    assert {(r["service_name"], r["hostname"]) for r in got} == {("worker", "h2")}
    # An up-down counter (a non-monotonic cumulative sum) is a gauge.
    got = run_metrics(engine, panel_query(METRIC_QUERIES, "Gauge"), "connections.active")
    assert [number(r["value"]) for r in got] == [50 + (10 * b + 9) % 3 for b in range(BUCKETS)]
    assert run_metrics(engine, panel_query(METRIC_QUERIES, "Gauge"), "http.server.requests") == []


def test_latest_value_by_series(engine: Engine) -> None:
    got = run_metrics(engine, panel_query(METRIC_QUERIES, "Latest value by series"), "queue.depth")
    assert [(r["attributes"], r["resource"], number(r["value"])) for r in got] == [
        ("queue=high", "service.instance.id=w", 59 % 7),
        ("queue=high", "service.instance.id=x", 1000),
        ("queue=low", "service.instance.id=w", 100.5 - 59),
    ]
    assert {r["last_seen"][:19] for r in got} == {"2024-05-01 12:59:30"}
    got = run_metrics(engine, panel_query(METRIC_QUERIES, "Latest value by series"), "http.server.requests")
    assert [(r["attributes"], r["resource"], number(r["value"])) for r in got] == [
        ("code=200, method=GET", "service.instance.id=a", 10 * 60),
        ("code=200, method=GET", "service.instance.id=b", 5 * 15),  # restarted at minute 45
        ("code=200, method=POST", "service.instance.id=a", 2 * 30),  # restarted at minute 30
    ]


def test_histogram_quantiles_over_time_from_the_bucket_increases(engine: Engine) -> None:
    got = run_metrics(engine, panel_query(METRIC_QUERIES, "Histogram p50 / p95 / p99"), "http.server.duration")
    per_bucket: dict[int, list[float]] = defaultdict(lambda: [0.0] * 5)
    for s in SERIES:
        if s.metric == "http.server.duration":
            for t, counts, _ in histogram_increases(s):
                per_bucket[bucket(t)] = add(per_bucket[bucket(t)], counts)
    assert [r["time"] for r in got] == [f"2024-05-01 12:{m:02d}:00" for m in range(0, 60, 10)]
    for row, b in zip(got, range(BUCKETS), strict=True):
        for q, column in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
            assert number(row[column]) == pytest.approx(histogram_quantile(q, per_bucket[b], BOUNDS)), (b, column)
    # By hand: each minute adds 4, 3, 2, 3, 1 to the buckets (/cart and /slow): the median is at 6.5 of 13, in
    # (10, 50] after 4: 10 + 40 * 2.5 / 3; p95 and p99 fall into +Inf, which answers the highest bound.
    assert [number(got[1][c]) for c in ("p50", "p95", "p99")] == pytest.approx([10 + 40 * 2.5 / 3, 500, 500])
    # A delta histogram: every point counts.
    got = run_metrics(engine, panel_query(METRIC_QUERIES, "Histogram p50 / p95 / p99"), "job.duration")
    assert len(got) == BUCKETS
    for row in got:
        assert [number(row[c]) for c in ("p50", "p95", "p99")] == pytest.approx([1.0, 2 + 2 * 0.8, 2 + 2 * 0.96])
    assert run_metrics(engine, panel_query(METRIC_QUERIES, "Histogram p50 / p95 / p99"), "queue.depth") == []


def test_histogram_observations_per_second(engine: Engine) -> None:
    got = run_metrics(engine, panel_query(METRIC_QUERIES, "Histogram observations per second"), "http.server.duration")
    rates = {(r["time"], r["attributes"]): number(r["per_second"]) for r in got}
    for m in range(0, 60, 10):
        n = 9 if m == 0 else 10
        assert rates[(f"2024-05-01 12:{m:02d}:00", "route=/cart")] == pytest.approx(n * 10 / 600)
        assert rates[(f"2024-05-01 12:{m:02d}:00", "route=/slow")] == pytest.approx(n * 3 / 600)


def test_histogram_quantiles_over_the_time_range(engine: Engine) -> None:
    got = run_metrics(
        engine, panel_query(METRIC_QUERIES, "Histogram quantiles over the time range"), "http.server.duration"
    )
    table = {r["attributes"]: r for r in got}
    assert list(table) == ["route=/slow", "route=/cart"]  # highest p99 first
    for s in SERIES:
        if s.metric == "http.server.duration":
            increases = histogram_increases(s)
            counts = [0.0] * 5
            for _, c, _ in increases:
                counts = add(counts, c)
            row = table[s.label]
            assert number(row["observations"]) == sum(counts)
            assert number(row["mean"]) == pytest.approx(sum(total for _, _, total in increases) / sum(counts))
            for q, column in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
                assert number(row[column]) == pytest.approx(histogram_quantile(q, counts, BOUNDS))
    # By hand: 59 minutes of /cart (its reset-free increases) = 4, 3, 2, 1, 0 parts of 10; /slow restarted at
    # minute 40 and its 59 increases are 0, 0, 0, 2, 1 parts of 3.
    cart = table["route=/cart"]
    assert number(cart["observations"]) == 590 and number(cart["mean"]) == pytest.approx(56)
    assert [number(cart[c]) for c in ("p50", "p95", "p99")] == pytest.approx(
        [10 + 40 * 1 / 3, 100 + 400 * 0.5, 100 + 400 * 0.9]
    )
    slow = table["route=/slow"]
    assert number(slow["observations"]) == 177 and number(slow["mean"]) == pytest.approx(1600 / 3)
    assert [number(slow[c]) for c in ("p50", "p95", "p99")] == pytest.approx([100 + 400 * 0.75, 500, 500])


def test_histogram_quantiles_of_the_latest_point(engine: Engine) -> None:
    got = run_metrics(
        engine, panel_query(METRIC_QUERIES, "Histogram quantiles of the latest point"), "http.server.duration"
    )
    table = {r["attributes"]: r for r in got}
    for s in SERIES:
        if s.metric == "http.server.duration":
            _, _, (counts, total) = s.points[-1]
            row = table[s.label]
            assert number(row["observations"]) == sum(counts)
            assert number(row["mean"]) == pytest.approx(total / sum(counts))
            for q, column in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
                assert number(row[column]) == pytest.approx(histogram_quantile(q, counts, BOUNDS))
            assert row["resource"] == "service.instance.id=a"
    # By hand: /cart's latest point holds the 1000 fast observations from before the range: 1240, 180, 120, 60, 0.
    cart = table["route=/cart"]
    assert [number(cart[c]) for c in ("p50", "p95", "p99")] == pytest.approx(
        [10 * 800 / 1240, 50 + 50 * 100 / 120, 100 + 400 * 44 / 60]
    )
    (row,) = run_metrics(engine, panel_query(METRIC_QUERIES, "Histogram quantiles of the latest point"), "job.duration")
    assert [number(row[c]) for c in ("observations", "p50", "p95", "p99")] == pytest.approx([4, 1.0, 3.6, 3.92])
