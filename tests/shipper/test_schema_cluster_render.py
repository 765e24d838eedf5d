"""The ON CLUSTER form of the migrations (clickhouse/cluster_schema.py) and ``apply(cluster=...)``, without a server.

The legacy form also runs on the real 18.16 cluster (tests/cluster/test_schema_cluster.py); the modern one
cannot here (chDB has no ZooKeeper, the only replicated servers are 18.16), so its statements are checked
as text: engine, ON CLUSTER, the replicated dedup window, the Distributed tables and their ALTERs. A fake
engine then drives ``apply`` through the cluster checks on both profiles.
"""

from __future__ import annotations

import re

import pytest

from automagik_telemetry_agent.clickhouse.cluster_schema import (
    ClusterHost,
    bookkeeping_ddl,
    cluster_statements,
    macro_problems,
    mixed_table_problems,
    parse_ddl_reply,
)
from automagik_telemetry_agent.clickhouse.rows import Profile
from automagik_telemetry_agent.clickhouse.schema import (
    _BOOKKEEPING_DDL,
    SchemaError,
    apply,
    render_migrations,
)

CLUSTER = "c1"
TABLES = ("traces", "logs", "metrics")
PATH = "/clickhouse/tables/{shard}/d.%s_local"


def rendered(profile: Profile, ttl_days: int = 0) -> dict[str, tuple[str, ...]]:
    """Each migration's cluster statements, by migration name."""
    return {
        m.name: cluster_statements(m.statements, CLUSTER, profile)
        for m in render_migrations(profile, "d", "traces", ttl_days)
    }


def columns(statement: str) -> str:
    """The column list of a CREATE TABLE: from its first ``(`` to the ``)`` before ENGINE."""
    return statement[statement.index("(") : statement.rindex("ENGINE")].strip()


# ------------------------------------------------------------------------------------------ rendering


@pytest.mark.parametrize("profile", list(Profile))
@pytest.mark.parametrize(
    ("name", "table"), [("0001_traces", "traces"), ("0002_logs", "logs"), ("0003_metrics", "metrics")]
)
def test_a_create_table_becomes_a_replicated_local_table_and_a_distributed_one(
    profile: Profile, name: str, table: str
) -> None:
    (plain,) = next(m for m in render_migrations(profile, "d", "traces", 30) if m.name == name).statements
    local, distributed = rendered(profile, 30)[name]
    assert local.startswith(f"CREATE TABLE IF NOT EXISTS d.{table}_local ON CLUSTER {CLUSTER}\n(")
    assert columns(local) == columns(plain)  # the columns (and a modern table's INDEX lines) are kept as they are
    engine = f"ENGINE = ReplicatedMergeTree('{PATH % table}', '{{replica}}')\nPARTITION BY toDate(timestamp)\nORDER BY"
    assert engine in local
    assert local.count("ENGINE") == 1 and "ENGINE = MergeTree" not in local
    assert distributed == (
        f"CREATE TABLE IF NOT EXISTS d.{table} ON CLUSTER {CLUSTER} AS d.{table}_local\n"
        f"ENGINE = Distributed({CLUSTER}, d, {table}_local, rand())"
    )
    # Everything after the engine name is the plain statement's: PARTITION BY, ORDER BY, TTL, SETTINGS.
    tail = plain.split("MergeTree", 1)[1].removeprefix("()")
    # ... with the dedup window of a replicated table: the modern files' own, 1000 blocks for the legacy ones
    expected = tail.replace("non_replicated_deduplication_window", "replicated_deduplication_window")
    if "replicated_deduplication_window" not in expected:
        expected = expected.replace("SETTINGS ", "SETTINGS replicated_deduplication_window = 1000, ", 1)
    assert local.split("'{replica}')", 1)[1] == expected


def test_modern_tables_keep_ttl_and_get_the_replicated_dedup_window() -> None:
    for name in ("0001_traces", "0002_logs", "0003_metrics"):
        local, _ = rendered(Profile.MODERN, 30)[name]
        assert "TTL toDateTime(timestamp) + INTERVAL 30 DAY" in local
        assert "SETTINGS replicated_deduplication_window = 1000, index_granularity = 8192" in local
        assert "non_replicated" not in local
    local, _ = rendered(Profile.MODERN, 0)["0001_traces"]
    assert "TTL" not in local
    assert "INDEX idx_trace_id trace_id TYPE bloom_filter(0.001) GRANULARITY 1" in local


def test_legacy_tables_have_the_1816_engine_clause() -> None:
    local, _ = rendered(Profile.LEGACY)["0001_traces"]
    assert local.endswith(
        f"ENGINE = ReplicatedMergeTree('{PATH % 'traces'}', '{{replica}}')\nPARTITION BY toDate(timestamp)\n"
        "ORDER BY (service_name, span_name, timestamp)\n"
        "SETTINGS replicated_deduplication_window = 1000, index_granularity = 8192"
    )  # 18.16's default window is 100 blocks: ten seconds of a shard taking ten inserts per second


