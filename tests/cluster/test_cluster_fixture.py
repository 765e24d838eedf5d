"""Proves the cluster fixture is real: ZooKeeper 3.8 + clickhouse-server 18.16 replicas (tests/clickhouse_cluster.py).

Each test prints what it measured (run with ``-s`` to see): replication delay, catch-up time after a
SIGKILL, the error code of an INSERT while ZooKeeper is down and how long until INSERTs work again.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from clickhouse_cluster import ClickHouseCluster, Replica, wait_for
from clickhouse_server import ClickHouseQueryError

pytestmark = pytest.mark.cluster


def _create_tables(cluster: ClickHouseCluster, db: str, sharding_key: str = "rand()") -> None:
    """db.events (ReplicatedMergeTree, one ZooKeeper path per shard) and db.events_all (Distributed)."""
    cluster.ddl(
        f"CREATE TABLE {db}.events ON CLUSTER {cluster.name} (ts UInt64, name String) "
        f"ENGINE = ReplicatedMergeTree('/clickhouse/tables/{{shard}}/{db}.events', '{{replica}}') ORDER BY ts"
    )
    cluster.ddl(
        f"CREATE TABLE {db}.events_all ON CLUSTER {cluster.name} AS {db}.events "
        f"ENGINE = Distributed({cluster.name}, {db}, events, {sharding_key})"
    )


def _rows(*ts: int) -> bytes:
    return b"".join(json.dumps({"ts": t, "name": f"e{t}"}).encode() + b"\n" for t in ts)


def _insert(replica: Replica, table: str, data: bytes, timeout: float = 30.0) -> None:
    replica.query(f"INSERT INTO {table} FORMAT JSONEachRow", data=data, timeout=timeout)


def _count(replica: Replica, table: str) -> int:
    return int(replica.query(f"SELECT count() FROM {table}"))


def _listening_addresses(pid: int) -> set[str]:
    """The local addresses of the TCP sockets ``pid`` listens on, as "127.0.0.1" / "::" / ..."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A = LISTEN
                addr = fields[1].rsplit(":", 1)[0]
                if len(addr) == 8:
                    found.add(".".join(str(b) for b in reversed(bytes.fromhex(addr))))
                else:
                    found.add("ipv6:" + addr)
    return found


def test_layout_versions_and_loopback_only(clickhouse_cluster):
    c = clickhouse_cluster
    r1, r2 = c.replicas
    assert [len(s) for s in c.shards] == [2]
    for r in c.replicas:
        assert r.query("SELECT version()").startswith("18.16"), r
        macros = dict(
            line.split("\t") for line in r.query("SELECT macro, substitution FROM system.macros").splitlines()
        )
        assert macros == r.macros
        assert r.http_url == f"http://127.0.0.1:{r.http_port}"
        assert r.interserver_port and len({r.http_port, r.tcp_port, r.interserver_port}) == 3
        assert _listening_addresses(r.proc.pid) == {"127.0.0.1"}
    assert _listening_addresses(c.zookeeper.proc.pid) == {"127.0.0.1"}
    clusters = r2.query(
        f"SELECT shard_num, replica_num, host_address, port FROM system.clusters WHERE cluster = '{c.name}' "
        "ORDER BY shard_num, replica_num"
    )
    assert clusters.splitlines() == [f"1\t1\t127.0.0.1\t{r1.tcp_port}", f"1\t2\t127.0.0.1\t{r2.tcp_port}"]
    assert "Mode: standalone" in c.zookeeper.four_letter("srvr")
    assert c.zookeeper.four_letter("ruok") == "imok"
    # Every replica reaches ZooKeeper; a DDLWorker made the ON CLUSTER queue at start.
    for r in c.replicas:
        assert "task_queue" in c.zookeeper_children("/clickhouse", replica=r)
    assert "ddl" in c.zookeeper_children("/clickhouse/task_queue", replica=r2)
    assert c.startup_seconds < 30
    window = r1.query("SELECT value FROM system.merge_tree_settings WHERE name = 'replicated_deduplication_window'")
    print(f"\nstartup {c.startup_seconds:.2f} s; replicated_deduplication_window = {window.strip()}")
    assert window.strip() == "100"


