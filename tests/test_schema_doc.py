"""docs/schema.md stays true to the tables `schema apply` creates and to the transform.

A newcomer reads docs/schema.md instead of the SQL: its column tables (marked ``<!-- schema-columns:
NAME -->``) must list exactly the columns, types and codecs the server reports for the table
`schema.apply` creates, on the real ClickHouse 18.16 (legacy) and on chDB 26.9 (modern); the clauses of
its "Table layout" block must be in ``SHOW CREATE TABLE``; and every SQL block under "## Example
queries" (labelled ``-- both profiles``, ``-- modern profile`` or ``-- legacy profile`` on its first
line) must run, and return rows, on the profiles it is labelled for, against rows made by the
transform. The doc's legacy-to-modern conversion must give the rows the modern transform gives, and its
dedup-window fix for a legacy table on a modern server must make a re-sent batch be dropped.
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
from automagik_telemetry_agent.clickhouse.rows import (
    LIFTED_RESOURCE_ATTRIBUTES,
    Profile,
    encode_rows,
    parse_resource,
    transform_span,
)
from automagik_telemetry_agent.clickhouse.schema import apply, pick_profile, split_statements, table_columns

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "schema.md"
DOC_DATABASE = "telemetry"  # the database name the doc's SQL uses
LABELS = {
    "both profiles": {Profile.MODERN, Profile.LEGACY},
    "modern profile": {Profile.MODERN},
    "legacy profile": {Profile.LEGACY},
}

Execute = Callable[[str], str]


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


def layout_clauses(profile: Profile) -> list[str]:
    """The PARTITION BY / ORDER BY / SETTINGS / INDEX lines of the doc's layout block for ``profile``."""
    block = re.search(r"## Table layout and why\n+```\n(.*?)```", DOC.read_text(), re.S)
    assert block is not None, "docs/schema.md: no layout block under '## Table layout and why'"
    clauses: dict[str, list[str]] = {}
    current: list[str] = []
    for line in block.group(1).splitlines():
        m = re.match(r"(modern|legacy)\b", line)
        if m:
            current = clauses.setdefault(m.group(1), [])
            continue
        clause = line.split("--")[0].strip()
        if clause.startswith(("PARTITION BY", "ORDER BY", "SETTINGS", "INDEX")):
            current.append(clause)
    assert clauses.get(profile.value), f"layout block lists nothing for {profile.value}"
    return clauses[profile.value]


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


# ------------------------------------------------------------------------------------------- checks


def check_columns(execute: Execute, database: str, profile: Profile) -> None:
    """The doc's column tables (traces of ``profile``, schema_migrations) equal the server's, in order."""
    for name, table in ((profile.value, "traces"), ("schema_migrations", "schema_migrations")):
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
    create = execute(f"SHOW CREATE TABLE {database}.traces FORMAT TabSeparatedRaw")
    flat = " ".join(create.replace("`", "").split())
    for clause in layout_clauses(profile):
        assert " ".join(clause.split()) in flat, f"layout clause {clause!r} is not in:\n{create}"


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


# -------------------------------------------------------------------------------------- pure checks


def test_documented_columns_are_the_columns_the_transform_fills() -> None:
    for profile in Profile:
        assert {r["column"] for r in doc_table(profile.value)} == set(profile_row_keys(profile)), profile


def test_lifted_resource_attributes_table_and_sources_match_the_transform() -> None:
    text = DOC.read_text()
    table = re.search(r"\| resource attribute \| column \|\n\|[- |]+\|\n((?:\|.*\|\n)+)", text)
    assert table is not None, "docs/schema.md: no 'resource attribute | column' table"
    rows = dict(tuple(_cell(c) for c in line.strip("|").split("|")) for line in table.group(1).splitlines())
    assert rows == LIFTED_RESOURCE_ATTRIBUTES
    for profile in Profile:
        for row in doc_table(profile.value):
            attribute = next((k for k, v in LIFTED_RESOURCE_ATTRIBUTES.items() if v == row["column"]), None)
            if attribute is not None:
                assert row["OTLP source"] == f"resource attribute {attribute}", (profile, row)


def test_example_queries_are_labelled_and_cover_both_profiles() -> None:
    queries = example_queries()
    both = [title for title, profiles, _ in queries if len(profiles) == 2]
    assert len(both) >= 4, both  # spans by name, p95, errors, trace lookup at least
    assert doc_trace_ids(), "the trace lookup example names no trace id"


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
    clickhouse.query(
        f"INSERT INTO {clickhouse_db}.traces FORMAT JSONEachRow", data=rows_body(profile, span_lines(time.time_ns()))
    )
    assert check_queries(clickhouse.query, clickhouse_db, profile) >= 5


# ------------------------------------------------------------------------------------ modern: chDB


@pytest.fixture(scope="module")
def chdb_modern(chdb_session_factory: Callable[..., Any]) -> Iterator[Execute]:
    """A chDB session with ``telemetry.traces`` created by ``schema.apply`` (modern) and test rows in it."""
    session = chdb_session_factory(f"schema_doc_{uuid.uuid4().hex[:8]}")

    def execute(sql: str) -> str:
        return str(session.query(sql))

    assert apply(execute, Profile.MODERN, DOC_DATABASE, "traces", 0) == [1]
    body = rows_body(Profile.MODERN, span_lines(time.time_ns()))
    execute(f"INSERT INTO {DOC_DATABASE}.traces FORMAT JSONEachRow\n" + body.decode())
    yield execute


@pytest.mark.chdb
def test_doc_columns_and_layout_match_the_table_schema_apply_creates_on_chdb(chdb_modern: Execute) -> None:
    check_columns(chdb_modern, DOC_DATABASE, Profile.MODERN)


@pytest.mark.chdb
def test_example_queries_return_rows_on_chdb(chdb_modern: Execute) -> None:
    assert check_queries(chdb_modern, DOC_DATABASE, Profile.MODERN) >= 5


@pytest.mark.chdb
def test_doc_legacy_to_modern_conversion_gives_the_modern_transforms_rows(chdb_modern: Execute) -> None:
    (block,) = [b for b in sql_blocks(DOC.read_text()) if b.startswith("INSERT INTO telemetry_v2.traces")]
    assert apply(chdb_modern, Profile.LEGACY, "legacy_src", "traces", 0) == [1]
    assert apply(chdb_modern, Profile.MODERN, "telemetry_v2", "traces", 0) == [1]
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