def test_modern_add_column_goes_to_the_local_and_the_distributed_table_on_cluster() -> None:
    plain = next(m for m in render_migrations(Profile.MODERN, "d", "traces", 0) if m.version == 4).statements
    statements = rendered(Profile.MODERN)["0004_traces_014_columns"]
    assert len(statements) == 2 * len(plain) == 16
    for add, (local, distributed) in zip(plain, zip(statements[::2], statements[1::2], strict=True), strict=True):
        rest = add.split("ADD COLUMN", 1)[1]
        assert local == f"ALTER TABLE d.traces_local ON CLUSTER {CLUSTER} ADD COLUMN{rest}"
        assert distributed == f"ALTER TABLE d.traces ON CLUSTER {CLUSTER} ADD COLUMN{rest}"
        assert "IF NOT EXISTS" in rest


def test_legacy_add_column_alters_the_local_table_then_makes_the_distributed_one_again() -> None:
    """18.16 refuses ALTER ON CLUSTER of a non-replicated (Distributed) table on internal_replication shards."""
    plain = next(m for m in render_migrations(Profile.LEGACY, "d", "traces", 0) if m.version == 4).statements
    *alters, drop, create = rendered(Profile.LEGACY)["0004_traces_014_columns"]
    assert alters == [
        s.replace("ALTER TABLE d.traces ", f"ALTER TABLE d.traces_local ON CLUSTER {CLUSTER} ") for s in plain
    ]
    assert drop == f"DROP TABLE IF EXISTS d.traces ON CLUSTER {CLUSTER}"
    assert create == rendered(Profile.LEGACY)["0001_traces"][1]


def test_other_engines_of_the_family_and_no_op_migrations() -> None:
    (replacing, _) = cluster_statements(
        ("CREATE TABLE IF NOT EXISTS d.t\n(a UInt8, v UInt32)\nENGINE = ReplacingMergeTree(v)\nORDER BY a",),
        CLUSTER,
        Profile.MODERN,
    )
    assert replacing.endswith(
        "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/d.t_local', '{replica}', v)\nORDER BY a\n"
        "SETTINGS replicated_deduplication_window = 1000"
    )
    assert cluster_statements(("SELECT 1",), CLUSTER, Profile.LEGACY) == ("SELECT 1",)


@pytest.mark.parametrize(
    "statement",
    [
        "ALTER TABLE d.traces MODIFY TTL toDateTime(timestamp) + INTERVAL 1 DAY",
        "CREATE TABLE IF NOT EXISTS d.t (a UInt8) ENGINE = Log",
        "INSERT INTO d.t VALUES (1)",
    ],
)
def test_a_statement_with_no_cluster_form_is_refused(statement: str) -> None:
    with pytest.raises(ValueError, match="no ON CLUSTER form"):
        cluster_statements((statement,), CLUSTER, Profile.MODERN)


def test_the_bookkeeping_table_is_one_replicated_table_for_the_whole_cluster() -> None:
    ddl = bookkeeping_ddl(_BOOKKEEPING_DDL.format(database="d"), CLUSTER)
    assert ddl.startswith(f"CREATE TABLE IF NOT EXISTS d.schema_migrations ON CLUSTER {CLUSTER}\n(")
    assert ddl.endswith(
        "ENGINE = ReplicatedMergeTree('/clickhouse/tables/all/d.schema_migrations', '{shard}-{replica}')\n"
        "ORDER BY version\nSETTINGS replicated_deduplication_window = 1000"
    )
    assert "{shard}/" not in ddl  # no per-shard path: every host of every shard replicates the records


# ------------------------------------------------------------------------------------------ checks


def host(shard: int, replica: int, name: str = "10.0.0.1", port: int = 9000) -> ClusterHost:
    return ClusterHost(shard, replica, name, port + 10 * shard + replica, "default")


def test_macro_problems() -> None:
    a, b, c = host(1, 1), host(1, 2), host(2, 1)
    good = {a: {"shard": "1", "replica": "r1"}, b: {"shard": "1", "replica": "r2"}, c: {"shard": "2", "replica": "r1"}}
    assert macro_problems(good) == []
    missing = {**good, b: {"shard": "1"}}
    assert macro_problems(missing) == [f"host {b} has no <macros><replica> in its configuration"]
    assert str(b) == "10.0.0.1:9012 (shard 1, replica 2)"
    split = {**good, b: {"shard": "one", "replica": "r2"}}
    assert macro_problems(split) == ["the hosts of shard 1 have different shard macros: 1, one"]
    same = {**good, c: {"shard": "1", "replica": "r3"}}
    assert macro_problems(same) == ["2 shards of the cluster have the same shard macro '1'"]
    twins = {**good, b: {"shard": "1", "replica": "r1"}}
    assert macro_problems(twins) == ["2 hosts of shard 1 have the same replica macro 'r1'"]