def test_on_cluster_create_replicated_and_distributed(clickhouse_cluster, cluster_db):
    c, db = clickhouse_cluster, cluster_db
    out = c.ddl(  # ON CLUSTER '{cluster}': the macro is expanded
        f"CREATE TABLE {db}.t ON CLUSTER '{{cluster}}' (a UInt8) "
        f"ENGINE = ReplicatedMergeTree('/clickhouse/tables/{{shard}}/{db}.t', '{{replica}}') ORDER BY a"
    )
    # One row per host: host, port, status, error, num_hosts_remaining, num_hosts_active.
    rows = sorted(line.split("\t") for line in out.splitlines())
    assert [(h, int(p), int(s)) for h, p, s, *_ in rows] == sorted(("127.0.0.1", r.tcp_port, 0) for r in c.replicas)
    _create_tables(c, db)
    for r in c.replicas:
        engines = r.query(f"SELECT name, engine FROM system.tables WHERE database = '{db}' ORDER BY name")
        assert engines.splitlines() == [
            "events\tReplicatedMergeTree",
            "events_all\tDistributed",
            "t\tReplicatedMergeTree",
        ]
        info = r.query(
            f"SELECT zookeeper_path, replica_name FROM system.replicas WHERE database = '{db}' AND table = 'events'"
        )
        assert info.strip().split("\t") == [f"/clickhouse/tables/1/{db}.events", r.name]
    assert c.zookeeper_children(f"/clickhouse/tables/1/{db}.events/replicas") == ["s1r1", "s1r2"]
    # Through the Distributed table: a synchronous insert writes one replica of the shard (internal_replication:
    # ReplicatedMergeTree copies it), a SELECT reads one replica per shard (the local one if it is in the shard).
    c.query(
        f"INSERT INTO {db}.events_all FORMAT JSONEachRow", data=_rows(1, 2, 3), settings={"insert_distributed_sync": 1}
    )
    for r in c.replicas:
        wait_for(lambda r=r: _count(r, f"{db}.events") == 3, timeout=10, what=f"3 rows on {r.name}")
        assert _count(r, f"{db}.events_all") == 3


def test_replication_and_block_deduplication(clickhouse_cluster, cluster_db):
    c, db = clickhouse_cluster, cluster_db
    r1, r2 = c.replicas
    _create_tables(c, db)
    table = f"{db}.events"
    block = _rows(10, 11, 12)
    t0 = time.monotonic()
    _insert(r1, table, block)
    wait_for(lambda: _count(r2, table) == 3, timeout=10, interval=0.01, what="the block replicated to s1r2")
    delay = time.monotonic() - t0
    print(f"\nreplication delay r1 -> r2: {delay * 1000:.0f} ms")
    # The same block again, on either replica: recognised by its hash in ZooKeeper, not stored.
    _insert(r2, table, block)
    _insert(r1, table, block)
    r1.query(f"SYSTEM SYNC REPLICA {table}")
    r2.query(f"SYSTEM SYNC REPLICA {table}")
    assert (_count(r1, table), _count(r2, table)) == (3, 3)
    # The block ID hashes the part's data, which is sorted by the ORDER BY key: the same rows in another
    # order are a duplicate too. Other rows are another block: stored.
    _insert(r2, table, _rows(12, 11, 10))
    r1.query(f"SYSTEM SYNC REPLICA {table}")
    assert _count(r1, table) == 3
    _insert(r2, table, _rows(13, 14, 15))
    wait_for(lambda: _count(r1, table) == 6, timeout=10, what="the second block on s1r1")
    assert _count(r2, table) == 6


def test_killed_replica_restarts_and_catches_up(clickhouse_cluster, cluster_db):
    c, db = clickhouse_cluster, cluster_db
    r1, r2 = c.replicas
    _create_tables(c, db)
    table = f"{db}.events"
    replicas_path = f"/clickhouse/tables/1/{db}.events/replicas"
    url = r2.url
    r2.kill()
    assert not r2.ping()
    _insert(r1, table, _rows(1, 2))  # the surviving replica takes writes alone
    _insert(r1, table, _rows(3))
    # A SIGKILL leaves r2's ephemeral is_active znode until its ZooKeeper session expires
    # (session_timeout_ms); a replica restarted before that waits 18.16's fixed 10 s to retry.
    t0 = time.monotonic()
    wait_for(
        lambda: "is_active" not in c.zookeeper_children(f"{replicas_path}/s1r2", replica=r1),
        timeout=c.session_timeout_ms / 1000 + 10,
        what="s1r2's old session expired",
    )
    expired = time.monotonic() - t0
    r2.restart()
    assert r2.url == url
    t1 = time.monotonic()
    wait_for(lambda: _count(r2, table) == 3, timeout=15, interval=0.02, what="s1r2 caught up")
    print(f"\nold session expired after {expired:.1f} s; caught up {time.monotonic() - t1:.2f} s after restart")
    assert r2.query(f"SELECT is_readonly, is_session_expired FROM system.replicas WHERE database = '{db}'").split() == [
        "0",
        "0",
    ]
    _insert(r2, table, _rows(4))  # and takes writes again
    wait_for(lambda: _count(r1, table) == 4, timeout=10, what="s1r2's insert on s1r1")


