"""docs/schema.md stays true to the tables `schema apply` creates and to the transforms.

A newcomer reads docs/schema.md instead of the SQL: its column tables (marked ``<!-- schema-columns:
NAME -->``: ``modern``/``legacy`` for the traces table, ``logs-modern``, ``logs-legacy``,
``metrics-modern``, ``metrics-legacy``, ``schema_migrations``) must list exactly the columns, types and
codecs the server reports for the tables `schema.apply` creates, on the real ClickHouse 18.16 (legacy)
and on chDB 26.9 (modern); the clauses of its "Table layout" block must be in each table's ``SHOW
CREATE TABLE``; and every SQL block under "## Example queries" (labelled ``-- both profiles``, ``--
modern profile`` or ``-- legacy profile`` on its first line) must run, and return rows, on the
profiles it is labelled for, against spans, log records and metrics made by the transforms (the rate
and quantile examples must give the numbers the test data implies). The doc's legacy-to-modern
conversions must give the rows the modern transforms give, and its dedup-window fix for a legacy
table on a modern server must make a re-sent batch be dropped.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from doc_links import broken_links
from shipper.shipper_helpers import apply_schema

from automagik_telemetry_agent.clickhouse.http import profile_row_keys
from automagik_telemetry_agent.clickhouse.log_rows import LIFTED_LOG_ATTRIBUTES, log_row_keys, transform_log
from automagik_telemetry_agent.clickhouse.metric_rows import metric_row_keys, transform_metric
from automagik_telemetry_agent.clickhouse.rows import (
    LIFTED_RESOURCE_ATTRIBUTES,
    OPTIONAL_SPAN_COLUMNS,
    Profile,
    encode_rows,
    parse_resource,
    transform_span,
)
from automagik_telemetry_agent.clickhouse.schema import apply, pick_profile, split_statements, table_columns
from automagik_telemetry_agent.clickhouse.sink import RowKeys

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "schema.md"
DOC_DATABASE = "telemetry"  # the database name the doc's SQL uses
LABELS = {
    "both profiles": {Profile.MODERN, Profile.LEGACY},
    "modern profile": {Profile.MODERN},
    "legacy profile": {Profile.LEGACY},
}

Execute = Callable[[str], str]
#: The three tables `schema apply` creates (default names) and the columns their rows fill, by profile.
TABLES: dict[str, RowKeys] = {"traces": profile_row_keys, "logs": log_row_keys, "metrics": metric_row_keys}


def doc_table_name(table: str, profile: Profile) -> str:
    """The ``schema-columns`` marker of ``table``'s column table for ``profile`` (traces': ``modern``)."""
    return profile.value if table == "traces" else f"{table}-{profile.value}"


# ------------------------------------------------------------------------------------------ the doc


def _cell(text: str) -> str:
    return text.strip().replace("`", "")


def doc_table(name: str, text: str | None = None) -> list[dict[str, str]]:
    """The markdown table after ``<!-- schema-columns: name -->``, as rows keyed by header (no backquotes)."""
    lines = (DOC.read_text() if text is None else text).splitlines()
    marker = f"<!-- schema-columns: {name} -->"
    assert marker in lines, f"docs/schema.md has no {marker}"
    table = []
    for line in lines[lines.index(marker) + 1 :]:
        if not line.startswith("|"):
            break
        table.append([_cell(c) for c in line.strip().strip("|").split("|")])
    header, rule, *rows = table
    assert set("".join(rule)) <= set("-: "), f"{name}: the second line of the table is not a rule"
    return [dict(zip(header, row, strict=True)) for row in rows]


def doc_section(title: str) -> str:
    text = DOC.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def sql_blocks(text: str) -> list[str]:
    return re.findall(r"```sql\n(.*?)```", text, re.S)


def example_queries() -> list[tuple[str, set[Profile], str]]:
    """(title, profiles, sql) of every SQL block under "## Example queries"."""
    out = []
    for block in sql_blocks(doc_section("Example queries")):
        first = block.splitlines()[0]
        m = re.fullmatch(r"-- (both profiles|modern profile|legacy profile)(?:: .+)?", first)
        assert m is not None, f"example query without a profile label on its first line: {first!r}"
        statements = split_statements(block)
        assert len(statements) == 1, f"one statement per example block: {first!r}"
        out.append((first, LABELS[m.group(1)], statements[0]))
    return out


def for_database(sql: str, database: str) -> str:
    """The doc's SQL with its database ``telemetry`` renamed (tests run in their own database)."""
    sql = re.sub(rf"\b{DOC_DATABASE}\.", database + ".", sql)
    return sql.replace(f"'{DOC_DATABASE}'", f"'{database}'")


