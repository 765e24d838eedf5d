"""`automagik-telemetry schema apply --cluster` on a real cluster: ZooKeeper 3.8 + clickhouse-server 18.16 replicas.

Each test runs the real CLI as a subprocess against the replicas' HTTP endpoints and checks on every replica
what it made (system.tables, system.replicas, the records), then that rows flow: written to a
``_local`` table on one replica, read through the Distributed table on another (tests/clickhouse_cluster.py).
"""

from __future__ import annotations

import json
import subprocess

import pytest
from agent_process import run_cli
from clickhouse_cluster import ClickHouseCluster, Replica, wait_for

from automagik_telemetry_agent.clickhouse.rows import Profile
from automagik_telemetry_agent.clickhouse.schema import render_migrations

pytestmark = pytest.mark.cluster  # the test that kills a replica is the last: the others need no restarted one

TABLES = ("traces", "logs", "metrics")
LAYOUT = {
    **{f"{t}_local": "ReplicatedMergeTree" for t in TABLES},
    **{t: "Distributed" for t in TABLES},
    "schema_migrations": "ReplicatedMergeTree",
}
MIGRATIONS = render_migrations(Profile.LEGACY, "telemetry", "traces", 0)


def schema_apply(
    cluster: ClickHouseCluster, db: str, *extra: str, via: list[Replica] | None = None, name: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``schema apply --cluster`` through the endpoints of ``via`` (default: every replica, in order)."""
    endpoints = ",".join(r.url for r in (via or cluster.replicas))
    result = run_cli(
        "schema",
        "apply",
        "--config",
        "/dev/null",
        "--cluster",
        name or cluster.name,
        "--clickhouse-endpoint",
        endpoints,
        "--database",
        db,
        "--read-timeout",  # an ON CLUSTER statement waits for every host: slow on a busy machine
        "150s",
        *extra,
        timeout=300,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def engines(replica: Replica, db: str) -> dict[str, str]:
    out = replica.query(f"SELECT name, engine FROM system.tables WHERE database = '{db}' FORMAT TabSeparated")
    return dict(line.split("\t") for line in out.splitlines())


def zookeeper_paths(replica: Replica, db: str) -> dict[str, tuple[str, str]]:
    out = replica.query(
        f"SELECT table, zookeeper_path, replica_name FROM system.replicas WHERE database = '{db}' FORMAT TabSeparated"
    )
    return {t: (p, r) for t, p, r in (line.split("\t") for line in out.splitlines())}


def records(replica: Replica, db: str) -> list[tuple[int, str, str, str]]:
    out = replica.query(
        f"SELECT version, name, profile, checksum FROM {db}.schema_migrations ORDER BY version FORMAT TabSeparated"
    )
    return [(int(v), n, p, c) for v, n, p, c in (line.split("\t") for line in out.splitlines())]


def columns(replica: Replica, db: str, table: str) -> list[str]:
    out = replica.query(
        f"SELECT name FROM system.columns WHERE database = '{db}' AND table = '{table}' FORMAT TabSeparated"
    )
    return out.split()


def span_row(n: int) -> bytes:
    return json.dumps({"timestamp": "2026-01-02 03:04:05", "trace_id": f"{n:032x}", "span_id": f"{n:016x}"}).encode()


def count(replica: Replica, table: str) -> int:
    return int(replica.query(f"SELECT count() FROM {table}"))


EXPECTED_RECORDS = [(m.version, m.name, "legacy", m.checksum) for m in MIGRATIONS]


def test_apply_makes_replicated_and_distributed_tables_on_every_replica(
    clickhouse_cluster: ClickHouseCluster, cluster_db: str
) -> None:
    c, db = clickhouse_cluster, cluster_db
    r1, r2 = c.replicas
    result = schema_apply(c, db)
    assert result.returncode == 0, result.stderr
    summary, *hosts = result.stdout.splitlines()
    assert summary == (
        f"{db}.traces (Distributed over {db}.traces_local, ReplicatedMergeTree) on cluster {c.name}, "
        f"ClickHouse 18.16.1 (legacy profile) via {r1.url}: applied migrations 1, 2, 3, 4"
    )
    # Every ON CLUSTER statement was done on both hosts: the database, the bookkeeping table, 2 per table,
    # 8 ALTERs of traces_local and the Distributed traces made again after them.
    assert hosts == sorted(f"  127.0.0.1:{r.tcp_port}: 18 ON CLUSTER statements done" for r in c.replicas)
    for r in c.replicas:
        assert engines(r, db) == LAYOUT, r
        paths = zookeeper_paths(r, db)
        assert paths == {
            **{f"{t}_local": (f"/clickhouse/tables/1/{db}.{t}_local", r.name) for t in TABLES},
            "schema_migrations": (f"/clickhouse/tables/all/{db}.schema_migrations", f"1-{r.name}"),
        }
        # Migration 0004's columns in the replicated table, and in the Distributed one made again after it.
        assert columns(r, db, "traces") == columns(r, db, "traces_local")
        assert {"user_id", "links", "instrumentation_library_version"} <= set(columns(r, db, "traces"))
    # The records, written once on r1, are on both replicas (one ZooKeeper path for the cluster).
    assert records(r1, db) == EXPECTED_RECORDS
    wait_for(lambda: records(r2, db) == EXPECTED_RECORDS, timeout=10, what="the records replicated to s1r2")
    # A row the shipper would write into traces_local on r1 reads back through the Distributed table on r2.
    r1.query(f"INSERT INTO {db}.traces_local FORMAT JSONEachRow", data=span_row(1))
    wait_for(lambda: count(r2, f"{db}.traces") == 1, timeout=10, what="the row through s1r2's Distributed traces")
    assert r2.query(f"SELECT trace_id FROM {db}.traces").strip() == f"{1:032x}"

    # Again, through r2 first: nothing to apply, nothing recorded twice.
    again = schema_apply(c, db, via=[r2, r1])
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0].endswith(f"via {r2.url}: applied migrations none (already up to date)")
    assert records(r1, db) == records(r2, db) == EXPECTED_RECORDS
    for r in c.replicas:
        assert engines(r, db) == LAYOUT


def test_an_unknown_cluster_is_a_clear_error(clickhouse_cluster: ClickHouseCluster, cluster_db: str) -> None:
    c, db = clickhouse_cluster, cluster_db
    result = schema_apply(c, db, name="no_such_cluster")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "automagik-telemetry: schema apply failed: no cluster 'no_such_cluster' on this server: its system.clusters "
        f"has {c.name} (clusters are defined in <remote_servers> of the servers' configuration)"
    )
    bad = schema_apply(c, db, name="not-an-identifier")
    assert bad.returncode == 2 and "--cluster" in bad.stderr and "not-an-identifier" in bad.stderr
    for r in c.replicas:
        assert engines(r, db) == {}  # nothing made


def test_a_database_with_plain_tables_is_refused(clickhouse_cluster: ClickHouseCluster, cluster_db: str) -> None:
    c, db = clickhouse_cluster, cluster_db
    r1, r2 = c.replicas
    plain = run_cli("schema", "apply", "--config", "/dev/null", "--clickhouse-endpoint", r2.url, "--database", db)
    assert plain.returncode == 0, plain.stderr
    result = schema_apply(c, db)
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    where = f"127.0.0.1:{r2.tcp_port}"
    assert f"{db}.traces on {where} is a MergeTree table, not Distributed" in line
    assert f"{db}.schema_migrations on {where} is a MergeTree table, not replicated" in line
    assert "use another --database" in line
    assert engines(r1, db) == {}  # refused before anything was made, also on the host without the plain tables
    assert set(engines(r2, db)) == {*TABLES, "schema_migrations"}


def test_dropped_tables_are_made_again(clickhouse_cluster: ClickHouseCluster, cluster_db: str) -> None:
    c, db = clickhouse_cluster, cluster_db
    r1, r2 = c.replicas
    assert schema_apply(c, db).returncode == 0
    r1.query(f"INSERT INTO {db}.traces_local FORMAT JSONEachRow", data=span_row(7))
    wait_for(lambda: count(r2, f"{db}.traces_local") == 1, timeout=10, what="the row on s1r2")
    # Dropped on one replica only, after 0004 changed it: 18.16 refuses a replica with the 0001 columns.
    r2.query(f"DROP TABLE {db}.traces_local")
    partial = schema_apply(c, db, via=[r2, r1])
    assert partial.returncode == 1
    assert f"creating {db}.traces_local again on cluster {c.name} failed" in partial.stderr
    assert "Table structure in ZooKeeper is too different" in partial.stderr
    assert "create it there by hand from SHOW CREATE TABLE" in partial.stderr
    # Dropped everywhere (the Distributed logs too): made again on both, with 0004's columns, from r1.
    c.ddl(f"DROP TABLE IF EXISTS {db}.traces_local ON CLUSTER {c.name}")
    c.ddl(f"DROP TABLE {db}.logs ON CLUSTER {c.name}")
    result = schema_apply(c, db)
    assert result.returncode == 0, result.stderr
    assert "applied migrations none (already up to date)" in result.stdout
    for r in c.replicas:
        assert engines(r, db) == LAYOUT
        assert columns(r, db, "traces_local") == columns(r, db, "traces")
    assert records(r1, db) == EXPECTED_RECORDS


def test_two_shards_have_their_own_paths_and_one_bookkeeping_table(
    clickhouse_cluster_2shards: ClickHouseCluster,
) -> None:
    c = clickhouse_cluster_2shards
    s1, s2 = c.replicas
    with c.scratch_database() as db:
        result = schema_apply(c, db)
        assert result.returncode == 0, result.stderr
        for shard, r in enumerate(c.replicas, 1):
            assert engines(r, db) == LAYOUT
            paths = zookeeper_paths(r, db)
            assert paths["traces_local"] == (f"/clickhouse/tables/{shard}/{db}.traces_local", r.name)
            assert paths["schema_migrations"] == (f"/clickhouse/tables/all/{db}.schema_migrations", f"{shard}-{r.name}")
        assert c.zookeeper_children(f"/clickhouse/tables/all/{db}.schema_migrations/replicas") == ["1-s1r1", "2-s2r1"]
        assert c.zookeeper_children(f"/clickhouse/tables/2/{db}.traces_local/replicas") == ["s2r1"]
        # The records written on shard 1 reach shard 2: the bookkeeping table spans the cluster.
        wait_for(lambda: records(s2, db) == EXPECTED_RECORDS, timeout=10, what="the records on shard 2")
        # One row per shard, each into its own traces_local: each shard's Distributed table reads both.
        s1.query(f"INSERT INTO {db}.traces_local FORMAT JSONEachRow", data=span_row(1))
        s2.query(f"INSERT INTO {db}.traces_local FORMAT JSONEachRow", data=span_row(2))
        assert (count(s1, f"{db}.traces_local"), count(s2, f"{db}.traces_local")) == (1, 1)
        for r in c.replicas:
            assert count(r, f"{db}.traces") == 2
        again = schema_apply(c, db, via=[s2, s1])
        assert again.returncode == 0 and "none (already up to date)" in again.stdout


def test_a_killed_replica_is_named_before_anything_is_made(
    clickhouse_cluster: ClickHouseCluster, cluster_db: str
) -> None:
    c, db = clickhouse_cluster, cluster_db
    r1, r2 = c.replicas
    r2.kill()
    result = schema_apply(c, db)
    assert result.returncode == 1
    assert f"cannot read system.macros of host 127.0.0.1:{r2.tcp_port} (shard 1, replica 2)" in result.stderr
    assert "Connection refused" in result.stderr
    assert engines(r1, db) == {}
