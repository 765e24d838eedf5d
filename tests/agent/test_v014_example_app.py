"""examples/legacy_014_app.py, written in 0.1.4's style, runs unchanged against a real agent, and its rows
appear in traces, metrics and logs: on the 18.16 server (legacy tables) and in chDB (modern tables)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_process import AgentProcess, agent_env, wait_until
from embedded.conftest import ask
from shipper.shipper_helpers import apply_schema

REPO = Path(__file__).resolve().parents[2]
ORDERS = 10


@pytest.fixture(
    params=[pytest.param("server-18.16", marks=pytest.mark.clickhouse), pytest.param("chdb", marks=pytest.mark.chdb)]
)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[AgentProcess, Callable[[str], str]]]:
    common = {"batch_wait": "100ms"}
    if request.param == "chdb":
        store = Path(tempfile.mkdtemp(prefix="at-v014-", dir="/tmp"))
        with AgentProcess(tmp_path / "agent", sink="embedded", embedded=str(store), **common) as agent:
            yield agent, lambda sql: ask(store, sql.replace("{db}", "telemetry")) or ""
        shutil.rmtree(store, ignore_errors=True)
        return
    clickhouse: Any = request.getfixturevalue("clickhouse")
    database: str = request.getfixturevalue("clickhouse_db")
    apply_schema(clickhouse, database)
    with AgentProcess(
        tmp_path / "agent", sink="clickhouse", clickhouse_endpoint=clickhouse.url, database=database, **common
    ) as agent:
        yield agent, lambda sql: clickhouse.query(sql.replace("{db}", database))


def test_the_014_style_app_runs_unchanged_and_fills_all_three_tables(
    target: tuple[AgentProcess, Callable[[str], str]],
) -> None:
    agent, query = target
    run = subprocess.run(
        [sys.executable, str(REPO / "examples" / "legacy_014_app.py"), "--orders", str(ORDERS)],
        env=agent_env({"AUTOMAGIK_TELEMETRY_SOCKET": agent.socket_path}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    sent = json.loads(run.stdout.strip().splitlines()[-1])
    assert sent["delivered"] is True, sent

    def counts() -> list[str]:
        return query(
            "SELECT (SELECT count() FROM {db}.traces), (SELECT count() FROM {db}.logs), "
            "(SELECT count() FROM {db}.metrics)"
        ).split()

    expected = [str(sent["events"] + sent["errors"]), str(sent["logs"]), str(sent["metric_points"])]
    wait_until(lambda: counts() == expected, 30, message=f"{expected} rows in traces, logs, metrics")
    spans = query(
        "SELECT span_name, status_code, count() FROM {db}.traces WHERE project_name = 'legacy-shop' "
        "AND project_version = '1.4.0' GROUP BY span_name, status_code ORDER BY span_name"
    ).split()
    assert spans == ["automagik.error", "ERROR", str(sent["errors"]), "automagik.feature.used", "UNSET", str(ORDERS)]
    metrics = query(
        "SELECT metric_name, metric_type, count(), sum(value_double) FROM {db}.metrics "
        "GROUP BY metric_name, metric_type ORDER BY metric_name"
    ).split()
    assert metrics == ["order.value", "GAUGE", str(ORDERS), str(sum(10 + i for i in range(ORDERS))),
                       "orders.placed", "SUM", str(ORDERS), str(ORDERS)]  # fmt: skip
    logs = query("SELECT severity_text, count() FROM {db}.logs GROUP BY severity_text").split()
    assert logs == ["INFO", str(ORDERS)]
