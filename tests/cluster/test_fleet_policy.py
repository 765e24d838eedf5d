"""The fleet insert policy, measured at the server: bench/bench_fleet.py's :func:`run_policy`, bounded for CI.

8 real agents (supervisor + ingest + shipper each) ship 300 spans/s each into the 1-shard x 2-replica
cluster fixture (``--cluster``, every replica in ``--clickhouse-endpoint``), and the server's own counters
say what they did: inserts/s at the shard (system.events InsertQuery summed over its replicas), rows per
insert (InsertedRows / InsertQuery), active parts; after the run every span must be stored exactly once
(count() and uniqExact(span_id) through the Distributed table equal the spans the agents acknowledged).

* ``fixed`` (today's behaviour, batch_wait 1 s): about one insert per agent per second -- the contrast;
* ``fleet`` with ``--target-inserts-per-second 1.5``: 8 agents x 300 spans/s (2 400 rows/s) meet 1.5 inserts/s
  only with 1 600 rows per insert, each agent waiting ~5.3 s. The policy reads the shard every ~10 s (its
  first reading gives no rate yet) and moves the wait by at most x2 a reading (sqrt-damped), so it needs
  a few readings: over the last third of a 60 s run (t >= 40 s) the shard's inserts/s must be within
  0.5x-1.5x of the target and the rows per insert >= 1 000 (a policy that reads the whole shard gets
  there by about the fourth reading; one that reads only the replica it inserts into sees half the rate
  and settles near 2x the target with ~800 rows per insert).

Every test prints the benchmark's time series and summary (run with ``-s``), and a failure message holds
them too, so a failing run says what it measured.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from bench_fleet import FleetOptions, PolicyResult, drop_database, run_policy, summary_rows

pytestmark = pytest.mark.cluster

AGENTS = 8
RATE = 300
TARGET = 1.5
FLEET_SECONDS = 60.0


def _run(cluster, policy: str, seconds: float, **kw) -> tuple[PolicyResult, str]:
    lines: list[str] = []

    def say(line: str) -> None:
        print(line)
        lines.append(line)

    result = run_policy(cluster, policy, FleetOptions(agents=AGENTS, seconds=seconds, rate=RATE, **kw), say)
    drop_database(cluster, result.database)
    width = max(len(k) for k, _ in summary_rows(result))
    lines += [f"{k:{width}}  {v}" for k, v in summary_rows(result)]
    lines += [f"agent log: {line}" for line in result.agent_log_problems]
    report = "\n".join(lines)
    print("\n".join(lines[-len(summary_rows(result)) - len(result.agent_log_problems) :]))
    return result, report


def _check_delivery(r: PolicyResult, report: str) -> None:
    assert r.achieved_rate >= 0.97 * RATE, f"the load generator did not keep up:\n{report}"
    assert r.load["rejected"] == 0 and r.load["unanswered"] == 0, f"spans refused or unacknowledged:\n{report}"
    assert r.stored == r.distinct == r.sent, (
        f"not exactly once: {r.sent} acknowledged, {r.stored} stored, {r.distinct} distinct span ids:\n{report}"
    )
    assert set(r.agent_exit_codes) == {0}, f"agents' exit codes {r.agent_exit_codes}:\n{report}"


def test_fixed_policy_inserts_about_once_per_agent_per_second(clickhouse_cluster):
    r, report = _run(clickhouse_cluster, "fixed", seconds=16)
    _check_delivery(r, report)
    settled = r.windows["settled"]
    inserts_per_s, rows_per_insert = settled.total_inserts_per_s, settled.rows_per_insert
    print(f"fixed: {inserts_per_s:.2f} inserts/s from {AGENTS} agents, {rows_per_insert:.0f} rows per insert")
    assert 0.7 * AGENTS <= inserts_per_s <= 1.3 * AGENTS, (
        f"fixed: {inserts_per_s:.2f} inserts/s from {AGENTS} agents, expected ~{AGENTS}:\n{report}"
    )
    assert rows_per_insert <= 1.5 * RATE, f"fixed: {rows_per_insert:.0f} rows per insert:\n{report}"


def test_fleet_policy_meets_the_target_with_large_inserts(clickhouse_cluster):
    r, report = _run(
        clickhouse_cluster, "fleet", seconds=FLEET_SECONDS, target_inserts_per_second=TARGET, settle_fraction=1 / 3
    )
    _check_delivery(r, report)
    settled = r.windows["settled"]
    seen = r.reported.shard_rates
    measured = (
        f"fleet, target {TARGET} inserts/s: {settled.total_inserts_per_s:.2f} inserts/s and "
        f"{settled.rows_per_insert:.0f} rows per insert at the shard over {settled.label}; the agents' own last "
        f"reading of the shard: {statistics.median(seen) if seen else float('nan'):.2f} inserts/s (median), "
        f"their batch_wait {r.reported.text()}"
    )
    print(measured)
    rows_per_insert, inserts_per_s, refused = settled.rows_per_insert, settled.total_inserts_per_s, settled.rejected
    assert rows_per_insert >= 1000, f"{measured}; expected >= 1000 rows per insert:\n{report}"
    assert 0.5 * TARGET <= inserts_per_s <= 1.5 * TARGET, f"{measured}; expected near the target:\n{report}"
    assert refused == 0, f"{measured}; the server refused {refused} inserts (252):\n{report}"
