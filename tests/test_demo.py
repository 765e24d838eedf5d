"""`make demo` (scripts/demo.py) runs end to end and its summary matches what the example sent.

The demo prints a table (span name, spans, p95 ms, errors) read back with a SQL query from where the
spans went, then one totals line; these tests parse both and compare them with the example's own
count: 4 workers x 500 jobs (a job.process and a db.query span each) + one worker.finished each.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
WORKERS, JOBS = 4, 500
EXPECTED_BY_NAME = {"db.query": WORKERS * JOBS, "job.process": WORKERS * JOBS, "worker.finished": WORKERS}
ROW = re.compile(r"^(\S+)\s+(\d+)\s+(\d+\.\d+)\s+(\d+)$", re.MULTILINE)
TOTALS = re.compile(
    r"spans sent (\d+), stored (\d+) \((\d+) distinct span ids\), errors (\d+) \(sent (\d+)\); "
    r"agent exited (-?\d+)"
)


def _run_demo(extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOMAGIK_TELEMETRY_")}
    env.update(extra_env)
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py")], capture_output=True, text=True, timeout=300, env=env
    )


def _check_summary(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {name: (int(count), float(p95), int(errors)) for name, count, p95, errors in ROW.findall(result.stdout)}
    assert {name: row[0] for name, row in rows.items()} == EXPECTED_BY_NAME, result.stdout
    totals = TOTALS.search(result.stdout)
    assert totals, result.stdout
    sent, stored, distinct, errors, errors_sent, agent_code = map(int, totals.groups())
    assert sent == stored == distinct == sum(EXPECTED_BY_NAME.values())
    assert errors == errors_sent == sum(row[2] for row in rows.values()) > 0  # only job.process fails
    assert rows["job.process"][2] == errors and rows["db.query"][2] == 0
    assert rows["job.process"][1] > 0  # a p95 was computed from real durations
    assert agent_code == 0
    assert "demo: OK" in result.stdout


@pytest.mark.chdb
def test_demo_embedded_summary_matches_what_the_example_sent() -> None:
    """No ClickHouse server: the demo ships into the embedded store and queries it through the agent."""
    pytest.importorskip("chdb", reason="the demo's default sink needs chdb-core (the embedded extra)")
    result = _run_demo({})
    assert "shipping to the embedded store" in result.stdout
    _check_summary(result)


@pytest.mark.clickhouse
def test_demo_against_a_server_when_the_endpoint_is_set(clickhouse: Any, clickhouse_db: str) -> None:
    """AUTOMAGIK_TELEMETRY_CLICKHOUSE_ENDPOINT set: the same demo against that server (schema apply first)."""
    result = _run_demo(
        {
            "AUTOMAGIK_TELEMETRY_CLICKHOUSE_ENDPOINT": clickhouse.url,
            "AUTOMAGIK_TELEMETRY_CLICKHOUSE_DATABASE": clickhouse_db,
        }
    )
    assert f"shipping to ClickHouse at {clickhouse.url}" in result.stdout, result.stdout + result.stderr
    _check_summary(result)
    assert int(clickhouse.query(f"SELECT count() FROM {clickhouse_db}.traces FORMAT TabSeparated").strip()) == sum(
        EXPECTED_BY_NAME.values()
    )