def layout_clauses(profile: Profile, table: str = "traces") -> list[str]:
    """The PARTITION BY / ORDER BY / SETTINGS / INDEX lines of the doc's layout block for ``table`` of
    ``profile`` (its entry starts ``modern (modern/0002_logs.sql):``)."""
    block = re.search(r"## Table layout and why\n+```\n(.*?)```", DOC.read_text(), re.S)
    assert block is not None, "docs/schema.md: no layout block under '## Table layout and why'"
    clauses: dict[tuple[str, str], list[str]] = {}
    current: list[str] = []
    for line in block.group(1).splitlines():
        m = re.match(r"(modern|legacy) \((modern|legacy)/\d{4}_(\w+)\.sql\):$", line)
        if m:
            assert m.group(1) == m.group(2), line
            current = clauses.setdefault((m.group(1), m.group(3)), [])
            continue
        assert not re.match(r"(modern|legacy)\b", line), f"layout block: entry header without its file: {line!r}"
        clause = line.split("--")[0].strip()
        if clause.startswith(("PARTITION BY", "ORDER BY", "SETTINGS", "INDEX")):
            current.append(clause)
    assert clauses.get((profile.value, table)), f"layout block lists nothing for {table} ({profile.value})"
    return clauses[(profile.value, table)]


# ---------------------------------------------------------------------------------------- test data

RESOURCE = orjson.dumps(
    {
        "attributes": [
            {"key": "service.name", "value": {"stringValue": "shop"}},
            {"key": "project.name", "value": {"stringValue": "shop"}},
            {"key": "project.version", "value": {"stringValue": "1.4.2"}},
            {"key": "deployment.environment", "value": {"stringValue": "production"}},
            {"key": "host.name", "value": {"stringValue": "web-1"}},
            {"key": "process.pid", "value": {"intValue": "4242"}},
            {"key": "telemetry.sdk.name", "value": {"stringValue": "automagik-telemetry"}},
        ]
    }
)


def doc_trace_ids() -> list[str]:
    """The trace ids the example queries look up: the test data holds those traces."""
    return sorted(set(re.findall(r"'([0-9a-f]{32})'", doc_section("Example queries"))))


def span_lines(now_ns: int) -> list[bytes]:
    """A few recent traces (the doc's trace ids among them): server, client and failing spans."""
    lines = []
    trace_ids = [*doc_trace_ids(), *(f"{n + 1:032x}" for n in range(3))]
    for t, trace_id in enumerate(trace_ids):
        start = now_ns - 120_000_000_000 + t * 1_000_000_000
        root = f"{t + 1:08x}00000001"
        lines.append(
            orjson.dumps(
                {
                    "traceId": trace_id,
                    "spanId": root,
                    "name": "GET /checkout",
                    "kind": 2,
                    "startTimeUnixNano": str(start),
                    "endTimeUnixNano": str(start + 40_000_000 + t),
                    "attributes": [
                        {"key": "http.route", "value": {"stringValue": "/checkout"}},
                        {"key": "http.status_code", "value": {"intValue": "200"}},
                    ],
                    "status": {"code": 1},
                }
            )
        )
        lines.append(
            orjson.dumps(
                {
                    "traceId": trace_id,
                    "spanId": f"{t + 1:08x}00000002",
                    "parentSpanId": root,
                    "name": "db.query",
                    "kind": "SPAN_KIND_CLIENT",
                    "startTimeUnixNano": str(start + 1_000_000),
                    "endTimeUnixNano": str(start + 9_000_000),
                    "attributes": [
                        {"key": "db.rows", "value": {"intValue": 3}},
                        {"key": "cached", "value": {"boolValue": False}},
                    ],
                }
            )
        )
        lines.append(
            orjson.dumps(
                {
                    "traceId": trace_id,
                    "spanId": f"{t + 1:08x}00000003",
                    "parentSpanId": root,
                    "name": "payment.charge",
                    "startTimeUnixNano": str(start + 10_000_000),
                    "endTimeUnixNano": str(start + 30_000_000),
                    "status": {"code": 2, "message": "card declined"},
                    "events": [
                        {
                            "timeUnixNano": str(start + 29_000_000),
                            "name": "exception",
                            "attributes": [
                                {"key": "exception.type", "value": {"stringValue": "ValueError"}},
                                {"key": "exception.message", "value": {"stringValue": "card declined"}},
                            ],
                        }
                    ],
                }
            )
        )
    return lines


