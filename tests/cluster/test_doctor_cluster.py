"""`automagik-telemetry doctor` with several endpoints and a cluster: one line per endpoint, on a real cluster.

As in tests/cli/test_cli_ops.py, an ingest-only agent runs (so the "agent" check passes) and doctor runs as a
subprocess; here against the two replicas of the 1x2 cluster (tests/clickhouse_cluster.py) with ``--cluster``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from agent_process import AgentProcess, run_cli
from clickhouse_cluster import ClickHouseCluster, Replica

from automagik_telemetry_agent.clickhouse.rows import Profile
from automagik_telemetry_agent.clickhouse.schema import apply

pytestmark = pytest.mark.cluster  # the test that kills a replica is the last: the others need no restarted one

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "clickhouse"


@pytest.fixture
def ingest_agent(tmp_path: Path) -> Iterator[AgentProcess]:
    with AgentProcess(tmp_path / "agent", metrics_listen="") as agent:
        yield agent


def doctor(agent: AgentProcess, endpoints: list[Replica], db: str, *extra: str) -> subprocess.CompletedProcess[str]:
    result = run_cli(
        "doctor",
        *agent.cli_flags(),
        "--sink",
        "clickhouse",
        "--clickhouse-endpoint",
        ",".join(r.url for r in endpoints),
        "--database",
        db,
        "--connect-timeout",
        "2s",
        *extra,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def execute(replica: Replica) -> Callable[[str], str]:
    """``replica.query`` for ``apply``, patient: an ON CLUSTER statement waits for every host (a busy
    machine slows the replicas' DDL workers down)."""
    return lambda sql: replica.query(sql, timeout=120)


def endpoint_lines(out: str) -> dict[str, tuple[str, str]]:
    """{endpoint: (status, detail)} of doctor's per-endpoint lines, in the order printed."""
    found = {}
    for line in out.splitlines():
        m = re.match(r"^(ok|warn|FAIL)\s+clickhouse (https?://\S+?): (.*)$", line)
        if m:
            found[m.group(2)] = (m.group(1), m.group(3))
    return found


def test_lines_say_what_is_missing(
    clickhouse_cluster: ClickHouseCluster, cluster_db: str, ingest_agent: AgentProcess
) -> None:
    c, db = clickhouse_cluster, cluster_db
    # No tables yet: each endpoint FAILs, naming them and `schema apply --cluster`.
    result = doctor(ingest_agent, c.replicas, db, "--cluster", c.name)
    assert result.returncode == 1
    for r in c.replicas:
        status, detail = endpoint_lines(result.stdout)[r.url]
        assert status == "FAIL" and f"shard 1 replica {r.name}" in detail
        assert (
            f"no {db}.traces_local, {db}.logs_local, {db}.metrics_local, {db}.traces, {db}.logs, {db}.metrics" in detail
        )
    assert f"fix: run `automagik-telemetry schema apply --cluster {c.name}`" in result.stdout
    # A cluster name the servers do not know.
    apply(execute(c.replicas[0]), Profile.LEGACY, db, "traces", 0, cluster=c.name)
    result = doctor(ingest_agent, c.replicas, db, "--cluster", "other_cluster")
    assert result.returncode == 1
    assert all(
        s == "FAIL" and "cluster other_cluster is not in its system.clusters" in d
        for s, d in endpoint_lines(result.stdout).values()
    )


def test_several_plain_endpoints_compare_their_records(
    clickhouse_cluster: ClickHouseCluster, cluster_db: str, ingest_agent: AgentProcess, tmp_path: Path
) -> None:
    """Without --cluster, several endpoints (here two servers with plain tables of their own) get a line each
    too; one that lacks a migration the other has is a warning on its line."""
    c, db = clickhouse_cluster, cluster_db
    r1, r2 = c.replicas
    root = tmp_path / "migrations"
    shutil.copytree(DEPLOY, root)
    (root / "legacy" / "0004_traces_014_columns.sql").unlink()
    assert apply(execute(r1), Profile.LEGACY, db, "traces", 0) == [1, 2, 3, 4]
    assert apply(execute(r2), Profile.LEGACY, db, "traces", 0, root=root) == [1, 2, 3]
    result = doctor(ingest_agent, c.replicas, db)
    assert result.returncode == 0, result.stdout  # warnings only
    lines = endpoint_lines(result.stdout)
    status, detail = lines[r1.url]
    assert status == "ok", detail
    assert detail == (
        "ClickHouse 18.16.1, tables traces logs metrics (MergeTree), legacy rows, INSERT into traces allowed, "
        "migrations 1-4, this host's first choice"
    )
    status, detail = lines[r2.url]
    assert status == "warn", detail
    assert detail.endswith(f"migrations 1-3; records other migrations than {r1.url} (1-4)"), detail
    assert "fix: wait for replication" in result.stdout


def test_one_line_per_replica_with_its_macros_and_tables_then_a_killed_one(
    clickhouse_cluster: ClickHouseCluster, cluster_db: str, ingest_agent: AgentProcess
) -> None:
    c, db = clickhouse_cluster, cluster_db
    r1, r2 = c.replicas
    assert apply(execute(r1), Profile.LEGACY, db, "traces", 0, cluster=c.name) == [1, 2, 3, 4]
    result = doctor(ingest_agent, c.replicas, db, "--cluster", c.name)
    assert result.returncode == 0, result.stdout
    lines = endpoint_lines(result.stdout)
    assert list(lines) == [r1.url, r2.url]  # in the order given
    for r in c.replicas:
        status, detail = lines[r.url]
        assert status == "ok", detail
        assert detail.startswith(
            f"ClickHouse 18.16.1, shard 1 replica {r.name}, tables traces_local logs_local metrics_local "
            "(ReplicatedMergeTree), traces logs metrics (Distributed), legacy rows, INSERT into traces_local allowed, "
            "migrations 1-4 (same as the other endpoints)"
        ), detail
    assert sum("this host's first choice" in d for _, d in lines.values()) == 1
    assert "clickhouse reachable" not in result.stdout  # the single-endpoint checks are not run as well

    r2.kill()  # the conftest starts it again after the test
    result = doctor(ingest_agent, c.replicas, db, "--cluster", c.name)
    assert result.returncode == 1, result.stdout
    lines = endpoint_lines(result.stdout)
    status, detail = lines[r2.url]
    assert status == "FAIL" and detail.startswith("unreachable: ") and "\n" not in detail, detail
    assert "Connection refused" in detail or "connect" in detail.lower(), detail
    assert f"fix: check that ClickHouse runs on {r2.url}" in result.stdout
    status, detail = lines[r1.url]
    assert status == "ok" and "shard 1 replica s1r1" in detail and "migrations 1-4" in detail, detail
    assert "same as the other endpoints" not in detail  # the only endpoint that answers
    assert result.stdout.rstrip().splitlines()[-1].startswith("1 failed")
