"""Tests of automagik_telemetry_agent.clickhouse.schema: profile choice, migration rendering, and real engines.

The round trips run transform -> encode_rows -> ``INSERT ... FORMAT JSONEachRow`` -> ``SELECT`` and
compare every column exactly: on chDB (modern profile, ClickHouse 26.x) and on the real ClickHouse
18.16 server fixture (legacy profile).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from automagik_telemetry_agent.clickhouse import schema
from automagik_telemetry_agent.clickhouse.rows import Profile, encode_rows, parse_resource, transform_span
from automagik_telemetry_agent.clickhouse.schema import (
    Migration,
    SchemaError,
    apply,
    detect_table_profile,
    pick_profile,
    render_migrations,
    split_statements,
    table_columns,
)

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "clickhouse"


# ------------------------------------------------------------------------------------------ profiles


@pytest.mark.parametrize(
    ("version", "profile"),
    [
        ("18.16.1", Profile.LEGACY),
        ("1.1.54394", Profile.LEGACY),
        ("21.12.4.1", Profile.LEGACY),
        ("22.1.3.7", Profile.LEGACY),
        ("22.2.1.2139", Profile.MODERN),
        ("22.10.1.1", Profile.MODERN),
        ("23.8.9.54\n", Profile.MODERN),
        (" 24.3.2.23", Profile.MODERN),
        ("26.9.2.1", Profile.MODERN),
        ("v25.1.1.1-stable", Profile.MODERN),
    ],
)
def test_pick_profile(version: str, profile: Profile) -> None:
    assert pick_profile(version) is profile


@pytest.mark.parametrize("version", ["", "unknown", "22", "x.1"])
def test_pick_profile_rejects_garbage(version: str) -> None:
    with pytest.raises(ValueError, match="not a ClickHouse version"):
        pick_profile(version)


def test_detect_table_profile() -> None:
    assert detect_table_profile({"attributes": "Map(LowCardinality(String), String)"}) is Profile.MODERN
    assert detect_table_profile({"attributes": "Map(String, String)", "x": "UInt8"}) is Profile.MODERN
    assert detect_table_profile({"attribute_keys": "Array(String)"}) is Profile.LEGACY
    assert detect_table_profile({"attributes": "String"}) is None
    assert detect_table_profile({}) is None


# -------------------------------------------------------------------------------------- splitting


def test_split_statements() -> None:
    sql = """
    -- leading comment; with a semicolon
    CREATE TABLE a (s String DEFAULT 'x;y', t String DEFAULT 'it''s; \\' ;') ENGINE = Log;
    /* block; /* nested; */ still comment; */
    SELECT "we;ird", `back;tick` FROM b # hash comment;
    ;;
    -- trailing comment only;
    """
    assert split_statements(sql) == [
        "CREATE TABLE a (s String DEFAULT 'x;y', t String DEFAULT 'it''s; \\' ;') ENGINE = Log",
        'SELECT "we;ird", `back;tick` FROM b',
    ]
    assert split_statements("SELECT 1") == ["SELECT 1"]
    assert split_statements("  -- nothing\n") == []


@pytest.mark.parametrize("sql", ["SELECT 'abc", 'SELECT "x', "SELECT 1 /* x", "SELECT 1 /* /* x */"])
def test_split_statements_unterminated(sql: str) -> None:
    with pytest.raises(SchemaError, match="unterminated"):
        split_statements(sql)


# -------------------------------------------------------------------------------------- rendering


def test_render_modern() -> None:
    (m,) = render_migrations(Profile.MODERN, "telemetry", "traces", 30)
    assert (m.version, m.name, m.profile) == (1, "0001_traces", Profile.MODERN)
    (sql,) = m.statements
    assert sql.startswith("CREATE TABLE IF NOT EXISTS telemetry.traces")
    assert "TTL toDateTime(timestamp) + INTERVAL 30 DAY" in sql
    for needed in (
        "timestamp           DateTime64(9, 'UTC') CODEC(Delta, ZSTD(1))",
        "attributes          Map(LowCardinality(String), String) CODEC(ZSTD(1))",
        "INDEX idx_trace_id trace_id TYPE bloom_filter(0.001) GRANULARITY 1",
        "PARTITION BY toDate(timestamp)",
        "ORDER BY (service_name, span_name, toDateTime(timestamp))",
        "SETTINGS non_replicated_deduplication_window = 1000, index_granularity = 8192",
    ):
        assert needed in sql
    assert "{" not in sql and "--" not in sql


def test_render_ttl_zero_drops_the_ttl_clause() -> None:
    (with_ttl,) = render_migrations(Profile.MODERN, "telemetry", "traces", 30)
    (without,) = render_migrations(Profile.MODERN, "telemetry", "traces", 0)
    assert "TTL" not in without.statements[0]
    assert "SETTINGS non_replicated_deduplication_window" in without.statements[0]
    # Config (ttl, names) is not part of the checksum: changing it is not a changed migration.
    (other,) = render_migrations(Profile.MODERN, "db2", "t2", 7)
    assert with_ttl.checksum == without.checksum == other.checksum


def test_render_legacy() -> None:
    (m,) = render_migrations(Profile.LEGACY, "telemetry", "traces", 30)
    (sql,) = m.statements
    assert sql.startswith("CREATE TABLE IF NOT EXISTS telemetry.traces")
    for absent in ("Map(", "DateTime64", "LowCardinality", "CODEC", "TTL", "INDEX", "{"):
        assert absent not in sql
    for needed in (
        "ENGINE = MergeTree()",
        "PARTITION BY toDate(timestamp)",
        "ORDER BY (service_name, span_name, timestamp)",
        "attribute_keys   Array(String)",
        "resource_values  Array(String)",
        "timestamp        DateTime('UTC')",
    ):
        assert needed in sql
    assert m.checksum != render_migrations(Profile.MODERN, "telemetry", "traces", 30)[0].checksum


def test_both_profiles_have_the_same_versions() -> None:
    modern = [(m.version, m.name) for m in render_migrations(Profile.MODERN, "d", "t", 1)]
    legacy = [(m.version, m.name) for m in render_migrations(Profile.LEGACY, "d", "t", 1)]
    assert modern == legacy


@pytest.mark.parametrize(
    ("database", "table", "ttl"),
    [("x; DROP", "t", 1), ("d", "t`", 1), ("", "t", 1), ("d", "1t", 1), ("d", "t", -1), ("d", "t", True)],
)
def test_render_rejects_bad_arguments(database: str, table: str, ttl: int) -> None:
    with pytest.raises(ValueError):
        render_migrations(Profile.MODERN, database, table, ttl)


def _write(root: Path, profile: str, name: str, text: str) -> None:
    (root / profile).mkdir(parents=True, exist_ok=True)
    (root / profile / name).write_text(text)


def test_render_custom_root_orders_and_splits(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "modern",
        "0002_more.sql",
        "ALTER TABLE {database}.{table} ADD COLUMN a String; SELECT ';';\n",
    )
    _write(tmp_path, "modern", "0001_first.sql", "CREATE TABLE {database}.{table} (x UInt8) ENGINE = Log")
    _write(tmp_path, "modern", "README.md", "not a migration")
    ms = render_migrations(Profile.MODERN, "d", "t", 0, root=tmp_path)
    assert [(m.version, m.name, m.statements) for m in ms] == [
        (1, "0001_first", ("CREATE TABLE d.t (x UInt8) ENGINE = Log",)),
        (2, "0002_more", ("ALTER TABLE d.t ADD COLUMN a String", "SELECT ';'")),
    ]


def test_render_rejects_duplicate_versions(tmp_path: Path) -> None:
    _write(tmp_path, "modern", "0001_a.sql", "SELECT 1")
    _write(tmp_path, "modern", "0001_b.sql", "SELECT 2")
    with pytest.raises(SchemaError, match="used twice"):
        render_migrations(Profile.MODERN, "d", "t", 0, root=tmp_path)


def test_render_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="no migrations directory"):
        render_migrations(Profile.LEGACY, "d", "t", 0, root=tmp_path)


def test_migrations_root_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert schema.migrations_root() == DEPLOY
    monkeypatch.setenv(schema.MIGRATIONS_ENV, str(tmp_path))
    assert schema.migrations_root() == tmp_path


# ----------------------------------------------------------------------------- apply (fake engine)


class FakeEngine:
    """Just enough of a server for apply's bookkeeping: records statements, answers the SELECT."""

    def __init__(self) -> None:
        self.statements: list[str] = []
        self.recorded: list[tuple[int, str, str, str]] = []

    def __call__(self, sql: str) -> str:
        self.statements.append(sql)
        if sql.startswith("SELECT version, name, profile, checksum"):
            return "".join(f"{v}\t{n}\t{p}\t{c}\n" for v, n, p, c in self.recorded)
        if sql.startswith("INSERT INTO d.schema_migrations"):
            values = sql.split("VALUES (", 1)[1].rstrip(")").split(", ")
            self.recorded.append((int(values[0]), values[1].strip("'"), values[2].strip("'"), values[4].strip("'")))
        return ""


def test_apply_order_and_idempotence_with_fake_engine() -> None:
    engine = FakeEngine()
    assert apply(engine, Profile.MODERN, "d", "t", 30) == [1]
    assert engine.statements[0] == "CREATE DATABASE IF NOT EXISTS d"
    assert engine.statements[1].startswith("CREATE TABLE IF NOT EXISTS d.schema_migrations")
    assert engine.statements[3].startswith("CREATE TABLE IF NOT EXISTS d.t")
    assert engine.recorded == [
        (1, "0001_traces", "modern", render_migrations(Profile.MODERN, "d", "t", 30)[0].checksum)
    ]
    engine.statements.clear()
    assert apply(engine, Profile.MODERN, "d", "t", 30) == []
    assert not any(s.startswith("CREATE TABLE IF NOT EXISTS d.t") for s in engine.statements)


def test_apply_rejects_mixed_profiles() -> None:
    engine = FakeEngine()
    engine.recorded = [(1, "0001_traces", "modern", "a"), (1, "0001_traces", "legacy", "b")]
    with pytest.raises(SchemaError, match="several profiles"):
        apply(engine, Profile.MODERN, "d", "t", 30)


def test_migration_is_a_frozen_record() -> None:
    m = render_migrations(Profile.LEGACY, "d", "t", 0)[0]
    assert isinstance(m, Migration)
    with pytest.raises(AttributeError):
        m.version = 2  # type: ignore[misc]


# ---------------------------------------------------------------------------------- sample records

TRACE = "5b8efff798038103d269b633813fc60c"
FIRST_NS = "1000000000"  # 1970-01-01 00:00:01, the first accepted start
LAST_NS = 4_291_747_200 * 1_000_000_000 - 1  # 2105-12-31 23:59:59.999999999, the last accepted start


def _kv(key: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"key": key, "value": value}


def _line(obj: Any) -> bytes:
    return orjson.dumps(obj) + b"\n"


RESOURCES = [
    _line(
        {
            "attributes": [
                _kv("service.name", {"stringValue": "my-app"}),
                _kv("project.name", {"stringValue": "automagik"}),
                _kv("project.version", {"stringValue": "1.2.3"}),
                _kv("deployment.environment", {"stringValue": "prod"}),
                _kv("host.name", {"stringValue": "web-01"}),
                _kv("os.type", {"stringValue": "linux"}),
                _kv("os.version", {"stringValue": "6.1.0-18-amd64"}),
                _kv("process.pid", {"intValue": "4242"}),
                _kv("process.runtime.name", {"stringValue": "cpython"}),
                _kv("process.runtime.version", {"stringValue": "3.11.7"}),
                _kv("telemetry.sdk.name", {"stringValue": "automagik-telemetry"}),
                _kv("telemetry.sdk.version", {"stringValue": "0.1.0"}),
                _kv("team", {"stringValue": "core ✓"}),
            ]
        }
    ),
    _line({}),
]

WEIRD = "quote\" back\\slash tab\t nl\n nul\x00 uni é✓😀 slash/ apos'"


def sample_spans() -> list[dict[str, Any]]:
    """Spans covering every column edge the engines must keep exactly."""
    base = {
        "traceId": TRACE,
        "name": "user.login",
        "kind": 2,
        "startTimeUnixNano": "1729627200000000000",
        "endTimeUnixNano": "1729627200145000000",
    }
    spans = [
        {
            **base,
            "spanId": "0000000000000001",
            "parentSpanId": "",
            "attributes": [_kv("user.id", {"stringValue": "123"})],
            "status": {"code": 1},
            "events": [
                {
                    "timeUnixNano": "1729627200100000000",
                    "name": "exception",
                    "attributes": [_kv("exception.message", {"stringValue": WEIRD})],
                }
            ],
        },
        {
            **base,
            "spanId": "0000000000000002",
            "parentSpanId": "0000000000000001",
            "name": WEIRD,
            "kind": "SPAN_KIND_CONSUMER",
            "startTimeUnixNano": 1729627200145000001,
            "endTimeUnixNano": 1729627200290000002,
            "attributes": [
                _kv("s", {"stringValue": WEIRD}),
                _kv(WEIRD, {"stringValue": "weird key"}),
                _kv("empty", {"stringValue": ""}),
                _kv("i", {"intValue": "-9223372036854775808"}),
                _kv("d", {"doubleValue": 0.1}),
                _kv("nan", {"doubleValue": "NaN"}),
                _kv("b", {"boolValue": False}),
                _kv("bytes", {"bytesValue": "AAH/"}),
                _kv(
                    "arr",
                    {"arrayValue": {"values": [{"stringValue": "a"}, {"intValue": 1}, {"doubleValue": 2.5}]}},
                ),
                _kv("kv", {"kvlistValue": {"values": [_kv("k", {"boolValue": True})]}}),
            ],
            "status": {"code": "STATUS_CODE_ERROR", "message": WEIRD},
        },
        {**base, "spanId": "0000000000000003", "startTimeUnixNano": FIRST_NS, "endTimeUnixNano": FIRST_NS},
        {
            **base,
            "spanId": "0000000000000004",
            "startTimeUnixNano": str(LAST_NS),
            "endTimeUnixNano": str((1 << 64) - 1),
        },
        {**base, "spanId": "0000000000000005", "endTimeUnixNano": "1729627200000000000", "kind": 0},
        {
            **base,
            "spanId": "0000000000000006",
            "startTimeUnixNano": "1729627200999999999",
            "endTimeUnixNano": ...,
        },
    ]
    return [{k: v for k, v in s.items() if v is not ...} for s in spans]


def sample_rows(profile: Profile) -> list[dict[str, Any]]:
    rows = []
    for r, resource_line in enumerate(RESOURCES):
        resource = parse_resource(resource_line)
        for span in sample_spans():
            span = {**span, "spanId": f"{r:x}{span['spanId'][1:]}"}
            rows.append(transform_span(_line(span), resource, profile))
    return rows


UINT64_COLUMNS = ("timestamp_ns", "duration_ns")


def _read_back(text: str) -> dict[str, dict[str, Any]]:
    out = {}
    for line in text.splitlines():
        row = orjson.loads(line)
        for column in UINT64_COLUMNS:  # 18.16 quotes 64-bit ints whatever the settings clause says
            row[column] = int(row[column])
        out[row["span_id"]] = row
    return out


def _assert_rows_equal(got: dict[str, dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    assert sorted(got) == sorted(r["span_id"] for r in rows)
    for row in rows:
        back = got[row["span_id"]]
        assert back == row, row["span_id"]
        assert type(back["duration_ms"]) in (int, float)


# ------------------------------------------------------------------------------------------ chDB


ChdbFactory = Callable[..., Any]


def _chdb_executor(session: Any) -> Callable[[str], str]:
    return lambda sql: str(session.query(sql))


@pytest.mark.chdb
def test_chdb_modern_migrations_and_exact_round_trip(chdb_session_factory: ChdbFactory) -> None:
    session = chdb_session_factory("modern")
    execute = _chdb_executor(session)
    assert pick_profile(execute("SELECT version()").strip().strip('"')) is Profile.MODERN

    assert apply(execute, Profile.MODERN, "telemetry", "traces", 0) == [1]
    assert apply(execute, Profile.MODERN, "telemetry", "traces", 0) == []  # idempotent
    recorded = execute("SELECT version, name, profile FROM telemetry.schema_migrations FORMAT TabSeparated")
    assert recorded == "1\t0001_traces\tmodern\n"
    columns = table_columns(execute, "telemetry", "traces")
    assert detect_table_profile(columns) is Profile.MODERN
    assert columns["timestamp"] == "DateTime64(9, 'UTC')"
    assert columns["attributes"] == "Map(LowCardinality(String), String)"
    assert table_columns(execute, "telemetry", "nope") == {}

    rows = sample_rows(Profile.MODERN)
    body = encode_rows(rows)
    execute("INSERT INTO telemetry.traces FORMAT JSONEachRow\n" + body.decode())
    out = execute(
        "SELECT * FROM telemetry.traces SETTINGS output_format_json_quote_64bit_integers = 0 FORMAT JSONEachRow"
    )
    _assert_rows_equal(_read_back(out), rows)
    # The DateTime64 holds the exact nanosecond, in UTC whatever the session's time zone.
    mismatches = execute(
        "SELECT count() FROM telemetry.traces WHERE toUnixTimestamp64Nano(timestamp) != timestamp_ns "
        "SETTINGS session_timezone = 'Asia/Kolkata' FORMAT TabSeparated"
    )
    assert mismatches == "0\n"
    last = execute(
        "SELECT toString(timestamp), toDate(timestamp), toDateTime(timestamp) FROM telemetry.traces "
        f"WHERE timestamp_ns = {LAST_NS} LIMIT 1 FORMAT TabSeparated"
    )
    assert last == "2105-12-31 23:59:59.999999999\t2105-12-31\t2105-12-31 23:59:59\n"


@pytest.mark.chdb
def test_chdb_ttl_and_dedup_settings(chdb_session_factory: ChdbFactory) -> None:
    session = chdb_session_factory("ttl")
    execute = _chdb_executor(session)
    assert apply(execute, Profile.MODERN, "tel", "spans", 30) == [1]
    create = execute("SHOW CREATE TABLE tel.spans FORMAT TabSeparatedRaw")
    assert "TTL toDateTime(timestamp) + toIntervalDay(30)" in create
    assert "non_replicated_deduplication_window = 1000" in create
    # A batch re-sent with the same insert_deduplication_token is dropped (the shipper relies on it).
    now_ns = time.time_ns()
    resource = parse_resource(RESOURCES[0])
    rows = [
        transform_span(
            _line({**span, "startTimeUnixNano": now_ns + i, "endTimeUnixNano": now_ns + 1000 + i}),
            resource,
            Profile.MODERN,
        )
        for i, span in enumerate(sample_spans())
    ]
    body = encode_rows(rows).decode()
    for _ in range(2):
        execute("INSERT INTO tel.spans SETTINGS insert_deduplication_token = 'wal-7-0' FORMAT JSONEachRow\n" + body)
    assert execute("SELECT count() FROM tel.spans FORMAT TabSeparated") == f"{len(rows)}\n"


@pytest.mark.chdb
def test_chdb_legacy_profile_is_sticky(chdb_session_factory: ChdbFactory) -> None:
    """A legacy table kept through a server upgrade: apply(MODERN) keeps it, rows keep its shape."""
    session = chdb_session_factory("sticky")
    execute = _chdb_executor(session)
    assert apply(execute, Profile.LEGACY, "tel", "traces", 30) == [1]
    assert apply(execute, Profile.MODERN, "tel", "traces", 30) == []
    profile = detect_table_profile(table_columns(execute, "tel", "traces"))
    assert profile is Profile.LEGACY
    rows = sample_rows(profile)
    execute("INSERT INTO tel.traces FORMAT JSONEachRow\n" + encode_rows(rows).decode())
    out = execute("SELECT * FROM tel.traces SETTINGS output_format_json_quote_64bit_integers = 0 FORMAT JSONEachRow")
    _assert_rows_equal(_read_back(out), rows)


@pytest.mark.chdb
def test_chdb_new_version_and_changed_checksum(chdb_session_factory: ChdbFactory, tmp_path: Path) -> None:
    root = tmp_path / "migrations"
    shutil.copytree(DEPLOY, root)
    session = chdb_session_factory("versions")
    execute = _chdb_executor(session)
    assert apply(execute, Profile.MODERN, "tel", "traces", 0, root=root) == [1]

    # A new version is applied once.
    _write(
        root,
        "modern",
        "0002_extra.sql",
        "ALTER TABLE {database}.{table} ADD COLUMN IF NOT EXISTS extra String;",
    )
    assert apply(execute, Profile.MODERN, "tel", "traces", 0, root=root) == [2]
    assert apply(execute, Profile.MODERN, "tel", "traces", 0, root=root) == []
    assert "extra" in table_columns(execute, "tel", "traces")

    # Comments are not part of the checksum...
    path = root / "modern" / "0001_traces.sql"
    path.write_text("-- an edited comment\n" + path.read_text())
    assert apply(execute, Profile.MODERN, "tel", "traces", 0, root=root) == []
    # ...but SQL is.
    path.write_text(path.read_text().replace("events              String", "events              String,\n x UInt8"))
    with pytest.raises(SchemaError, match=r"migration 1 \(0001_traces, modern\) was applied with checksum"):
        apply(execute, Profile.MODERN, "tel", "traces", 0, root=root)


# --------------------------------------------------------------------------- ClickHouse 18.16 server


@pytest.mark.clickhouse
def test_server_legacy_migrations_and_exact_round_trip(clickhouse: Any, clickhouse_db: str) -> None:
    version = clickhouse.version
    if version.startswith("18."):
        assert pick_profile(version) is Profile.LEGACY

    assert apply(clickhouse.query, Profile.LEGACY, clickhouse_db, "traces", 30) == [1]
    assert apply(clickhouse.query, Profile.LEGACY, clickhouse_db, "traces", 30) == []  # idempotent
    recorded = clickhouse.query(
        f"SELECT version, name, profile, length(checksum) FROM {clickhouse_db}.schema_migrations FORMAT TabSeparated"
    )
    assert recorded == "1\t0001_traces\tlegacy\t64\n"
    columns = table_columns(clickhouse.query, clickhouse_db, "traces")
    assert detect_table_profile(columns) is Profile.LEGACY
    assert columns["timestamp"] == "DateTime('UTC')"

    rows = sample_rows(Profile.LEGACY)
    clickhouse.query(f"INSERT INTO {clickhouse_db}.traces FORMAT JSONEachRow", data=encode_rows(rows))
    out = clickhouse.query(
        f"SELECT * FROM {clickhouse_db}.traces FORMAT JSONEachRow",
        settings={"output_format_json_quote_64bit_integers": 0},
    )
    _assert_rows_equal(_read_back(out), rows)
    # The DateTime column is UTC whatever the server's time zone, and agrees with timestamp_ns.
    mismatches = clickhouse.query(
        f"SELECT count() FROM {clickhouse_db}.traces "
        "WHERE toUInt64(toUnixTimestamp(timestamp)) != intDiv(timestamp_ns, 1000000000) FORMAT TabSeparated"
    )
    assert mismatches == "0\n"
    last = clickhouse.query(
        f"SELECT toString(timestamp), toDate(timestamp) FROM {clickhouse_db}.traces "
        f"WHERE timestamp_ns = {LAST_NS} LIMIT 1 FORMAT TabSeparated"
    )
    assert last == "2105-12-31 23:59:59\t2105-12-31\n"
    # The values the shipper would look up by key.
    got = clickhouse.query(
        f"SELECT attribute_values[indexOf(attribute_keys, 'i')] FROM {clickhouse_db}.traces "
        "WHERE span_id = '0000000000000002' FORMAT TabSeparated"
    )
    assert got == "-9223372036854775808\n"


@pytest.mark.clickhouse
def test_server_modern_request_is_sticky_to_legacy(clickhouse: Any, clickhouse_db: str) -> None:
    assert apply(clickhouse.query, Profile.LEGACY, clickhouse_db, "traces", 0) == [1]
    assert apply(clickhouse.query, Profile.MODERN, clickhouse_db, "traces", 0) == []