def test_mixed_table_problems() -> None:
    cluster_layout = {
        "traces": "Distributed",
        "traces_local": "ReplicatedMergeTree",
        "schema_migrations": "ReplicatedMergeTree",
    }
    assert mixed_table_problems("h:1", cluster_layout, "d", TABLES) == []
    assert mixed_table_problems("h:1", {}, "d", TABLES) == []
    plain = {"traces": "MergeTree", "logs": "MergeTree", "schema_migrations": "MergeTree", "metrics_local": "MergeTree"}
    assert mixed_table_problems("h:1", plain, "d", TABLES) == [
        "d.traces on h:1 is a MergeTree table, not Distributed",
        "d.logs on h:1 is a MergeTree table, not Distributed",
        "d.metrics_local on h:1 is a MergeTree table, not replicated",
        "d.schema_migrations on h:1 is a MergeTree table, not replicated",
    ]


def test_parse_ddl_reply_and_addresses() -> None:
    reply = "127.0.0.1\t9001\t0\t\t1\t0\n127.0.0.1\t9002\t0\t\t0\t0\n"
    assert [(h.host, h.port, h.status) for h in parse_ddl_reply(reply)] == [
        ("127.0.0.1", 9001, 0),
        ("127.0.0.1", 9002, 0),
    ]
    assert parse_ddl_reply("") == [] and parse_ddl_reply("Ok.\n") == []
    assert ClusterHost(1, 1, "::1", 9000, "default").address == "[::1]:9000"


# ------------------------------------------------------------------------------------------ apply (fake engine)


class FakeCluster:
    """Just enough of a cluster for ``apply(cluster=...)``: system.clusters, each host's macros and tables
    through remote(), schema_migrations, system.columns of the tables its CREATE TABLEs made."""

    def __init__(self, hosts: dict[str, dict[str, str]], tables: dict[str, dict[str, str]] | None = None) -> None:
        self.hosts = hosts  # "addr:port" -> macros
        self.tables = tables or {}  # "addr:port" -> {name: engine} in d (before apply)
        self.statements: list[str] = []
        self.recorded: list[tuple[int, str, str, str]] = []
        self.columns: dict[str, set[str]] = {}  # "d.t" -> its columns

    def __call__(self, sql: str) -> str:
        self.statements.append(sql)
        if sql.startswith("SELECT shard_num, replica_num, host_name, port, user FROM system.clusters"):
            if f"cluster = '{CLUSTER}'" not in sql:
                return ""
            return "".join(
                f"1\t{i}\t{a.split(':')[0]}\t{a.split(':')[1]}\tdefault\n" for i, a in enumerate(self.hosts, 1)
            )
        if sql.startswith("SELECT DISTINCT cluster FROM system.clusters"):
            return f"{CLUSTER}\nother\n"
        remote = re.match(r"SELECT (\w+), (\w+) FROM remote\('([^']+)', system, (\w+), 'default'\)", sql)
        if remote:
            if remote[4] == "macros":
                return "".join(f"{k}\t{v}\n" for k, v in self.hosts[remote[3]].items())
            return "".join(f"{k}\t{v}\n" for k, v in self.tables.get(remote[3], {}).items())
        if sql.startswith("SELECT version, name, profile, checksum"):
            return "".join(f"{v}\t{n}\t{p}\t{c}\n" for v, n, p, c in self.recorded)
        if sql.startswith("INSERT INTO d.schema_migrations"):
            values = sql.split("VALUES (", 1)[1].rstrip(")").split(", ")
            self.recorded.append((int(values[0]), values[1].strip("'"), values[2].strip("'"), values[4].strip("'")))
        cols = re.fullmatch(
            r"SELECT name, type FROM system\.columns WHERE database = '(\w+)' AND table = '(\w+)' .*", sql
        )
        if cols:
            return "".join(f"{c}\tString\n" for c in sorted(self.columns.get(f"{cols[1]}.{cols[2]}", ())))
        created = re.match(r"CREATE TABLE IF NOT EXISTS (\w+\.\w+) ON CLUSTER", sql)
        if created:
            self.columns.setdefault(created[1], {"timestamp"})
        added = re.match(r"ALTER TABLE (\w+\.\w+) ON CLUSTER \w+ ADD COLUMN (?:IF NOT EXISTS )?(\w+)", sql)
        if added:
            self.columns[added[1]].add(added[2])
        return ""

    def executed(self, prefix: str) -> list[str]:
        return [s for s in self.statements if s.startswith(prefix)]