def rows_body(profile: Profile, lines: list[bytes]) -> bytes:
    resource = parse_resource(RESOURCE)
    return encode_rows([transform_span(line, resource, profile) for line in lines])


def _kv(key: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"key": key, "value": value}


def log_lines(now_ns: int) -> list[bytes]:
    """Log records of the last minutes, written in the doc's traces: INFO, a WARNING with the word the
    body search looks for, and an ERROR carrying an exception; plus one outside any trace."""
    lines = []
    for t, trace_id in enumerate([*doc_trace_ids(), *(f"{n + 1:032x}" for n in range(3))]):
        start = now_ns - 120_000_000_000 + t * 1_000_000_000
        source = [
            _kv("code.filepath", {"stringValue": "/srv/shop/checkout.py"}),
            _kv("code.function", {"stringValue": "checkout"}),
        ]
        for i, (number, text, body, extra) in enumerate(
            [
                (9, "INFO", "GET /checkout", [_kv("code.lineno", {"intValue": 10})]),
                (13, "WARNING", "upstream timeout after 30s", [_kv("code.lineno", {"intValue": 20})]),
                (
                    17,
                    "ERROR",
                    "payment failed",
                    [
                        _kv("code.lineno", {"intValue": 30}),
                        _kv("exception.type", {"stringValue": "ValueError"}),
                        _kv("exception.message", {"stringValue": "card declined"}),
                        _kv("exception.stacktrace", {"stringValue": "Traceback (most recent call last): ..."}),
                    ],
                ),
            ]
        ):
            record = {
                "timeUnixNano": str(start + (i + 1) * 1_000_000),
                "observedTimeUnixNano": str(start + (i + 1) * 1_000_000 + 500),
                "severityNumber": number,
                "severityText": text,
                "body": {"stringValue": body},
                "attributes": [_kv("logger.name", {"stringValue": "shop.checkout"}), *source, *extra],
                "traceId": trace_id,
                "spanId": f"{t + 1:08x}0000000{i + 1}",
            }
            lines.append(orjson.dumps(record))
    lines.append(orjson.dumps({"observedTimeUnixNano": str(now_ns - 30_000_000_000), "body": {"intValue": 1}}))
    return lines


#: The test data's counter: requests per second of each route (a series each).
COUNTER_RATES = {"/checkout": 10, "/cart": 2}
#: The test data's histogram: bucket bounds, the first point's and the last point's bucket counts of
#: the one series whose counts grow (the other's stay put); its p95 is at most bounds[1] (0.5).
HISTOGRAM_BOUNDS = [0.1, 0.5, 1.0]
HISTOGRAM_FIRST = [10, 10, 10, 10]
HISTOGRAM_LAST = [100, 15, 13, 12]


