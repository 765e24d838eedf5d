"""Failover of a real agent between the two replicas of a real cluster (ZooKeeper 3.8 + two clickhouse-server
18.16 replicas of one shard, tests/clickhouse_cluster.py) under a steady load: a SIGKILLed replica, a frozen
one (SIGSTOP) and a ZooKeeper outage lose nothing and store nothing twice.

The agent gets both replicas (``--clickhouse-endpoint r1,r2 --cluster telemetry_cluster``): it inserts into
the replicated ``traces_local`` of its preferred replica and fails over to the other one; reads go through
the Distributed ``traces``. Exactly once holds because both replicas are one dedup domain (the table's
ZooKeeper path): an insert whose outcome is unknown (a reset, a stall) is retried only there, and 18.16
recognises a block it already has by its checksum, whichever replica it reaches.

Run with ``-s`` to see the measured failover times (from the event to the agent's log line of the first
insert the other replica accepted: "inserting into ... at <replica> (was <the other>)").
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from agent_process import AgentProcess, run_cli, wait_until
from clickhouse_cluster import ClickHouseCluster, Replica, wait_for
from steady_load import SteadyLoad

from automagik_telemetry_agent.clickhouse.factory import ordered_endpoints

pytestmark = pytest.mark.cluster

FAILOVER_KILL_BOUND_S = 2.0  # a refused connection fails over within the same insert: the next batch's wait
FAILOVER_STALL_BOUND_S = 2.0 + 2 * 1.0 + 2.0  # stall_check, two pings' timeouts, a batch's wait and margin
_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (\w+)\[\d+\] (\w+) ([\w.]+): (.*)$")
_SWITCH = re.compile(r"inserting into \S+ at (\S+) \(was (\S+)\)")
TABLES = ("traces", "logs", "metrics")
ZOOKEEPER_DOWN_S = 13.0  # from the stop request (a stop may itself take seconds) to the start


# ------------------------------------------------------------------------------------------------ schema
def create_cluster_tables(cluster: ClickHouseCluster, db: str) -> None:
    """The agent's tables on the cluster, made by the real ``automagik-telemetry schema apply --cluster``."""
    endpoints = ",".join(r.url for r in cluster.replicas)
    args = ("--config", "/dev/null", "--cluster", cluster.name, "--clickhouse-endpoint", endpoints)
    result = run_cli("schema", "apply", *args, "--database", db, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    for r in cluster.replicas:
        tables = r.query(f"SELECT name, engine FROM system.tables WHERE database = '{db}' FORMAT TabSeparated")
        layout = dict(line.split("\t") for line in tables.splitlines())
        for t in TABLES:
            assert (layout.get(f"{t}_local"), layout.get(t)) == ("ReplicatedMergeTree", "Distributed"), layout


# ------------------------------------------------------------------------------------------------ helpers
@dataclass(frozen=True)
class LogLine:
    time: float
    process: str
    level: str
    logger: str
    message: str


def shipper_lines(agent: AgentProcess, since: float = 0.0) -> list[LogLine]:
    out = []
    for raw in agent.stderr_text.splitlines():
        m = _LINE.match(raw)
        if m and m.group(2) == "shipper":
            stamp = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if stamp >= since:
                out.append(LogLine(stamp, m.group(2), m.group(3), m.group(4), m.group(5)))
    return out


def switches(agent: AgentProcess, since: float = 0.0) -> list[tuple[float, str, str]]:
    """(time, to, from) of every switch of the traces sink's endpoint after ``since``."""
    found = []
    for line in shipper_lines(agent, since):
        m = _SWITCH.search(line.message)
        if m and "traces_local" in line.message:
            found.append((line.time, m.group(1), m.group(2)))
    return found


def switch_to(agent: AgentProcess, replica: Replica, since: float, timeout: float) -> float:
    """When the agent's traces inserts went to ``replica`` (its first insert accepted there) after ``since``."""
    return float(
        wait_until(
            lambda: next((t for t, to, _ in switches(agent, since) if to == replica.url), None),
            timeout,
            message=f"the agent inserting into {replica.name}\n{agent.stderr_text[-3000:]}",
        )
    )


def digest(agent: AgentProcess, since: float, limit: int = 40, width: int = 400) -> str:
    """The shipper's log lines of INFO and above after ``since``, shortened (printed with ``-s``)."""
    lines = [ln for ln in shipper_lines(agent, since) if ln.level != "DEBUG"][:limit]
    return "\n".join(f"  {ln.time - since:+7.3f} {ln.level} {ln.message[:width]}" for ln in lines)


def final_stats(agent: AgentProcess) -> dict[str, int]:
    """The integer stats of the traces shipper from its "shipper stopped" line (ShipperStats.to_dict())."""
    found = [
        {k: int(v) for k, v in re.findall(r"'(\w+)': (\d+)\b", ln.message)}
        for ln in shipper_lines(agent)
        if ln.message.startswith("shipper stopped: ")
    ]
    assert found, "no 'shipper stopped' line"
    return max(found, key=lambda s: s.get("rows", 0))


def count(replica: Replica, table: str) -> int:
    return int(replica.query(f"SELECT count() FROM {table}").strip())


def start_agent(tmp_path: Path, cluster: ClickHouseCluster, db: str) -> AgentProcess:
    return AgentProcess(
        tmp_path / "agent",
        sink="clickhouse",
        clickhouse_endpoint=",".join(r.url for r in cluster.replicas),
        cluster=cluster.name,
        database=db,
        batch_wait="250ms",
        probe_interval="1s",
    ).start()


def preferred(cluster: ClickHouseCluster) -> tuple[Replica, Replica]:
    """The replica the agent prefers on this host (the factory's order), and the other one."""
    urls = [r.url for r in cluster.replicas]
    first = ordered_endpoints({"clickhouse.endpoint": ",".join(urls), "clickhouse.cluster": cluster.name})[0]
    one, two = cluster.replicas
    return (one, two) if one.url == first else (two, one)


def assert_exactly_once(cluster: ClickHouseCluster, db: str, sent: int) -> dict[str, int]:
    """Every span once, through the Distributed table and on each replica (after both caught up)."""
    for r in cluster.replicas:
        wait_for(  # a replica thawed or restarted may first answer "session expired" (999) for a moment
            lambda r=r: r.query(f"SYSTEM SYNC REPLICA {db}.traces_local", timeout=60) is not None,
            timeout=60,
            what=f"SYSTEM SYNC REPLICA on {r.name}",
        )
    wait_for(
        lambda: all(count(r, f"{db}.traces_local") >= sent for r in cluster.replicas),
        timeout=30,
        what=f"{sent} rows on both replicas",
    )
    time.sleep(0.5)  # a late duplicate would show up by now
    counts = {r.name: count(r, f"{db}.traces_local") for r in cluster.replicas}
    total, distinct = (int(x) for x in cluster.query(f"SELECT count(), uniqExact(span_id) FROM {db}.traces").split())
    counts.update(distributed=total, distinct=distinct)
    assert counts == {**{r.name: sent for r in cluster.replicas}, "distributed": sent, "distinct": sent}, counts
    return counts


# ------------------------------------------------------------------------------------------------ tests
def test_sigkill_and_sigstop_of_the_replica_in_use_fail_over_and_every_span_is_stored_once(
    clickhouse_cluster: ClickHouseCluster, cluster_db: str, tmp_path: Path
) -> None:
    cluster, db = clickhouse_cluster, cluster_db
    create_cluster_tables(cluster, db)
    first, other = preferred(cluster)
    agent = start_agent(tmp_path, cluster, db)
    try:
        with SteadyLoad(agent.socket_path) as load:
            wait_for(lambda: count(first, f"{db}.traces_local") > 300, timeout=30, what="rows on the preferred")
            # 1. SIGKILL the replica the agent inserts into.
            killed_at = time.time()
            first.kill()
            to_other = switch_to(agent, other, killed_at, 20) - killed_at
            # 2. It comes back (before its ZooKeeper session expired: read-only ~10 s more); the agent goes
            #    back to it once it takes inserts.
            time.sleep(1)
            first.restart()
            restarted_at = time.time()
            back = switch_to(agent, first, restarted_at, 40) - restarted_at
            time.sleep(1)
            # 3. SIGSTOP the replica in use now (the preferred one again): its insert stalls and is given up.
            (_, active, _) = switches(agent)[-1]
            frozen, spare = (first, other) if active == first.url else (other, first)
            frozen_at = time.time()
            frozen.freeze()
            try:
                to_spare = switch_to(agent, spare, frozen_at, 30) - frozen_at
            finally:
                frozen.thaw()  # at once: frozen past the fixture's 5 s ZooKeeper session, it would expire
            frozen.wait_zookeeper_session()
            time.sleep(3)
            sent = load.stop()
        counts = assert_exactly_once(cluster, db, sent)
    finally:
        agent.cleanup()
    lines = shipper_lines(agent)
    stalls = [ln.message for ln in lines if "stopped answering" in ln.message]
    print(
        f"\nfailover after SIGKILL of {first.name}: {to_other:.3f} s; back on {first.name} {back:.1f} s after its "
        f"restart; failover after SIGSTOP of {frozen.name}: {to_spare:.3f} s; {sent} spans sent, counts {counts}"
    )
    print(digest(agent, killed_at))
    assert to_other < FAILOVER_KILL_BOUND_S, to_other
    assert to_spare < FAILOVER_STALL_BOUND_S, to_spare
    assert stalls, "no insert was given up as stalled"


def test_zookeeper_outage_one_line_nothing_lost_and_everything_arrives_once_after(
    clickhouse_cluster: ClickHouseCluster, cluster_db: str, tmp_path: Path
) -> None:
    cluster, db = clickhouse_cluster, cluster_db
    create_cluster_tables(cluster, db)
    zk = cluster.zookeeper
    agent = start_agent(tmp_path, cluster, db)
    try:
        with SteadyLoad(agent.socket_path) as load:
            wait_for(lambda: count(cluster.replicas[0], f"{db}.traces") > 300, timeout=30, what="the first rows")
            stopped_at = time.time()
            zk.stop()
            time.sleep(max(0.0, ZOOKEEPER_DOWN_S - (time.time() - stopped_at)))
            stored_during = count(cluster.replicas[0], f"{db}.traces")
            zk.start()
            back_at = time.time()
            wait_for(lambda: count(cluster.replicas[0], f"{db}.traces") > stored_during, timeout=40, what="rows")
            recovered_at = time.time()
            time.sleep(1)
            sent = load.stop()
        counts = assert_exactly_once(cluster, db, sent)
    finally:
        agent.cleanup()
    outage = [ln for ln in shipper_lines(agent, stopped_at) if ln.time < back_at]
    problems = [ln for ln in outage if ln.level in ("WARNING", "ERROR")]
    # 242 (TABLE_IS_READ_ONLY) once the server has dropped its session, 999 (a keeper exception) before:
    # which one an insert meets depends on when it comes; both are the one "no ZooKeeper session" line.
    about_keeper = [ln for ln in problems if "no ZooKeeper (Keeper) session" in ln.message]
    accepted = [ln.time for ln in shipper_lines(agent, back_at) if "accepts inserts again" in ln.message]
    print(
        f"\nZooKeeper down {back_at - stopped_at:.1f} s; inserts accepted again {accepted[0] - back_at:.1f} s after "
        f"it is back (rows seen after {recovered_at - back_at:.1f} s); {sent} spans sent, counts {counts}; "
        f"warnings during the outage:\n  " + "\n  ".join(f"{ln.level} {ln.message[:300]}" for ln in problems)
    )
    stats = final_stats(agent)
    print(
        digest(agent, stopped_at), "\n  shipper stats:", {k: v for k, v in stats.items() if "probe" in k or "retr" in k}
    )
    assert len(about_keeper) == 1, [ln.message for ln in problems]
    assert re.search(r"\(code (242|999)", about_keeper[0].message), about_keeper[0].message
    assert len(problems) <= 2, [ln.message for ln in problems]
    # No batch every second while the tables are read-only: the probe reads the read-only flags, and only
    # the retries of the growing backoff (plus the one after the probe that answered) send it.
    assert stats["retries_transient"] <= 10, stats


def writable_since(replica: Replica, db: str) -> float | None:
    """If the replica answers and none of its replicated tables of ``db`` is read-only: when this check
    began (an upper bound of how long it has been so, seen from here), else None."""
    began = time.time()
    try:
        out = replica.query(
            f"SELECT count(), countIf(is_readonly) FROM system.replicas WHERE database = '{db}'", timeout=0.5
        )
    except Exception:  # down, or not answering yet
        return None
    tables, read_only = (int(x) for x in out.split())
    return began if tables > 0 and read_only == 0 else None


def test_after_every_replica_was_down_shipping_resumes_within_two_seconds_of_one_taking_inserts(
    clickhouse_cluster: ClickHouseCluster, cluster_db: str, tmp_path: Path
) -> None:
    """Both replicas SIGKILLed for ~12 s (the agent's backoff grows meanwhile), then started again: the probes
    find the first one that takes inserts within a second or so, not after the rest of a long backoff."""
    cluster, db = clickhouse_cluster, cluster_db
    create_cluster_tables(cluster, db)
    agent = start_agent(tmp_path, cluster, db)
    try:
        with SteadyLoad(agent.socket_path) as load:
            wait_for(lambda: count(cluster.replicas[0], f"{db}.traces") > 300, timeout=30, what="the first rows")
            down_at = time.time()
            for r in cluster.replicas:
                r.kill()
            time.sleep(12)
            for r in cluster.replicas:
                r.start()
            ready_at = float(
                wait_until(
                    lambda: min((t for r in cluster.replicas if (t := writable_since(r, db))), default=None),
                    60,
                    interval=0.05,
                    message="a replica taking inserts again",
                )
            )
            resumed_at = float(
                wait_until(
                    lambda: next(
                        (ln.time for ln in shipper_lines(agent, down_at) if "accepts inserts again" in ln.message),
                        None,
                    ),
                    30,
                    message=f"the shipper inserting again\n{agent.stderr_text[-3000:]}",
                )
            )
            time.sleep(1)
            sent = load.stop()
        counts = assert_exactly_once(cluster, db, sent)
    finally:
        agent.cleanup()
    resumed = resumed_at - ready_at
    print(
        f"\nevery replica down {ready_at - down_at:.1f} s; the shipper inserted again {resumed:+.2f} s after the "
        f"first replica took inserts; {sent} spans sent, counts {counts}\n{digest(agent, down_at)}"
    )
    assert resumed < 2.0, resumed
