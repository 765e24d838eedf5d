"""Tests of automagik_telemetry_agent.clickhouse.schema: profile choice, migration rendering, and real engines.

The round trips run transform -> encode_rows -> ``INSERT ... FORMAT JSONEachRow`` -> ``SELECT`` and
compare every column exactly: on chDB (modern profile, ClickHouse 26.x) and on the real ClickHouse
18.16 server fixture (legacy profile).
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from automagik_telemetry_agent.clickhouse import schema
from automagik_telemetry_agent.clickhouse.log_rows import log_row_keys, transform_log
from automagik_telemetry_agent.clickhouse.metric_rows import metric_row_keys, transform_metric
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
#: Every profile's migrations, in version order.
MIGRATIONS = ["0001_traces", "0002_logs", "0003_metrics", "0004_traces_014_columns"]
VERSIONS = [1, 2, 3, 4]
TABLE_MIGRATIONS = MIGRATIONS[:3]  # the CREATE TABLEs (TTL, settings); 0004 adds columns to traces


def by_name(migrations: list[Migration]) -> dict[str, Migration]:
    """The migrations keyed by name; each profile has the same ones (checked below)."""
    assert [m.name for m in migrations] == MIGRATIONS
    return {m.name: m for m in migrations}


def statement(migrations: list[Migration], name: str) -> str:
    """The one statement of migration ``name``."""
    (sql,) = by_name(migrations)[name].statements
    return sql


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
    ms = render_migrations(Profile.MODERN, "telemetry", "traces", 30)
    assert [(m.version, m.name, m.profile) for m in ms] == [
        (1, "0001_traces", Profile.MODERN),
        (2, "0002_logs", Profile.MODERN),
        (3, "0003_metrics", Profile.MODERN),
        (4, "0004_traces_014_columns", Profile.MODERN),
    ]
    sql = statement(ms, "0001_traces")
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


def test_render_modern_logs() -> None:
    sql = statement(render_migrations(Profile.MODERN, "telemetry", "traces", 30), "0002_logs")
    assert sql.startswith("CREATE TABLE IF NOT EXISTS telemetry.logs\n")
    assert "TTL toDateTime(timestamp) + INTERVAL 30 DAY" in sql
    for needed in (
        "timestamp            DateTime64(9, 'UTC') CODEC(Delta, ZSTD(1))",
        "observed_timestamp   DateTime64(9, 'UTC') CODEC(Delta, ZSTD(1))",
        "severity_number      UInt8 CODEC(ZSTD(1))",
        "body                 String CODEC(ZSTD(1))",
        "attributes           Map(LowCardinality(String), String) CODEC(ZSTD(1))",
        "source_line          UInt32 CODEC(ZSTD(1))",
        "INDEX idx_trace_id trace_id TYPE bloom_filter(0.001) GRANULARITY 1",
        "INDEX idx_body body TYPE tokenbf_v1(32768, 3, 0) GRANULARITY 1",
        "PARTITION BY toDate(timestamp)",
        "ORDER BY (service_name, severity_number, toDateTime(timestamp))",
        "SETTINGS non_replicated_deduplication_window = 1000, index_granularity = 8192",
    ):
        assert needed in sql
    assert "{" not in sql and "--" not in sql


def test_render_modern_metrics() -> None:
    sql = statement(render_migrations(Profile.MODERN, "telemetry", "traces", 30), "0003_metrics")
    assert sql.startswith("CREATE TABLE IF NOT EXISTS telemetry.metrics\n")
    assert "TTL toDateTime(timestamp) + INTERVAL 30 DAY" in sql
    for needed in (
        "timestamp                 DateTime64(9, 'UTC') CODEC(Delta, ZSTD(1))",
        "value_int                 Int64 CODEC(ZSTD(1))",
        "value_double              Float64 CODEC(ZSTD(1))",
        "histogram_bucket_counts   Array(UInt64) CODEC(ZSTD(1))",
        "histogram_explicit_bounds Array(Float64) CODEC(ZSTD(1))",
        "attributes                Map(LowCardinality(String), String) CODEC(ZSTD(1))",
        "PARTITION BY toDate(timestamp)",
        "ORDER BY (service_name, metric_name, toDateTime(timestamp))",
        "SETTINGS non_replicated_deduplication_window = 1000, index_granularity = 8192",
    ):
        assert needed in sql
    assert "{" not in sql and "--" not in sql


def test_render_substitutes_the_logs_and_metrics_table_names() -> None:
    for profile in Profile:
        ms = render_migrations(profile, "obs", "spans", 7, logs_table="app_logs", metrics_table="app_points")
        assert statement(ms, "0001_traces").startswith("CREATE TABLE IF NOT EXISTS obs.spans\n")
        assert statement(ms, "0002_logs").startswith("CREATE TABLE IF NOT EXISTS obs.app_logs\n")
        assert statement(ms, "0003_metrics").startswith("CREATE TABLE IF NOT EXISTS obs.app_points\n")
        for m in ms:
            for sql in m.statements:
                assert "{" not in sql and "}" not in sql, (profile, m.name)
                assert "telemetry" not in sql and "traces" not in sql, (profile, m.name)
        # The defaults are "logs" and "metrics".
        defaults = render_migrations(profile, "obs", "spans", 7)
        assert statement(defaults, "0002_logs").startswith("CREATE TABLE IF NOT EXISTS obs.logs\n")
        assert statement(defaults, "0003_metrics").startswith("CREATE TABLE IF NOT EXISTS obs.metrics\n")


def test_render_ttl_zero_drops_the_ttl_clause() -> None:
    with_ttl = by_name(render_migrations(Profile.MODERN, "telemetry", "traces", 30))
    without = by_name(render_migrations(Profile.MODERN, "telemetry", "traces", 0))
    # Config (ttl, names) is not part of the checksum: changing it is not a changed migration.
    other = by_name(render_migrations(Profile.MODERN, "db2", "t2", 7, logs_table="l2", metrics_table="m2"))
    for name in TABLE_MIGRATIONS:
        assert "TTL toDateTime(timestamp) + INTERVAL 30 DAY" in with_ttl[name].statements[0], name
        assert "TTL" not in without[name].statements[0], name
        assert "SETTINGS non_replicated_deduplication_window" in without[name].statements[0], name
        assert with_ttl[name].checksum == without[name].checksum == other[name].checksum, name
    assert len({m.checksum for m in with_ttl.values()}) == len(MIGRATIONS)


def test_render_legacy() -> None:
    ms = render_migrations(Profile.LEGACY, "telemetry", "traces", 30)
    m = by_name(ms)["0001_traces"]
    sql = statement(ms, "0001_traces")
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


@pytest.mark.parametrize(
    ("name", "table", "order_by", "needed"),
    [
        (
            "0002_logs",
            "logs",
            "ORDER BY (service_name, severity_number, timestamp)",
            ("observed_timestamp_ns UInt64", "attribute_keys       Array(String)", "source_line          UInt32"),
        ),
        (
            "0003_metrics",
            "metrics",
            "ORDER BY (service_name, metric_name, timestamp)",
            ("histogram_bucket_counts   Array(UInt64)", "attribute_values          Array(String)"),
        ),
    ],
)
def test_render_legacy_logs_and_metrics(name: str, table: str, order_by: str, needed: tuple[str, ...]) -> None:
    for ttl in (30, 0):  # legacy has no TTL line to drop: the same SQL
        sql = statement(render_migrations(Profile.LEGACY, "telemetry", "traces", ttl), name)
        assert sql.startswith(f"CREATE TABLE IF NOT EXISTS telemetry.{table}\n")
        for absent in ("Map(", "DateTime64", "LowCardinality", "CODEC", "TTL", "INDEX", "{", "--"):
            assert absent not in sql, absent
        for clause in (
            "ENGINE = MergeTree()",
            "PARTITION BY toDate(timestamp)",
            order_by,
            "SETTINGS index_granularity = 8192",
            "timestamp                 DateTime('UTC')"
            if table == "metrics"
            else "timestamp            DateTime('UTC')",
            *needed,
        ):
            assert clause in sql, clause
    legacy = by_name(render_migrations(Profile.LEGACY, "telemetry", "traces", 30))[name]
    assert legacy.checksum == by_name(render_migrations(Profile.LEGACY, "d", "t", 0, logs_table="x"))[name].checksum
    assert legacy.checksum != by_name(render_migrations(Profile.MODERN, "telemetry", "traces", 30))[name].checksum


def test_both_profiles_have_the_same_versions() -> None:
    modern = [(m.version, m.name) for m in render_migrations(Profile.MODERN, "d", "t", 1)]
    legacy = [(m.version, m.name) for m in render_migrations(Profile.LEGACY, "d", "t", 1)]
    assert modern == legacy
    assert modern == list(zip(VERSIONS, MIGRATIONS, strict=True))


@pytest.mark.parametrize(
    ("database", "table", "ttl"),
    [("x; DROP", "t", 1), ("d", "t`", 1), ("", "t", 1), ("d", "1t", 1), ("d", "t", -1), ("d", "t", True)],
)
def test_render_rejects_bad_arguments(database: str, table: str, ttl: int) -> None:
    with pytest.raises(ValueError):
        render_migrations(Profile.MODERN, database, table, ttl)


@pytest.mark.parametrize("name", ["x; DROP", "l`", "", "1l", "logs.x", "{table}"])
@pytest.mark.parametrize("member", ["logs_table", "metrics_table"])
def test_render_rejects_bad_logs_and_metrics_table_names(member: str, name: str) -> None:
    names: dict[str, Any] = {member: name}
    with pytest.raises(ValueError, match="not a plain identifier"):
        render_migrations(Profile.LEGACY, "d", "t", 0, **names)
    with pytest.raises(ValueError, match="not a plain identifier"):
        apply(FakeEngine(), Profile.MODERN, "d", "t", 0, **names)


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
    """Just enough of a server for apply's bookkeeping: records statements, answers the SELECTs (of
    schema_migrations, and of system.columns for the tables its CREATE TABLE statements made)."""

    def __init__(self) -> None:
        self.statements: list[str] = []
        self.recorded: list[tuple[int, str, str, str]] = []
        self.tables: set[str] = set()  # "d.t" of every table created

    def __call__(self, sql: str) -> str:
        self.statements.append(sql)
        if sql.startswith("SELECT version, name, profile, checksum"):
            return "".join(f"{v}\t{n}\t{p}\t{c}\n" for v, n, p, c in self.recorded)
        if sql.startswith("INSERT INTO d.schema_migrations"):
            values = sql.split("VALUES (", 1)[1].rstrip(")").split(", ")
            self.recorded.append((int(values[0]), values[1].strip("'"), values[2].strip("'"), values[4].strip("'")))
        columns = re.fullmatch(
            r"SELECT name, type FROM system\.columns WHERE database = '(\w+)' AND table = '(\w+)' .*", sql
        )
        if columns:
            return "timestamp\tDateTime\n" if f"{columns[1]}.{columns[2]}" in self.tables else ""
        created = re.match(r"CREATE TABLE IF NOT EXISTS (\w+\.\w+)\n", sql)
        if created:
            self.tables.add(created[1])
        return ""

    def created(self) -> list[str]:
        """The tables the statements since the last ``statements.clear()`` created, in order."""
        return [m[1] for s in self.statements if (m := re.match(r"CREATE TABLE IF NOT EXISTS d\.(\w+)\n", s))]


def test_apply_order_and_idempotence_with_fake_engine() -> None:
    engine = FakeEngine()
    assert apply(engine, Profile.MODERN, "d", "t", 30, logs_table="l", metrics_table="m") == VERSIONS
    assert engine.statements[0] == "CREATE DATABASE IF NOT EXISTS d"
    assert engine.statements[1].startswith("CREATE TABLE IF NOT EXISTS d.schema_migrations")
    # Each migration's statement, then its record, in version order.
    assert engine.statements[3].startswith("CREATE TABLE IF NOT EXISTS d.t\n")
    assert (
        engine.statements[4].startswith("INSERT INTO d.schema_migrations")
        and "VALUES (1, '0001_traces'" in (engine.statements[4])
    )
    assert engine.statements[5].startswith("CREATE TABLE IF NOT EXISTS d.l\n")
    assert "VALUES (2, '0002_logs'" in engine.statements[6]
    assert engine.statements[7].startswith("CREATE TABLE IF NOT EXISTS d.m\n")
    assert "VALUES (3, '0003_metrics'" in engine.statements[8]
    # 0004: each ADD COLUMN after a look at the table's columns (18.16 has no ADD COLUMN IF NOT EXISTS).
    alters = engine.statements[9:-1]
    assert [s.split()[0] for s in alters] == ["SELECT", "ALTER"] * 8
    assert all(s.startswith("ALTER TABLE d.t ADD COLUMN IF NOT EXISTS ") for s in alters[1::2])
    assert "VALUES (4, '0004_traces_014_columns'" in engine.statements[-1]
    assert engine.recorded == [
        (m.version, m.name, "modern", m.checksum) for m in render_migrations(Profile.MODERN, "d", "t", 30)
    ]
    engine.statements.clear()
    assert apply(engine, Profile.MODERN, "d", "t", 30, logs_table="l", metrics_table="m") == []
    assert engine.created() == ["schema_migrations"]  # the bookkeeping table's IF NOT EXISTS only
    assert not any(s.startswith("INSERT") for s in engine.statements)


def test_apply_creates_a_dropped_logs_or_metrics_table_again_with_fake_engine() -> None:
    for dropped in ("logs", "metrics", "t"):
        engine = FakeEngine()
        assert apply(engine, Profile.LEGACY, "d", "t", 0) == VERSIONS
        engine.tables.discard(f"d.{dropped}")
        engine.statements.clear()
        assert apply(engine, Profile.LEGACY, "d", "t", 0) == []  # nothing applied: recorded as done
        assert engine.created() == ["schema_migrations", dropped]  # only the dropped table is made again
        assert not any(s.startswith("INSERT") for s in engine.statements)
        assert len(engine.recorded) == len(VERSIONS)


def test_apply_runs_only_the_migrations_not_yet_recorded_with_fake_engine() -> None:
    """A database that has only the traces migration (an agent from before logs and metrics) gets 2 and 3."""
    engine = FakeEngine()
    traces = render_migrations(Profile.LEGACY, "d", "t", 0)[0]
    engine.recorded = [(1, "0001_traces", "legacy", traces.checksum)]
    engine.tables = {"d.t"}
    assert apply(engine, Profile.LEGACY, "d", "t", 0) == [2, 3, 4]
    assert engine.created() == ["schema_migrations", "logs", "metrics"]
    assert [r[:3] for r in engine.recorded] == [(v, n, "legacy") for v, n in zip(VERSIONS, MIGRATIONS, strict=True)]


def test_apply_refuses_a_changed_logs_or_metrics_migration_with_fake_engine() -> None:
    for version, name in ((2, "0002_logs"), (3, "0003_metrics")):
        engine = FakeEngine()
        assert apply(engine, Profile.MODERN, "d", "t", 0) == VERSIONS
        engine.recorded[version - 1] = (version, name, "modern", "0" * 64)
        engine.statements.clear()
        with pytest.raises(SchemaError, match=rf"migration {version} \({name}, modern\) was applied with checksum"):
            apply(engine, Profile.MODERN, "d", "t", 0)
        assert engine.created() == ["schema_migrations"]
        assert not any(s.startswith("INSERT") for s in engine.statements)


def test_apply_rejects_mixed_profiles() -> None:
    engine = FakeEngine()
    engine.recorded = [(1, "0001_traces", "modern", "a"), (1, "0001_traces", "legacy", "b")]
    with pytest.raises(SchemaError, match="several profiles"):
        apply(engine, Profile.MODERN, "d", "t", 30)


def test_migration_is_a_frozen_record() -> None:
    for m in render_migrations(Profile.LEGACY, "d", "t", 0):
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


def sample_log_lines(now_ns: int | None = None) -> list[bytes]:
    """A few log records (each at its own instant): every lifted column, both time members, an id pair."""
    base = 1729627200000000000 if now_ns is None else now_ns
    return [
        _line(
            {
                "timeUnixNano": base + 1,
                "observedTimeUnixNano": base + 2,
                "severityNumber": 17,
                "severityText": "ERROR",
                "body": {"stringValue": WEIRD},
                "attributes": [
                    _kv("logger.name", {"stringValue": "app"}),
                    _kv("code.lineno", {"intValue": 7}),
                    _kv("exception.type", {"stringValue": "ValueError"}),
                    _kv("s", {"stringValue": WEIRD}),
                ],
                "traceId": TRACE,
                "spanId": "0000000000000001",
                "scope": {"name": "app", "version": "1"},
            }
        ),
        _line(
            {"observedTimeUnixNano": str(base + 3), "body": {"kvlistValue": {"values": [_kv("k", {"intValue": 1})]}}}
        ),
        _line({"timeUnixNano": str(LAST_NS if now_ns is None else base + 4), "severityNumber": "SEVERITY_NUMBER_INFO"}),
    ]


def sample_metric_lines(now_ns: int | None = None) -> list[bytes]:
    """A gauge, a monotonic sum and a histogram (each data point at its own instant)."""
    base = 1729627200000000000 if now_ns is None else now_ns
    return [
        _line({"name": "g", "gauge": {"dataPoints": [{"timeUnixNano": base + 1, "asInt": "-9223372036854775808"}]}}),
        _line(
            {
                "name": "c",
                "unit": "{request}",
                "sum": {
                    "aggregationTemporality": 2,
                    "isMonotonic": True,
                    "dataPoints": [
                        {"timeUnixNano": base + 2, "startTimeUnixNano": base, "asDouble": 0.1},
                        {"timeUnixNano": base + 3, "startTimeUnixNano": base, "asInt": 5},
                    ],
                },
            }
        ),
        _line(
            {
                "name": "h",
                "histogram": {
                    "aggregationTemporality": "DELTA",
                    "dataPoints": [
                        {
                            "timeUnixNano": str(LAST_NS if now_ns is None else base + 4),
                            "count": "18446744073709551615",
                            "sum": 2.5,
                            "bucketCounts": [1, "18446744073709551614", 0],
                            "explicitBounds": [0.005, 0.25],
                            "attributes": [_kv(WEIRD, {"stringValue": WEIRD})],
                        }
                    ],
                },
            }
        ),
    ]


def sample_log_rows(profile: Profile, now_ns: int | None = None) -> list[dict[str, Any]]:
    resource = parse_resource(RESOURCES[0])
    return [transform_log(line, resource, profile) for line in sample_log_lines(now_ns)]


def sample_metric_rows(profile: Profile, now_ns: int | None = None) -> list[dict[str, Any]]:
    resource = parse_resource(RESOURCES[0])
    return [row for line in sample_metric_lines(now_ns) for row in transform_metric(line, resource, profile)]


#: Log and metric columns that 18.16 writes as JSON strings (64-bit integers) or a whole double as an integer.
SIGNAL_INT_COLUMNS = ("timestamp_ns", "observed_timestamp_ns", "start_timestamp_ns", "value_int", "histogram_count")
SIGNAL_FLOAT_COLUMNS = ("value_double", "histogram_sum", "histogram_min", "histogram_max")


def _read_back_signal(text: str) -> dict[int, dict[str, Any]]:
    """Log or metric rows read back, by ``timestamp_ns`` (unique in the samples), typed as the transform types them."""
    out = {}
    for line in text.splitlines():
        row = orjson.loads(line)
        for column in SIGNAL_INT_COLUMNS:
            if column in row:
                row[column] = int(row[column])
        for column in SIGNAL_FLOAT_COLUMNS:
            if column in row:
                row[column] = float(row[column])
        if "histogram_bucket_counts" in row:
            row["histogram_bucket_counts"] = [int(x) for x in row["histogram_bucket_counts"]]
            row["histogram_explicit_bounds"] = [float(x) for x in row["histogram_explicit_bounds"]]
        out[row["timestamp_ns"]] = row
    return out


def _assert_signal_rows_equal(got: dict[int, dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    assert sorted(got) == sorted(r["timestamp_ns"] for r in rows)
    for row in rows:
        assert got[row["timestamp_ns"]] == row, row["timestamp_ns"]


def _round_trip_logs_and_metrics(
    execute: Callable[[str], str], database: str, profile: Profile, *, logs: str = "logs", metrics: str = "metrics"
) -> None:
    """Insert the sample log and metric rows of ``profile`` into the two tables; each reads back exactly."""
    for table, rows in ((logs, sample_log_rows(profile)), (metrics, sample_metric_rows(profile))):
        execute(f"INSERT INTO {database}.{table} FORMAT JSONEachRow\n" + encode_rows(rows).decode())
        out = execute(
            f"SELECT * FROM {database}.{table} SETTINGS output_format_json_quote_64bit_integers = 0 FORMAT JSONEachRow"
        )
        _assert_signal_rows_equal(_read_back_signal(out), rows)


def _check_signal_tables(
    execute: Callable[[str], str], database: str, profile: Profile, logs: str = "logs", metrics: str = "metrics"
) -> None:
    """The logs and metrics tables exist with the row shape of ``profile`` and every column its rows fill."""
    for table, row_keys in ((logs, log_row_keys), (metrics, metric_row_keys)):
        columns = table_columns(execute, database, table)
        assert detect_table_profile(columns) is profile, table
        assert row_keys(profile) <= set(columns), table
        if profile is Profile.MODERN:
            assert columns["timestamp"] == "DateTime64(9, 'UTC')", table
            assert columns["attributes"] == "Map(LowCardinality(String), String)", table
        else:
            assert columns["timestamp"] == "DateTime('UTC')", table
            assert columns["attribute_keys"] == "Array(String)", table


# ------------------------------------------------------------------------------------------ chDB


ChdbFactory = Callable[..., Any]


def _chdb_executor(session: Any) -> Callable[[str], str]:
    return lambda sql: str(session.query(sql))


@pytest.mark.chdb
def test_chdb_modern_migrations_and_exact_round_trip(chdb_session_factory: ChdbFactory) -> None:
    session = chdb_session_factory("modern")
    execute = _chdb_executor(session)
    assert pick_profile(execute("SELECT version()").strip().strip('"')) is Profile.MODERN

    assert apply(execute, Profile.MODERN, "telemetry", "traces", 0) == VERSIONS
    assert apply(execute, Profile.MODERN, "telemetry", "traces", 0) == []  # idempotent
    recorded = execute(
        "SELECT version, name, profile FROM telemetry.schema_migrations ORDER BY version FORMAT TabSeparated"
    )
    assert recorded == (
        "1\t0001_traces\tmodern\n2\t0002_logs\tmodern\n3\t0003_metrics\tmodern\n4\t0004_traces_014_columns\tmodern\n"
    )
    columns = table_columns(execute, "telemetry", "traces")
    assert detect_table_profile(columns) is Profile.MODERN
    assert columns["timestamp"] == "DateTime64(9, 'UTC')"
    assert columns["attributes"] == "Map(LowCardinality(String), String)"
    assert table_columns(execute, "telemetry", "nope") == {}
    _check_signal_tables(execute, "telemetry", Profile.MODERN)
    for table in ("traces", "logs", "metrics"):  # ttl_days 0: no TTL clause
        assert "TTL" not in execute(f"SHOW CREATE TABLE telemetry.{table} FORMAT TabSeparatedRaw"), table

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

    _round_trip_logs_and_metrics(execute, "telemetry", Profile.MODERN)
    for table in ("logs", "metrics"):
        mismatches = execute(
            f"SELECT count() FROM telemetry.{table} WHERE toUnixTimestamp64Nano(timestamp) != timestamp_ns "
            "SETTINGS session_timezone = 'Asia/Kolkata' FORMAT TabSeparated"
        )
        assert mismatches == "0\n", table
        last = execute(f"SELECT toString(timestamp) FROM telemetry.{table} WHERE timestamp_ns = {LAST_NS} FORMAT TSV")
        assert last == "2105-12-31 23:59:59.999999999\n", table


@pytest.mark.chdb
def test_chdb_ttl_and_dedup_settings(chdb_session_factory: ChdbFactory) -> None:
    session = chdb_session_factory("ttl")
    execute = _chdb_executor(session)
    assert apply(execute, Profile.MODERN, "tel", "spans", 30, logs_table="log_records", metrics_table="points") == (
        VERSIONS
    )
    for table in ("spans", "log_records", "points"):
        create = execute(f"SHOW CREATE TABLE tel.{table} FORMAT TabSeparatedRaw")
        assert "TTL toDateTime(timestamp) + toIntervalDay(30)" in create, table
        assert "non_replicated_deduplication_window = 1000" in create, table
    assert not table_columns(execute, "tel", "logs") and not table_columns(execute, "tel", "metrics")
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
    # The same for log and metric batches (recent rows: the 30-day TTL would drop old ones).
    for table, signal_rows in (
        ("log_records", sample_log_rows(Profile.MODERN, now_ns)),
        ("points", sample_metric_rows(Profile.MODERN, now_ns)),
    ):
        body = encode_rows(signal_rows).decode()
        for _ in range(2):
            execute(
                f"INSERT INTO tel.{table} SETTINGS insert_deduplication_token = 'a:x:1-2:0' FORMAT JSONEachRow\n" + body
            )
        assert execute(f"SELECT count() FROM tel.{table} FORMAT TabSeparated") == f"{len(signal_rows)}\n", table


@pytest.mark.chdb
def test_chdb_legacy_profile_is_sticky(chdb_session_factory: ChdbFactory) -> None:
    """A legacy table kept through a server upgrade: apply(MODERN) keeps it, rows keep its shape."""
    session = chdb_session_factory("sticky")
    execute = _chdb_executor(session)
    assert apply(execute, Profile.LEGACY, "tel", "traces", 30) == VERSIONS
    assert apply(execute, Profile.MODERN, "tel", "traces", 30) == []
    profile = detect_table_profile(table_columns(execute, "tel", "traces"))
    assert profile is Profile.LEGACY
    rows = sample_rows(profile)
    execute("INSERT INTO tel.traces FORMAT JSONEachRow\n" + encode_rows(rows).decode())
    out = execute("SELECT * FROM tel.traces SETTINGS output_format_json_quote_64bit_integers = 0 FORMAT JSONEachRow")
    _assert_rows_equal(_read_back(out), rows)
    # The logs and metrics tables are legacy too, and take legacy rows exactly.
    _check_signal_tables(execute, "tel", Profile.LEGACY)
    _round_trip_logs_and_metrics(execute, "tel", Profile.LEGACY)


@pytest.mark.chdb
def test_chdb_new_version_and_changed_checksum(chdb_session_factory: ChdbFactory, tmp_path: Path) -> None:
    root = tmp_path / "migrations"
    shutil.copytree(DEPLOY, root)
    session = chdb_session_factory("versions")
    execute = _chdb_executor(session)
    assert apply(execute, Profile.MODERN, "tel", "traces", 0, root=root) == VERSIONS

    # A new version is applied once.
    _write(
        root,
        "modern",
        "0005_extra.sql",
        "ALTER TABLE {database}.{table} ADD COLUMN IF NOT EXISTS extra String;",
    )
    assert apply(execute, Profile.MODERN, "tel", "traces", 0, root=root) == [5]
    assert apply(execute, Profile.MODERN, "tel", "traces", 0, root=root) == []
    assert "extra" in table_columns(execute, "tel", "traces")

    # Comments are not part of the checksum...
    path = root / "modern" / "0001_traces.sql"
    original = path.read_text()
    path.write_text("-- an edited comment\n" + original)
    assert apply(execute, Profile.MODERN, "tel", "traces", 0, root=root) == []
    # ...but SQL is.
    path.write_text(path.read_text().replace("events              String", "events              String,\n x UInt8"))
    with pytest.raises(SchemaError, match=r"migration 1 \(0001_traces, modern\) was applied with checksum"):
        apply(execute, Profile.MODERN, "tel", "traces", 0, root=root)
    path.write_text(original)

    # The same for the logs and metrics migrations.
    for version, name, column in ((2, "0002_logs", "source_function"), (3, "0003_metrics", "resource_attributes")):
        path = root / "modern" / f"{name}.sql"
        original = path.read_text()
        path.write_text(original.replace("-- ", "-- edited: ", 1))
        assert apply(execute, Profile.MODERN, "tel", "traces", 0, root=root) == []
        path.write_text(original.replace(f"    {column} ", f"    extra_{column} UInt8,\n    {column} ", 1))
        with pytest.raises(SchemaError, match=rf"migration {version} \({name}, modern\) was applied with checksum"):
            apply(execute, Profile.MODERN, "tel", "traces", 0, root=root)
        path.write_text(original)
        assert apply(execute, Profile.MODERN, "tel", "traces", 0, root=root) == []


@pytest.mark.chdb
def test_chdb_a_dropped_logs_or_metrics_table_is_created_again_by_apply(chdb_session_factory: ChdbFactory) -> None:
    session = chdb_session_factory("dropped")
    execute = _chdb_executor(session)
    assert apply(execute, Profile.MODERN, "tel", "traces", 0) == VERSIONS
    for dropped, kept in (("logs", "metrics"), ("metrics", "logs")):
        for table in ("logs", "metrics"):
            execute(f"TRUNCATE TABLE tel.{table}")
        _round_trip_logs_and_metrics(execute, "tel", Profile.MODERN)
        kept_rows = execute(f"SELECT count() FROM tel.{kept} FORMAT TabSeparated")
        assert kept_rows != "0\n"
        execute(f"DROP TABLE tel.{dropped}")
        assert apply(execute, Profile.MODERN, "tel", "traces", 0) == []  # nothing to record ...
        _check_signal_tables(execute, "tel", Profile.MODERN)  # ... but the table is back, empty
        assert execute(f"SELECT count() FROM tel.{dropped} FORMAT TabSeparated") == "0\n"
        assert execute(f"SELECT count() FROM tel.{kept} FORMAT TabSeparated") == kept_rows  # the other one untouched
    recorded = execute("SELECT count() FROM tel.schema_migrations FORMAT TabSeparated")
    assert recorded == f"{len(VERSIONS)}\n"


# --------------------------------------------------------------------------- ClickHouse 18.16 server


@pytest.mark.clickhouse
def test_server_legacy_migrations_and_exact_round_trip(clickhouse: Any, clickhouse_db: str) -> None:
    version = clickhouse.version
    if version.startswith("18."):
        assert pick_profile(version) is Profile.LEGACY

    assert apply(clickhouse.query, Profile.LEGACY, clickhouse_db, "traces", 30) == VERSIONS
    assert apply(clickhouse.query, Profile.LEGACY, clickhouse_db, "traces", 30) == []  # idempotent
    recorded = clickhouse.query(
        f"SELECT version, name, profile, length(checksum) FROM {clickhouse_db}.schema_migrations "
        "ORDER BY version FORMAT TabSeparated"
    )
    assert recorded == (
        "1\t0001_traces\tlegacy\t64\n2\t0002_logs\tlegacy\t64\n3\t0003_metrics\tlegacy\t64\n"
        "4\t0004_traces_014_columns\tlegacy\t64\n"
    )
    columns = table_columns(clickhouse.query, clickhouse_db, "traces")
    assert detect_table_profile(columns) is Profile.LEGACY
    assert columns["timestamp"] == "DateTime('UTC')"
    _check_signal_tables(clickhouse.query, clickhouse_db, Profile.LEGACY)

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

    def execute(sql: str) -> str:  # the SQL carries its SETTINGS and FORMAT; an INSERT its rows after a newline
        head, _, rows = sql.partition("\n") if sql.startswith("INSERT") else (sql, "", "")
        return str(clickhouse.query(head, data=rows) if rows else clickhouse.query(sql))

    _round_trip_logs_and_metrics(execute, clickhouse_db, Profile.LEGACY)
    for table in ("logs", "metrics"):
        mismatches = clickhouse.query(
            f"SELECT count() FROM {clickhouse_db}.{table} "
            "WHERE toUInt64(toUnixTimestamp(timestamp)) != intDiv(timestamp_ns, 1000000000) FORMAT TabSeparated"
        )
        assert mismatches == "0\n", table
        last = clickhouse.query(
            f"SELECT toString(timestamp) FROM {clickhouse_db}.{table} WHERE timestamp_ns = {LAST_NS} FORMAT TSV"
        )
        assert last == "2105-12-31 23:59:59\n", table


@pytest.mark.clickhouse
def test_server_modern_request_is_sticky_to_legacy(clickhouse: Any, clickhouse_db: str) -> None:
    assert apply(clickhouse.query, Profile.LEGACY, clickhouse_db, "traces", 0) == VERSIONS
    assert apply(clickhouse.query, Profile.MODERN, clickhouse_db, "traces", 0) == []
    assert detect_table_profile(table_columns(clickhouse.query, clickhouse_db, "traces")) is Profile.LEGACY
    _check_signal_tables(clickhouse.query, clickhouse_db, Profile.LEGACY)


@pytest.mark.clickhouse
def test_server_a_dropped_logs_table_is_created_again_by_apply(clickhouse: Any, clickhouse_db: str) -> None:
    names: dict[str, Any] = {"logs_table": "app_logs", "metrics_table": "app_points"}
    assert apply(clickhouse.query, Profile.LEGACY, clickhouse_db, "traces", 0, **names) == VERSIONS
    clickhouse.query(f"DROP TABLE {clickhouse_db}.app_logs")
    assert apply(clickhouse.query, Profile.LEGACY, clickhouse_db, "traces", 0, **names) == []
    _check_signal_tables(clickhouse.query, clickhouse_db, Profile.LEGACY, "app_logs", "app_points")
    assert not table_columns(clickhouse.query, clickhouse_db, "logs")