def metric_lines(now_ns: int) -> list[bytes]:
    """Ten minutes of a gauge, a counter (two routes) and a histogram (two routes), all cumulative since
    an hour ago, as the Python client writes them (but several points per line)."""
    start = now_ns - 3_600_000_000_000
    times = [now_ns - 600_000_000_000 + m * 60_000_000_000 for m in range(10)]

    def point(t: int, route: str | None = None, **value: Any) -> dict[str, Any]:
        attributes = [] if route is None else [_kv("http.route", {"stringValue": route})]
        return {"startTimeUnixNano": str(start), "timeUnixNano": str(t), "attributes": attributes, **value}

    gauge = {
        "name": "process.memory.rss",
        "unit": "By",
        "gauge": {"dataPoints": [point(t, asInt=str(50_000_000 + 1000 * m)) for m, t in enumerate(times)]},
    }
    counter = {
        "name": "http.server.requests",
        "unit": "{request}",
        "sum": {
            "aggregationTemporality": 2,
            "isMonotonic": True,
            "dataPoints": [
                point(t, route, asInt=rate * 60 * m + 7)
                for route, rate in COUNTER_RATES.items()
                for m, t in enumerate(times)
            ],
        },
    }

    def hpoint(t: int, route: str, counts: list[int]) -> dict[str, Any]:
        return point(
            t,
            route,
            count=sum(counts),
            sum=0.25 * sum(counts),
            min=0.01,
            max=7.5,
            bucketCounts=counts,
            explicitBounds=HISTOGRAM_BOUNDS,
        )

    middle = [(a + b) // 2 for a, b in zip(HISTOGRAM_FIRST, HISTOGRAM_LAST, strict=True)]
    histogram = {
        "name": "http.server.duration",
        "unit": "s",
        "histogram": {
            "aggregationTemporality": "AGGREGATION_TEMPORALITY_CUMULATIVE",
            "dataPoints": [
                hpoint(times[0], "/checkout", HISTOGRAM_FIRST),
                hpoint(times[4], "/checkout", middle),
                hpoint(times[9], "/checkout", HISTOGRAM_LAST),
                hpoint(times[0], "/cart", [3, 2, 1, 0]),
                hpoint(times[9], "/cart", [3, 2, 1, 0]),
            ],
        },
    }
    return [orjson.dumps(m) for m in (gauge, counter, histogram)]


def log_body(profile: Profile, lines: list[bytes]) -> bytes:
    resource = parse_resource(RESOURCE)
    return encode_rows([transform_log(line, resource, profile) for line in lines])


def metric_body(profile: Profile, lines: list[bytes]) -> bytes:
    resource = parse_resource(RESOURCE)
    return encode_rows([row for line in lines for row in transform_metric(line, resource, profile)])


def bodies(profile: Profile, now_ns: int) -> dict[str, bytes]:
    """The test rows of each table, as JSONEachRow bodies."""
    return {
        "traces": rows_body(profile, span_lines(now_ns)),
        "logs": log_body(profile, log_lines(now_ns)),
        "metrics": metric_body(profile, metric_lines(now_ns)),
    }


# ------------------------------------------------------------------------------------------- checks


def check_columns(execute: Execute, database: str, profile: Profile) -> None:
    """The doc's column tables (traces, logs, metrics of ``profile``; schema_migrations) equal the
    server's, in order; the layout block's clauses for each table are in its SHOW CREATE TABLE."""
    tables = [(doc_table_name(table, profile), table) for table in TABLES]
    for name, table in [*tables, ("schema_migrations", "schema_migrations")]:
        documented = doc_table(name)
        actual = table_columns(execute, database, table)
        assert actual, f"{database}.{table} was not created"
        assert [(r["column"], r["type"]) for r in documented] == list(actual.items()), (
            f"docs/schema.md's {name} table does not list the columns of {table} as the server reports them"
        )
        if documented and "codec" in documented[0]:
            out = execute(
                f"SELECT name, compression_codec FROM system.columns WHERE database = '{database}' "
                f"AND table = '{table}' FORMAT TabSeparated"
            )
            codecs = dict(line.split("\t") for line in out.splitlines() if line)
            assert {r["column"]: f"CODEC({r['codec']})" for r in documented} == codecs, (
                f"docs/schema.md's {name} table: codecs differ from the server's"
            )
    for table in TABLES:
        create = execute(f"SHOW CREATE TABLE {database}.{table} FORMAT TabSeparatedRaw")
        flat = " ".join(create.replace("`", "").split())
        for clause in layout_clauses(profile, table):
            assert " ".join(clause.split()) in flat, f"layout clause {clause!r} of {table} is not in:\n{create}"


def check_queries(execute: Execute, database: str, profile: Profile) -> int:
    """Run every example labelled for ``profile``; each must return at least one row. Returns how many ran."""
    ran = 0
    for title, profiles, sql in example_queries():
        if profile not in profiles:
            continue
        out = execute(for_database(sql, database))
        assert out.strip(), f"example query {title!r} returned no rows on the {profile.value} profile:\n{sql}"
        ran += 1
    return ran


def example(profile: Profile, contains: str) -> str:
    """The one example query for ``profile`` whose SQL contains ``contains``."""
    (sql,) = [sql for _, profiles, sql in example_queries() if profile in profiles and contains in sql]
    return sql


def tsv_rows(execute: Execute, sql: str) -> list[list[str]]:
    return [line.split("\t") for line in execute(sql + "\nFORMAT TabSeparated").splitlines() if line]


def check_metric_answers(execute: Execute, database: str, profile: Profile) -> None:
    """The counter-rate and histogram-quantile examples give the numbers the test data implies."""
    rate = tsv_rows(execute, for_database(example(profile, "AS per_second"), database))
    assert [(service, name, float(value)) for service, name, value in rate] == [
        ("shop", "http.server.requests", float(sum(COUNTER_RATES.values())))
    ]
    ((name, _bounds, _counts, observations, bucket, p95),) = tsv_rows(
        execute, for_database(example(profile, "AS p95_at_most"), database)
    )
    increase = [b - a for a, b in zip(HISTOGRAM_FIRST, HISTOGRAM_LAST, strict=True)]
    assert (name, int(observations), int(bucket), float(p95)) == ("http.server.duration", sum(increase), 2, 0.5)
    running = [sum(increase[: i + 1]) for i in range(len(increase))]
    assert running[0] < 0.95 * sum(increase) <= running[1]  # bucket 2 is the first to reach 95 %


# -------------------------------------------------------------------------------------- pure checks


def test_documented_columns_are_the_columns_the_transform_fills() -> None:
    for profile in Profile:
        filled = set(profile_row_keys(profile)) | OPTIONAL_SPAN_COLUMNS  # 0004's: filled, but optional
        assert {r["column"] for r in doc_table(profile.value)} == filled, profile


def test_documented_logs_and_metrics_columns_are_the_columns_their_transforms_fill() -> None:
    for profile in Profile:
        for table in ("logs", "metrics"):
            documented = {r["column"] for r in doc_table(doc_table_name(table, profile))}
            assert documented == set(TABLES[table](profile)), (table, profile)


def test_the_column_counts_in_the_prose_are_those_of_the_column_tables() -> None:
    text = DOC.read_text()
    for table, heading in (
        ("traces", "## Columns"),
        ("logs", "## The logs table"),
        ("metrics", "## The metrics table"),
    ):
        section = text[text.index(f"\n{heading}\n") :]
        section = section[: section.find("\n## ", 1)]
        m = re.search(r"modern (?:\w+ )?table has (\d+) columns, the legacy one (\d+)", section)
        assert m is not None, f"{heading}: no 'has N columns, the legacy one M'"
        counts = tuple(len(doc_table(doc_table_name(table, p))) for p in (Profile.MODERN, Profile.LEGACY))
        assert (int(m.group(1)), int(m.group(2))) == counts, table


def test_lifted_resource_attributes_table_and_sources_match_the_transform() -> None:
    text = DOC.read_text()
    table = re.search(r"\| resource attribute \| column \|\n\|[- |]+\|\n((?:\|.*\|\n)+)", text)
    assert table is not None, "docs/schema.md: no 'resource attribute | column' table"
    rows = dict(tuple(_cell(c) for c in line.strip("|").split("|")) for line in table.group(1).splitlines())
    assert rows == LIFTED_RESOURCE_ATTRIBUTES
    for profile in Profile:
        for signal_table in TABLES:
            name = doc_table_name(signal_table, profile)
            for row in doc_table(name):
                attribute = next((k for k, v in LIFTED_RESOURCE_ATTRIBUTES.items() if v == row["column"]), None)
                if attribute is not None:
                    assert row["OTLP source"] == f"resource attribute {attribute}", (name, row)


def test_lifted_log_attributes_table_and_sources_match_the_transform() -> None:
    text = DOC.read_text()
    table = re.search(r"\| log attribute \| column \|\n *\|[- |]+\|\n((?: *\|.*\|\n)+)", text)
    assert table is not None, "docs/schema.md: no 'log attribute | column' table"
    cells = [[_cell(c) for c in line.strip().strip("|").split("|")] for line in table.group(1).splitlines()]
    assert {attribute: column for attribute, column in cells} == LIFTED_LOG_ATTRIBUTES
    for profile in Profile:
        by_column = {r["column"]: r for r in doc_table(doc_table_name("logs", profile))}
        for attribute, column in LIFTED_LOG_ATTRIBUTES.items():
            assert by_column[column]["OTLP source"] == f"log attribute {attribute}", (profile, column)


def test_example_queries_are_labelled_and_cover_both_profiles() -> None:
    queries = example_queries()
    both = [title for title, profiles, _ in queries if len(profiles) == 2]
    assert len(both) >= 4, both  # spans by name, p95, errors, trace lookup at least
    assert doc_trace_ids(), "the trace lookup example names no trace id"


def test_example_queries_cover_the_logs_and_metrics_questions() -> None:
    for profile in Profile:
        sqls = [sql for _, profiles, sql in example_queries() if profile in profiles]
        logs = [sql for sql in sqls if "FROM telemetry.logs" in sql]
        metrics = [sql for sql in sqls if "FROM telemetry.metrics" in sql]
        assert len(logs) >= 5 and len(metrics) >= 4, profile
        assert any("severity_number" in sql and "GROUP BY service_name" in sql for sql in logs)  # by severity
        assert any("trace_id = '" in sql for sql in logs)  # the logs of one trace
        assert any("is_exception = 1" in sql and "source_line" in sql for sql in logs)  # lifted columns
        assert any("metric_name = '" in sql and "value_double" in sql for sql in metrics)  # a metric by name
        example(profile, "AS per_second")  # a counter as a rate
        assert "arrayCumSum(counts)" in example(profile, "AS p95_at_most")  # a quantile from buckets
    # The body search: a token on modern (the bloom filter), a substring on legacy.
    assert "hasToken(body, 'timeout')" in example(Profile.MODERN, "hasToken(body")
    assert "LIKE '%timeout%'" in example(Profile.LEGACY, "FROM telemetry.logs\nWHERE body LIKE")


def test_relative_links_resolve() -> None:
    assert broken_links(DOC) == []


# ------------------------------------------------------------------------- legacy: ClickHouse 18.16


@pytest.mark.clickhouse
def test_doc_columns_and_layout_match_the_table_schema_apply_creates_on_the_server(
    clickhouse: Any, clickhouse_db: str
) -> None:
    apply_schema(clickhouse, clickhouse_db)
    check_columns(clickhouse.query, clickhouse_db, pick_profile(clickhouse.version))


@pytest.mark.clickhouse
def test_example_queries_return_rows_on_the_server(clickhouse: Any, clickhouse_db: str) -> None:
    apply_schema(clickhouse, clickhouse_db)
    profile = pick_profile(clickhouse.version)
    for table, body in bodies(profile, time.time_ns()).items():
        clickhouse.query(f"INSERT INTO {clickhouse_db}.{table} FORMAT JSONEachRow", data=body)
    assert check_queries(clickhouse.query, clickhouse_db, profile) >= 5 + 6 + 4
    check_metric_answers(clickhouse.query, clickhouse_db, profile)


# ------------------------------------------------------------------------------------ modern: chDB


@pytest.fixture(scope="module")
def chdb_modern(chdb_session_factory: Callable[..., Any]) -> Iterator[Execute]:
    """A chDB session with ``telemetry.traces``, ``logs`` and ``metrics`` created by ``schema.apply``
    (modern) and test rows in each."""
    session = chdb_session_factory(f"schema_doc_{uuid.uuid4().hex[:8]}")

    def execute(sql: str) -> str:
        return str(session.query(sql))

    assert apply(execute, Profile.MODERN, DOC_DATABASE, "traces", 0) == [1, 2, 3, 4]
    for table, body in bodies(Profile.MODERN, time.time_ns()).items():
        execute(f"INSERT INTO {DOC_DATABASE}.{table} FORMAT JSONEachRow\n" + body.decode())
    yield execute


@pytest.mark.chdb
def test_doc_columns_and_layout_match_the_table_schema_apply_creates_on_chdb(chdb_modern: Execute) -> None:
    check_columns(chdb_modern, DOC_DATABASE, Profile.MODERN)


@pytest.mark.chdb
def test_example_queries_return_rows_on_chdb(chdb_modern: Execute) -> None:
    assert check_queries(chdb_modern, DOC_DATABASE, Profile.MODERN) >= 5 + 6 + 4
    check_metric_answers(chdb_modern, DOC_DATABASE, Profile.MODERN)


@pytest.mark.chdb
def test_doc_body_search_uses_the_token_bloom_filter_on_chdb(chdb_modern: Execute) -> None:
    sql = for_database(example(Profile.MODERN, "hasToken(body"), DOC_DATABASE)
    plan = chdb_modern("EXPLAIN indexes = 1 " + sql)
    assert "idx_body" in plan, plan
    found = tsv_rows(chdb_modern, sql)
    assert found and all("timeout" in row[3].split() for row in found)


@pytest.mark.chdb
def test_doc_logs_of_a_trace_use_the_trace_id_bloom_filter_on_chdb(chdb_modern: Execute) -> None:
    sql = for_database(example(Profile.MODERN, "FROM telemetry.logs\nWHERE trace_id = '"), DOC_DATABASE)
    assert "idx_trace_id" in chdb_modern("EXPLAIN indexes = 1 " + sql)
    assert len(tsv_rows(chdb_modern, sql)) == 3  # the INFO, WARNING and ERROR records of that trace


@pytest.mark.chdb
@pytest.mark.parametrize("table", ["logs", "metrics"])
def test_doc_legacy_to_modern_conversion_of_logs_and_metrics_gives_the_modern_transforms_rows(
    chdb_modern: Execute, table: str
) -> None:
    (block,) = [b for b in sql_blocks(DOC.read_text()) if b.startswith(f"INSERT INTO telemetry_v2.{table}\n")]
    source, target = f"legacy_src_{table}", f"telemetry_v2_{table}"
    assert apply(chdb_modern, Profile.LEGACY, source, "traces", 0) == [1, 2, 3, 4]
    assert apply(chdb_modern, Profile.MODERN, target, "traces", 0) == [1, 2, 3, 4]
    now_ns = time.time_ns()
    legacy, modern = (bodies(profile, now_ns)[table] for profile in (Profile.LEGACY, Profile.MODERN))
    chdb_modern(f"INSERT INTO {source}.{table} FORMAT JSONEachRow\n" + legacy.decode())
    chdb_modern(for_database(block, source).replace("telemetry_v2.", f"{target}."))
    out = chdb_modern(
        f"SELECT * FROM {target}.{table} SETTINGS output_format_json_quote_64bit_integers = 0 FORMAT JSONEachRow"
    )

    def key(row: dict[str, Any]) -> tuple[Any, ...]:
        return (row["timestamp_ns"], row.get("metric_name", ""), json.dumps(row["attributes"], sort_keys=True))

    got = sorted((json.loads(line) for line in out.splitlines() if line), key=key)
    expected = sorted((json.loads(line) for line in modern.decode().splitlines()), key=key)
    assert len(got) == len(expected) > 0
    assert got == expected


@pytest.mark.chdb
def test_doc_legacy_to_modern_conversion_gives_the_modern_transforms_rows(chdb_modern: Execute) -> None:
    (block,) = [b for b in sql_blocks(DOC.read_text()) if b.startswith("INSERT INTO telemetry_v2.traces")]
    assert apply(chdb_modern, Profile.LEGACY, "legacy_src", "traces", 0) == [1, 2, 3, 4]
    assert apply(chdb_modern, Profile.MODERN, "telemetry_v2", "traces", 0) == [1, 2, 3, 4]
    lines = span_lines(time.time_ns())
    chdb_modern("INSERT INTO legacy_src.traces FORMAT JSONEachRow\n" + rows_body(Profile.LEGACY, lines).decode())
    chdb_modern(for_database(block, "legacy_src"))
    out = chdb_modern(
        "SELECT * FROM telemetry_v2.traces ORDER BY timestamp_ns, span_id "
        "SETTINGS output_format_json_quote_64bit_integers = 0 FORMAT JSONEachRow"
    )
    got = [json.loads(line) for line in out.splitlines() if line]
    resource = parse_resource(RESOURCE)
    expected = sorted(
        (transform_span(line, resource, Profile.MODERN) for line in lines),
        key=lambda r: (r["timestamp_ns"], r["span_id"]),
    )
    assert got == expected


@pytest.mark.chdb
def test_doc_dedup_window_fix_makes_a_legacy_table_on_a_modern_engine_drop_a_resent_batch(chdb_modern: Execute) -> None:
    (block,) = [b for b in sql_blocks(DOC.read_text()) if "MODIFY SETTING non_replicated_deduplication_window" in b]
    apply(chdb_modern, Profile.LEGACY, "legacy_dedup", "traces", 0)
    body = rows_body(Profile.LEGACY, span_lines(time.time_ns())).decode()

    def send(token: str) -> int:
        chdb_modern(
            f"INSERT INTO legacy_dedup.traces SETTINGS insert_deduplication_token = '{token}' "
            "FORMAT JSONEachRow\n" + body
        )
        return int(chdb_modern("SELECT count() FROM legacy_dedup.traces FORMAT TabSeparated"))

    rows = body.count("\n")
    assert (send("a:1-2:0"), send("a:1-2:0")) == (rows, 2 * rows)  # without a window the token does nothing
    chdb_modern(for_database(block, "legacy_dedup"))
    assert (send("a:3-4:0"), send("a:3-4:0")) == (3 * rows, 3 * rows)  # with it, the re-sent batch is dropped


@pytest.mark.chdb
@pytest.mark.parametrize("table", ["logs", "metrics"])
def test_doc_dedup_window_fix_works_for_legacy_logs_and_metrics_tables_on_a_modern_engine(
    chdb_modern: Execute, table: str
) -> None:
    (block,) = [b for b in sql_blocks(DOC.read_text()) if "MODIFY SETTING non_replicated_deduplication_window" in b]
    assert "telemetry.traces" in block and f"telemetry.{table}" in doc_section("Delivery semantics by server version")
    database = f"legacy_dedup_{table}"
    apply(chdb_modern, Profile.LEGACY, database, "traces", 0)
    body = bodies(Profile.LEGACY, time.time_ns())[table].decode()

    def send(token: str) -> int:
        chdb_modern(
            f"INSERT INTO {database}.{table} SETTINGS insert_deduplication_token = '{token}' "
            "FORMAT JSONEachRow\n" + body
        )
        return int(chdb_modern(f"SELECT count() FROM {database}.{table} FORMAT TabSeparated"))

    rows = body.count("\n")
    assert (send(f"a:{table}:1-2:0"), send(f"a:{table}:1-2:0")) == (rows, 2 * rows)
    chdb_modern(for_database(block, database).replace(f"{database}.traces", f"{database}.{table}"))
    assert (send(f"a:{table}:3-4:0"), send(f"a:{table}:3-4:0")) == (3 * rows, 3 * rows)