def test_frozen_replica_and_thaw(clickhouse_cluster, cluster_db):
    c, db = clickhouse_cluster, cluster_db
    r1, r2 = c.replicas
    _create_tables(c, db)
    table = f"{db}.events"
    r2.freeze()
    try:
        with pytest.raises(OSError):  # socket timeout: the kernel accepts, nobody answers
            r2.query("SELECT 1", timeout=0.5)
        _insert(r1, table, _rows(1))
    finally:
        r2.thaw()
    wait_for(lambda: _count(r2, table) == 1, timeout=10, what="s1r2 caught up after SIGCONT")


def test_insert_with_zookeeper_stopped_fails_then_recovers(clickhouse_cluster, cluster_db):
    c, db = clickhouse_cluster, cluster_db
    r1, r2 = c.replicas
    zk = c.zookeeper
    _create_tables(c, db)
    table = f"{db}.events"
    _insert(r1, table, _rows(1))
    port = zk.port
    zk.stop()
    try:
        with pytest.raises(ClickHouseQueryError) as ei:
            _insert(r1, table, _rows(2), timeout=20)
        code = ei.value.code
        print(f"\nINSERT with ZooKeeper stopped: HTTP {ei.value.status}, code {code}: {ei.value.body.strip()[:120]}")
        # 242 TABLE_IS_READ_ONLY once the replica noticed the lost session (at once here: the TCP
        # connection is closed); 999 KEEPER_EXCEPTION if the INSERT itself hit the connection loss.
        assert code in (242, 999), ei.value
        assert _count(r1, table) == 1  # reads are local: still served
    finally:
        zk.start()
    assert zk.port == port
    t0 = time.monotonic()
    wait_for(lambda: _insert(r1, table, _rows(2), timeout=10) or True, timeout=30, interval=0.1, what="INSERT works")
    print(f"INSERT works again {time.monotonic() - t0:.1f} s after ZooKeeper started")
    # znodes survived the restart (same data dir), and replication resumes.
    assert set(c.zookeeper_children(f"/clickhouse/tables/1/{db}.events/replicas")) == {"s1r1", "s1r2"}
    wait_for(lambda: _count(r2, table) == 2, timeout=20, what="both rows on s1r2")


def test_insert_with_zookeeper_frozen_times_out_then_recovers(clickhouse_cluster, cluster_db):
    c, db = clickhouse_cluster, cluster_db
    r1 = c.replicas[0]
    _create_tables(c, db)
    table = f"{db}.events"
    c.zookeeper.freeze()
    try:
        t0 = time.monotonic()
        with pytest.raises(ClickHouseQueryError) as ei:
            _insert(r1, table, _rows(1), timeout=20)
        took = time.monotonic() - t0
        print(f"\nINSERT with ZooKeeper frozen: code {ei.value.code} after {took:.1f} s: {ei.value.body.strip()[:100]}")
        assert ei.value.code in (242, 999), ei.value
        assert took < c.session_timeout_ms / 1000 + 5
    finally:
        c.zookeeper.thaw()
    t0 = time.monotonic()
    wait_for(lambda: _insert(r1, table, _rows(1), timeout=10) or True, timeout=30, interval=0.1, what="INSERT works")
    print(f"INSERT works again {time.monotonic() - t0:.1f} s after SIGCONT")


def test_two_shards_distributed(clickhouse_cluster_2shards):
    c = clickhouse_cluster_2shards
    assert [[r.name for r in s] for s in c.shards] == [["s1r1"], ["s2r1"]]
    with c.scratch_database() as db:
        _create_tables(c, db, sharding_key="ts")
        c.query(
            f"INSERT INTO {db}.events_all FORMAT JSONEachRow",
            data=_rows(*range(10)),
            settings={"insert_distributed_sync": 1},
        )
        # Distributed(..., ts): shard index = ts % 2 -> even ts on the first shard, odd on the second.
        assert [
            r.query(f"SELECT groupArray(ts) FROM (SELECT ts FROM {db}.events ORDER BY ts)").strip() for r in c.replicas
        ] == [
            "[0,2,4,6,8]",
            "[1,3,5,7,9]",
        ]
        for r in c.replicas:
            assert _count(r, f"{db}.events_all") == 10