HOSTS = {"10.0.0.1:9000": {"shard": "1", "replica": "a"}, "10.0.0.2:9000": {"shard": "1", "replica": "b"}}


@pytest.mark.parametrize("profile", list(Profile))
def test_apply_on_a_cluster_with_fake_engine(profile: Profile) -> None:
    engine = FakeCluster(HOSTS)
    assert apply(engine, profile, "d", "traces", 0, cluster=CLUSTER) == [1, 2, 3, 4]
    ddl = [s for s in engine.statements if not s.startswith(("SELECT", "INSERT"))]
    assert ddl[:3] == [
        f"CREATE DATABASE IF NOT EXISTS d ON CLUSTER {CLUSTER}",
        bookkeeping_ddl(_BOOKKEEPING_DDL.format(database="d"), CLUSTER),
        "SYSTEM SYNC REPLICA d.schema_migrations",
    ]
    expected = [
        s
        for m in render_migrations(profile, "d", "traces", 0)
        for s in cluster_statements(m.statements, CLUSTER, profile)
    ]
    assert ddl[3:] == expected
    assert all("ON CLUSTER" in s for s in ddl if not s.startswith("SYSTEM"))
    assert [r[:3] for r in engine.recorded] == [
        (m.version, m.name, profile.value) for m in render_migrations(profile, "d", "traces", 0)
    ]
    assert {"user_id", "links"} <= engine.columns["d.traces_local"]
    # Both hosts were read before anything was created.
    first_ddl = engine.statements.index(ddl[0])
    remote = [s for s in engine.statements[:first_ddl] if "remote(" in s]
    assert len(remote) == 4 and {a for a in HOSTS if any(a in s for s in remote)} == set(HOSTS)
    # Again: nothing applied; the columns that exist are not added again.
    engine.statements.clear()
    assert apply(engine, profile, "d", "traces", 0, cluster=CLUSTER) == []
    assert not engine.executed("ALTER") and not engine.executed("INSERT")


def test_apply_on_a_cluster_creates_a_dropped_table_again_with_fake_engine() -> None:
    engine = FakeCluster(HOSTS)
    apply(engine, Profile.LEGACY, "d", "traces", 0, cluster=CLUSTER)
    del engine.columns["d.logs_local"], engine.columns["d.traces"]
    engine.statements.clear()
    assert apply(engine, Profile.LEGACY, "d", "traces", 0, cluster=CLUSTER) == []
    made = [s.split(" ON CLUSTER")[0].split()[-1] for s in engine.executed("CREATE TABLE")]
    # logs_local, and the Distributed logs (it names logs_local: IF NOT EXISTS, a no-op); traces by 0001, and
    # again by 0004's rebuild of the Distributed table after its ALTERs.
    assert made == ["d.schema_migrations", "d.traces", "d.logs_local", "d.logs", "d.traces"]
    assert engine.executed("DROP") == [f"DROP TABLE IF EXISTS d.traces ON CLUSTER {CLUSTER}"]


def test_apply_refuses_an_unknown_cluster_and_names_the_known_ones() -> None:
    engine = FakeCluster(HOSTS)
    with pytest.raises(SchemaError, match=r"no cluster 'nope' on this server: its system.clusters has c1, other"):
        apply(engine, Profile.LEGACY, "d", "traces", 0, cluster="nope")
    assert not engine.executed("CREATE")


def test_apply_refuses_a_host_without_macros_naming_it() -> None:
    engine = FakeCluster({**HOSTS, "10.0.0.2:9000": {"replica": "b"}})
    with pytest.raises(SchemaError, match=r"host 10\.0\.0\.2:9000 \(shard 1, replica 2\) has no <macros><shard>"):
        apply(engine, Profile.LEGACY, "d", "traces", 0, cluster=CLUSTER)
    assert not engine.executed("CREATE")


def test_apply_refuses_a_database_with_plain_tables() -> None:
    engine = FakeCluster(HOSTS, {"10.0.0.2:9000": {"traces": "MergeTree", "schema_migrations": "MergeTree"}})
    with pytest.raises(
        SchemaError, match=r"d\.traces on 10\.0\.0\.2:9000 is a MergeTree table, not Distributed.*another --database"
    ):
        apply(engine, Profile.LEGACY, "d", "traces", 0, cluster=CLUSTER)
    assert not engine.executed("CREATE")


@pytest.mark.parametrize("bad", ["a-b", "x y", "1c", "c;DROP"])
def test_apply_refuses_a_cluster_name_that_is_not_an_identifier(bad: str) -> None:
    engine = FakeCluster(HOSTS)
    with pytest.raises(ValueError, match="not a plain identifier"):
        apply(engine, Profile.LEGACY, "d", "traces", 0, cluster=bad)
    assert engine.statements == []
