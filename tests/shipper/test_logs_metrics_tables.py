"""The logs and metrics tables on real engines: rows made by transform_log / transform_metric, sent through the
repo's sinks, read back column by column and compared exactly.

On the real ClickHouse 18.16 server fixture (legacy profile: ``ClickHouseHttpSink.for_table``, a gzip body
there) and on chDB 26.9 (modern profile: ``EmbeddedSink.for_table``), after ``schema.apply`` created the
three tables. Every row a transform makes goes in; ``SELECT *`` must give back the very same row (18.16
writes 64-bit integers as JSON strings whatever the settings say: those columns are read back as ints).
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from automagik_telemetry_agent.clickhouse.embedded import EmbeddedSink
from automagik_telemetry_agent.clickhouse.http import ClickHouseHttpSink
from automagik_telemetry_agent.clickhouse.log_rows import log_row_keys, transform_log
from automagik_telemetry_agent.clickhouse.metric_rows import metric_row_keys, transform_metric
from automagik_telemetry_agent.clickhouse.rows import Profile, encode_rows, parse_resource
from automagik_telemetry_agent.clickhouse.schema import apply, pick_profile, table_columns
from automagik_telemetry_agent.clickhouse.sink import RowKeys, Sink, Tables

TRACE = "5B8EFFF798038103D269B633813FC60C"
SPAN = "EEE19B7EC3C1B174"
BASE_NS = 1729627200000000000  # 2024-10-22 20:00:00 UTC
FIRST_NS = 1_000_000_000  # 1970-01-01 00:00:01, the first accepted instant
LAST_NS = 4_291_747_200 * 1_000_000_000 - 1  # 2105-12-31 23:59:59.999999999, the last accepted instant
I64_MIN, I64_MAX, U64_MAX, U32_MAX = -(1 << 63), (1 << 63) - 1, (1 << 64) - 1, (1 << 32) - 1
WEIRD = "quote\" back\\slash tab\t nl\n nul\x00 uni é✓😀 slash/ apos' semi; <b>&amp;"
#: 64-bit integer columns (and arrays of them): 18.16 quotes them in JSON output whatever the settings say.
INT64_COLUMNS = ("timestamp_ns", "observed_timestamp_ns", "start_timestamp_ns", "value_int", "histogram_count")
INT64_ARRAYS = ("histogram_bucket_counts",)
#: Float64 columns: the engines write a whole double as a JSON integer (9223372036854776000): read back as floats.
FLOAT_COLUMNS = ("value_double", "histogram_sum", "histogram_min", "histogram_max")
FLOAT_ARRAYS = ("histogram_explicit_bounds",)
#: Doubles 18.16's parser reads exactly (it rounds some others to a neighbour: see
#: test_the_1816_server_keeps_every_double_within_two_units_in_the_last_place).
DOUBLES = [0.1, 0.2, 0.3, 1 / 3, -2.5, 1e-300, -1.7976931348623157e308, 1e22, 123456.789, 2.2250738585072014e-308]
#: Prometheus' and OpenTelemetry's default histogram bounds.
BOUNDS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 25.0, 50.0, 75.0]
BOUNDS += [100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0, 7500.0, 10000.0]


def sv(s: str) -> dict[str, Any]:
    return {"stringValue": s}


def kv(key: str, value: Any) -> dict[str, Any]:
    return {"key": key, "value": value}


def line(obj: Any) -> bytes:
    return orjson.dumps(obj) + b"\n"


RESOURCES = [
    line(
        {
            "attributes": [
                kv("service.name", sv("my-app")),
                kv("project.name", sv("automagik")),
                kv("project.version", sv("1.2.3")),
                kv("deployment.environment", sv("prod")),
                kv("host.name", sv("web-01")),
                kv("os.type", sv("linux")),
                kv("os.version", sv("6.1.0-18-amd64")),
                kv("process.pid", {"intValue": "4242"}),
                kv("process.runtime.name", sv("cpython")),
                kv("process.runtime.version", sv("3.11.7")),
                kv("telemetry.sdk.name", sv("automagik-telemetry")),
                kv("telemetry.sdk.version", sv("0.1.0")),
                kv("team", sv("core ✓")),
                kv(WEIRD, sv(WEIRD)),
            ]
        }
    ),
    line({}),  # every resource column empty
]

EVERY_ATTRIBUTE_KIND = [
    kv("s", sv(WEIRD)),
    kv(WEIRD, sv("weird key")),
    kv("empty", sv("")),
    kv("i", {"intValue": str(I64_MIN)}),
    kv("d", {"doubleValue": 0.1}),
    kv("nan", {"doubleValue": "NaN"}),
    kv("b", {"boolValue": False}),
    kv("bytes", {"bytesValue": "AAH/"}),
    kv("arr", {"arrayValue": {"values": [sv("a"), {"intValue": 1}, {"doubleValue": 2.5}, {}]}}),
    kv("kv", {"kvlistValue": {"values": [kv("k", {"boolValue": True}), kv("n", {})]}}),
]


def sample_logs() -> list[dict[str, Any]]:
    """Log records covering every column edge the engines must keep exactly (each at its own instant)."""
    return [
        {  # what the Python client's logging handler writes, with an exception
            "timeUnixNano": BASE_NS + 1,
            "observedTimeUnixNano": BASE_NS + 999_999_999,
            "severityNumber": 17,
            "severityText": "ERROR",
            "body": sv(WEIRD),
            "attributes": [
                kv("logger.name", sv("my-app.payments")),
                kv("code.filepath", sv("/srv/app/payments.py")),
                kv("code.lineno", {"intValue": 42}),
                kv("code.function", sv("charge")),
                kv("exception.type", sv("ValueError")),
                kv("exception.message", sv(WEIRD)),
                kv("exception.stacktrace", sv('Traceback (most recent call last):\n  File "x", line 1\n' + WEIRD)),
                *EVERY_ATTRIBUTE_KIND,
            ],
            "traceId": TRACE,
            "spanId": SPAN,
            "scope": {"name": "my-app.payments", "version": "2.0"},
        },
        {  # no time: the observed one; severity by enum name, no text
            "timeUnixNano": "0",
            "observedTimeUnixNano": str(BASE_NS + 1_000_000_001),
            "severityNumber": "SEVERITY_NUMBER_WARN2",
            "body": {"kvlistValue": {"values": [kv("event", sv("login")), kv("n", {"intValue": "2"})]}},
            "traceId": TRACE.lower(),
        },
        {  # only the time; text given for an unspecified number; an empty body
            "timeUnixNano": str(BASE_NS + 2_000_000_002),
            "severityText": "custom",
            "body": sv(""),
            "attributes": [kv("code.lineno", sv(str(U32_MAX))), kv("exception.type", sv("KeyError"))],
            "scope": {"name": WEIRD},
        },
        {"timeUnixNano": FIRST_NS, "body": {"intValue": str(I64_MIN)}, "severityNumber": 1},
        {
            "timeUnixNano": str(LAST_NS),
            "observedTimeUnixNano": str(LAST_NS),
            "severityNumber": 24,
            "body": {"arrayValue": {"values": [sv("a"), {"doubleValue": "-Infinity"}, {"boolValue": True}]}},
            "spanId": "0000000000000001",
        },
        {  # the last second of a day, the observed time the next day
            "timeUnixNano": BASE_NS + 14_399_999_999_999,
            "observedTimeUnixNano": BASE_NS + 14_400_000_000_000,
            "severityNumber": 9,
            "body": {"doubleValue": 1e-300},
            "attributes": [kv("exception.message", sv("only a message")), kv("code.lineno", sv("not a line"))],
        },
    ]


def _dpoint(ns: int, **value: Any) -> dict[str, Any]:
    return {"startTimeUnixNano": BASE_NS - 3_600_000_000_000, "timeUnixNano": ns, **value}


def sample_metrics() -> list[dict[str, Any]]:
    """Metric lines covering every kind and column edge (each data point of a metric at its own instant)."""
    ints = [I64_MIN, I64_MAX, 0, -1, 2**53 + 1]
    return [
        {
            "name": "process.memory.rss",
            "unit": "By",
            "description": WEIRD,
            "gauge": {
                "dataPoints": [
                    *(_dpoint(BASE_NS + i, asInt=str(v)) for i, v in enumerate(ints)),
                    *(_dpoint(BASE_NS + 100 + i, asDouble=v) for i, v in enumerate(DOUBLES)),
                    _dpoint(BASE_NS + 200, asDouble="NaN"),
                    _dpoint(BASE_NS + 201, asDouble="Infinity", attributes=EVERY_ATTRIBUTE_KIND),
                    {"timeUnixNano": FIRST_NS, "asDouble": 0.5},
                    {"timeUnixNano": str(LAST_NS), "startTimeUnixNano": str(LAST_NS), "asInt": 1},
                ]
            },
            "scope": {"name": "automagik_telemetry", "version": "0.2.0"},
        },
        {
            "name": "http.server.requests",
            "unit": "{request}",
            "sum": {
                "aggregationTemporality": 2,
                "isMonotonic": True,
                "dataPoints": [
                    _dpoint(BASE_NS + 60_000_000_000 * i, asInt=100 * i, attributes=[kv("route", sv("/a"))])
                    for i in range(3)
                ],
            },
        },
        {
            "name": "queue.depth.change",
            "sum": {
                "aggregationTemporality": "AGGREGATION_TEMPORALITY_DELTA",
                "isMonotonic": False,
                "dataPoints": [_dpoint(BASE_NS + 7, asDouble=-2.5), _dpoint(BASE_NS + 8, asInt=-3)],
            },
        },
        {
            "name": "http.server.duration",
            "unit": "s",
            "histogram": {
                "aggregationTemporality": "CUMULATIVE",
                "dataPoints": [
                    _dpoint(
                        BASE_NS + 9,
                        count=str(U64_MAX),
                        sum=1234.5,
                        min=0.001,
                        max=9999.5,
                        bucketCounts=[0, str(U64_MAX), *range(1, len(BOUNDS))],
                        explicitBounds=BOUNDS,
                        attributes=[kv("route", sv("/checkout"))],
                    ),
                    _dpoint(BASE_NS + 10, count=0, bucketCounts=[0], explicitBounds=[]),
                    _dpoint(BASE_NS + 11, count=4, sum=0.1, bucketCounts=[], explicitBounds=[]),
                    _dpoint(BASE_NS + 12, count=2, sum="NaN", bucketCounts=[1, 1], explicitBounds=[-1.5]),
                ],
            },
        },
    ]


def log_rows(profile: Profile) -> list[dict[str, Any]]:
    rows = []
    for resource_line in RESOURCES:
        resource = parse_resource(resource_line)
        rows += [transform_log(line(record), resource, profile) for record in sample_logs()]
    return rows


def metric_rows(profile: Profile) -> list[dict[str, Any]]:
    rows = []
    for resource_line in RESOURCES:
        resource = parse_resource(resource_line)
        for m in sample_metrics():
            rows += transform_metric(line(m), resource, profile)
    return rows


def log_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["service_name"], row["timestamp_ns"])


def metric_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["service_name"], row["metric_name"], row["timestamp_ns"])


def read_back(text: str, key: Callable[[dict[str, Any]], tuple[Any, ...]]) -> dict[tuple[Any, ...], dict[str, Any]]:
    out = {}
    for raw in text.splitlines():
        row = orjson.loads(raw)
        for column in INT64_COLUMNS:
            if column in row:
                row[column] = int(row[column])
        for column in INT64_ARRAYS:
            if column in row:
                row[column] = [int(x) for x in row[column]]
        for column in FLOAT_COLUMNS:
            if column in row:
                row[column] = float(row[column])
        for column in FLOAT_ARRAYS:
            if column in row:
                row[column] = [float(x) for x in row[column]]
        assert key(row) not in out, key(row)
        out[key(row)] = row
    return out


def assert_same_rows(
    got: dict[tuple[Any, ...], dict[str, Any]],
    rows: list[dict[str, Any]],
    key: Callable[[dict[str, Any]], tuple[Any, ...]],
) -> None:
    """Every row read back equals the row sent, column by column (the same column names, no more)."""
    assert sorted(got) == sorted(key(r) for r in rows)
    for row in rows:
        back = got[key(row)]
        assert set(back) == set(row), key(row)
        for column, value in row.items():
            assert back[column] == value, (key(row), column, back[column], value)
            if type(value) is float:  # the same double, bit for bit
                assert struct.pack("<d", back[column]) == struct.pack("<d", value), (key(row), column)


# ------------------------------------------------------------------------------------------- engines

Execute = Callable[[str], str]


def _insert(sink: Sink, row_keys: RowKeys, rows: list[dict[str, Any]], token: str) -> Profile:
    detected = sink.detect()
    assert row_keys(detected.profile) <= set(detected.columns)
    result = sink.insert(encode_rows(rows), token)
    assert result.ok, sink.explain(result)
    return detected.profile


@pytest.fixture
def http_sink(clickhouse: Any, clickhouse_db: str) -> Iterator[ClickHouseHttpSink]:
    """The traces sink of a database on the server fixture with the three tables ``schema.apply`` creates."""
    assert apply(clickhouse.query, pick_profile(clickhouse.version), clickhouse_db, "traces", 0) == [1, 2, 3, 4]
    sink = ClickHouseHttpSink(endpoint=clickhouse.url, database=clickhouse_db, compression="auto")
    try:
        yield sink
    finally:
        sink.close()


@pytest.fixture
def embedded_sink(chdb_session_factory: Callable[..., Any], tmp_path: Path) -> Iterator[EmbeddedSink]:
    """The traces sink of a fresh chDB store with the three tables ``schema.apply`` creates (modern)."""
    chdb_session_factory("released").close()  # chDB opens one data path per process: free it for the store
    sink = EmbeddedSink(str(tmp_path / "store"), "tel", serve_queries=False, tables=Tables())
    try:
        assert apply(sink.query, Profile.MODERN, "tel", "traces", 0) == [1, 2, 3, 4]
        yield sink
    finally:
        sink.close()


def _select(execute: Execute, target: str) -> str:
    return execute(f"SELECT * FROM {target} SETTINGS output_format_json_quote_64bit_integers = 0 FORMAT JSONEachRow")


# -------------------------------------------------------------------------- ClickHouse 18.16 server


@pytest.mark.clickhouse
def test_log_rows_read_back_column_for_column_from_the_server(clickhouse: Any, http_sink: ClickHouseHttpSink) -> None:
    logs = http_sink.for_table("logs", log_row_keys)
    try:
        profile = pick_profile(clickhouse.version)
        rows = log_rows(profile)
        assert _insert(logs, log_row_keys, rows, "a:logs:1-6:0") is profile
        assert len(encode_rows(rows)) > logs.compression_threshold  # a compressed body, as the shipper sends
        out = clickhouse.query(
            f"SELECT * FROM {logs.target} FORMAT JSONEachRow", settings={"output_format_json_quote_64bit_integers": 0}
        )
        assert_same_rows(read_back(out, log_key), rows, log_key)
        _check_log_columns(clickhouse.query, logs.target, profile)
    finally:
        logs.close()


@pytest.mark.clickhouse
def test_metric_rows_read_back_column_for_column_from_the_server(
    clickhouse: Any, http_sink: ClickHouseHttpSink
) -> None:
    metrics = http_sink.for_table("metrics", metric_row_keys)
    try:
        profile = pick_profile(clickhouse.version)
        rows = metric_rows(profile)
        assert _insert(metrics, metric_row_keys, rows, "a:metrics:1-4:0") is profile
        out = clickhouse.query(
            f"SELECT * FROM {metrics.target} FORMAT JSONEachRow",
            settings={"output_format_json_quote_64bit_integers": 0},
        )
        assert_same_rows(read_back(out, metric_key), rows, metric_key)
        _check_metric_columns(clickhouse.query, metrics.target, profile)
    finally:
        metrics.close()


@pytest.mark.clickhouse
def test_the_1816_server_keeps_every_double_within_two_units_in_the_last_place(
    clickhouse: Any, http_sink: ClickHouseHttpSink
) -> None:
    """18.16's text parser rounds some doubles to a neighbour (its output is exact): a legacy table's
    value_double, histogram_sum/min/max and bounds are then that close, not equal (docs/schema.md)."""
    rng = random.Random(7)
    values = [rng.uniform(-1e6, 1e6) for _ in range(300)]
    values += [struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0] for _ in range(300)]
    values = [v for v in values if math.isfinite(v)]
    points = [{"timeUnixNano": BASE_NS + i, "asDouble": v} for i, v in enumerate(values)]
    profile = pick_profile(clickhouse.version)
    rows = transform_metric(line({"name": "d", "gauge": {"dataPoints": points}}), parse_resource(b"{}"), profile)
    metrics = http_sink.for_table("metrics", metric_row_keys)
    try:
        assert _insert(metrics, metric_row_keys, rows, "t") is profile
        out = clickhouse.query(f"SELECT timestamp_ns, value_double FROM {metrics.target} FORMAT JSONEachRow")
    finally:
        metrics.close()
    got = {int(r["timestamp_ns"]): float(r["value_double"]) for r in map(orjson.loads, out.splitlines())}
    assert len(got) == len(values)
    for i, v in enumerate(values):
        assert abs(got[BASE_NS + i] - v) <= 2 * math.ulp(v), (v, got[BASE_NS + i])
    if profile is Profile.MODERN:  # an external modern server parses exactly
        assert [got[BASE_NS + i] for i in range(len(values))] == values


# ------------------------------------------------------------------------------------ chDB (modern)


@pytest.mark.chdb
def test_log_rows_read_back_column_for_column_from_chdb(embedded_sink: EmbeddedSink) -> None:
    logs = embedded_sink.for_table("logs", log_row_keys)
    rows = log_rows(Profile.MODERN)
    assert _insert(logs, log_row_keys, rows, "a:logs:1-6:0") is Profile.MODERN
    assert_same_rows(read_back(_select(logs.query, logs.target), log_key), rows, log_key)
    _check_log_columns(logs.query, logs.target, Profile.MODERN)


@pytest.mark.chdb
def test_metric_rows_read_back_column_for_column_from_chdb(embedded_sink: EmbeddedSink) -> None:
    metrics = embedded_sink.for_table("metrics", metric_row_keys)
    rows = metric_rows(Profile.MODERN)
    assert _insert(metrics, metric_row_keys, rows, "a:metrics:1-4:0") is Profile.MODERN
    assert_same_rows(read_back(_select(metrics.query, metrics.target), metric_key), rows, metric_key)
    _check_metric_columns(metrics.query, metrics.target, Profile.MODERN)


@pytest.mark.chdb
def test_a_resent_logs_or_metrics_batch_is_stored_once_on_chdb(embedded_sink: EmbeddedSink) -> None:
    for table, row_keys, rows in (
        ("logs", log_row_keys, log_rows(Profile.MODERN)),
        ("metrics", metric_row_keys, metric_rows(Profile.MODERN)),
    ):
        sink = embedded_sink.for_table(table, row_keys)
        body = encode_rows(rows)
        sink.detect()
        for _ in range(2):
            assert sink.insert(body, f"agent:{table}:1-9:0").ok
        assert sink.query(f"SELECT count() FROM {sink.target}") == f"{len(rows)}\n"
        assert sink.insert(body, f"agent:{table}:10-19:0").ok  # another batch's token: stored
        assert sink.query(f"SELECT count() FROM {sink.target}") == f"{2 * len(rows)}\n"


@pytest.mark.chdb
def test_the_embedded_sink_creates_and_fills_logs_and_metrics_tables_of_any_name(
    chdb_session_factory: Callable[..., Any], tmp_path: Path
) -> None:
    chdb_session_factory("released").close()
    tables = Tables(traces="spans", logs="app_logs", metrics="app_points")
    sink = EmbeddedSink(str(tmp_path / "store"), "obs", "spans", serve_queries=False, tables=tables)
    try:
        logs = sink.for_table("app_logs", log_row_keys)
        metrics = sink.for_table("app_points", metric_row_keys)
        assert _insert(logs, log_row_keys, log_rows(Profile.MODERN), "l") is Profile.MODERN  # creates all three
        assert _insert(metrics, metric_row_keys, metric_rows(Profile.MODERN), "m") is Profile.MODERN
        for table in ("spans", "app_logs", "app_points"):
            assert table_columns(sink.query, "obs", table), table
        for table in ("traces", "logs", "metrics"):
            assert not table_columns(sink.query, "obs", table), table
        assert_same_rows(read_back(_select(sink.query, "obs.app_logs"), log_key), log_rows(Profile.MODERN), log_key)
        got = read_back(_select(sink.query, "obs.app_points"), metric_key)
        assert_same_rows(got, metric_rows(Profile.MODERN), metric_key)
    finally:
        sink.close()


# ------------------------------------------------------------------------- what queries see (both)


def _tsv(execute: Execute, sql: str) -> str:
    return execute(sql + " FORMAT TabSeparated")


def _check_log_columns(execute: Execute, target: str, profile: Profile) -> None:
    """The stored values as queries use them: times agree with the nanoseconds, lifted columns, lookups."""
    if profile is Profile.MODERN:
        bad = _tsv(
            execute,
            f"SELECT count() FROM {target} WHERE toUnixTimestamp64Nano(timestamp) != timestamp_ns "
            "SETTINGS session_timezone = 'Asia/Kolkata'",
        )
        logger = "attributes['logger.name']"
        observed = "toUnixTimestamp64Nano(observed_timestamp)"
    else:
        bad = _tsv(
            execute,
            f"SELECT count() FROM {target} "
            "WHERE toUInt64(toUnixTimestamp(timestamp)) != intDiv(timestamp_ns, 1000000000)",
        )
        logger = "attribute_values[indexOf(attribute_keys, 'logger.name')]"
        observed = "observed_timestamp_ns"
    assert bad == "0\n"
    got = _tsv(
        execute,
        f"SELECT {logger}, {observed}, severity_number, severity_text, is_exception, exception_type, source_file, "
        f"source_line, source_function, trace_id, span_id FROM {target} "
        f"WHERE service_name = 'my-app' AND timestamp_ns = {BASE_NS + 1}",
    )
    assert got == (
        f"my-app.payments\t{BASE_NS + 999_999_999}\t17\tERROR\t1\tValueError\t/srv/app/payments.py\t42\tcharge\t"
        f"{TRACE.lower()}\t{SPAN.lower()}\n"
    )
    last = _tsv(execute, f"SELECT toString(timestamp), toDate(timestamp) FROM {target} WHERE timestamp_ns = {LAST_NS}")
    text = "2105-12-31 23:59:59.999999999" if profile is Profile.MODERN else "2105-12-31 23:59:59"
    assert last == f"{text}\t2105-12-31\n" * 2
    # One log record per day partition it falls in, whatever the server's time zone (UTC columns).
    days = _tsv(execute, f"SELECT toDate(timestamp) AS day, count() FROM {target} GROUP BY day ORDER BY day")
    # 18.16 shows day 0 (1970-01-01) as its "zero date".
    first_day = "1970-01-01" if profile is Profile.MODERN or days.startswith("1970") else "0000-00-00"
    assert days == f"{first_day}\t2\n2024-10-22\t8\n2105-12-31\t2\n"
    severities = _tsv(
        execute, f"SELECT severity_number, count() FROM {target} GROUP BY severity_number ORDER BY severity_number"
    )
    assert severities == "0\t2\n1\t2\n9\t2\n14\t2\n17\t2\n24\t2\n"


def _check_metric_columns(execute: Execute, target: str, profile: Profile) -> None:
    ints = _tsv(
        execute,
        f"SELECT value_int, value_double FROM {target} WHERE service_name = 'my-app' "
        f"AND metric_name = 'process.memory.rss' AND timestamp_ns BETWEEN {BASE_NS} AND {BASE_NS + 4} "
        "ORDER BY timestamp_ns",
    )
    # value_int is exact; value_double is the nearest double (2**53 + 1 has none of its own).
    assert [(int(i), float(d)) for i, d in (r.split("\t") for r in ints.splitlines())] == [
        (I64_MIN, -(2.0**63)),
        (I64_MAX, 2.0**63),
        (0, 0.0),
        (-1, -1.0),
        (2**53 + 1, 2.0**53),
    ]
    histogram = _tsv(
        execute,
        f"SELECT histogram_count, length(histogram_bucket_counts), length(histogram_explicit_bounds), "
        f"histogram_bucket_counts[2], histogram_explicit_bounds[1], arraySum(histogram_bucket_counts) "
        f"FROM {target} WHERE service_name = '' AND timestamp_ns = {BASE_NS + 9}",
    )
    total = (U64_MAX + sum(range(1, len(BOUNDS)))) % (1 << 64)  # arraySum of UInt64 wraps around
    assert histogram == f"{U64_MAX}\t{len(BOUNDS) + 1}\t{len(BOUNDS)}\t{U64_MAX}\t0.005\t{total}\n"
    kinds = _tsv(
        execute,
        f"SELECT metric_type, aggregation_temporality, is_monotonic, count() FROM {target} "
        "WHERE service_name = 'my-app' GROUP BY metric_type, aggregation_temporality, is_monotonic "
        "ORDER BY metric_type, aggregation_temporality",
    )
    assert kinds == "GAUGE\tUNSPECIFIED\t0\t19\nHISTOGRAM\tCUMULATIVE\t0\t4\nSUM\tCUMULATIVE\t1\t3\nSUM\tDELTA\t0\t2\n"
    route = "attributes['route']" if profile is Profile.MODERN else "attribute_values[indexOf(attribute_keys, 'route')]"
    rate = _tsv(
        execute,
        f"SELECT {route} AS route, (max(value_int) - min(value_int)) / ((max(timestamp_ns) - min(timestamp_ns)) / 1e9) "
        f"FROM {target} WHERE metric_name = 'http.server.requests' AND service_name = 'my-app' GROUP BY route",
    )
    assert rate == "/a\t1.6666666666666667\n"
