"""`automagik-telemetry agent` (a supervisor) runs ingest and the shipper as two child processes, end to end into
ClickHouse. The supervisor's own properties (restarts, signals, systemd) are in tests/supervisor/."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from agent_process import AgentProcess

from automagik_telemetry import AutomagikTelemetry, TelemetryConfig

from .shipper_helpers import apply_schema, count, wait_for

pytestmark = pytest.mark.clickhouse


def _agent(tmp_path: Path, clickhouse: Any, database: str) -> AgentProcess:
    return AgentProcess(
        tmp_path,
        sink="clickhouse",
        clickhouse_endpoint=clickhouse.url,
        database=database,
        batch_wait="200ms",
        retry_base="100ms",
        retry_max="1s",
    ).start()


def _emit(client: AutomagikTelemetry, start: int, n: int) -> None:
    for i in range(start, start + n):
        client.track_event("two.processes", {"i": i})


def test_agent_ships_through_its_shipper_child_and_restarts_it_after_kill9(
    clickhouse: Any, clickhouse_db: str, tmp_path: Path
) -> None:
    apply_schema(clickhouse, clickhouse_db)
    agent = _agent(tmp_path, clickhouse, clickhouse_db)
    client = AutomagikTelemetry(
        config=TelemetryConfig(project_name="two-proc", version="1", socket_path=agent.socket_path)
    )
    try:
        _emit(client, 0, 500)
        assert client.flush(10)
        wait_for(lambda: count(clickhouse, clickhouse_db) == 500, 30, "500 rows shipped by the agent's shipper")
        shipper_pid = agent.child_pid("shipper")
        os.kill(shipper_pid, signal.SIGKILL)
        _emit(client, 500, 500)  # ingest keeps accepting while the shipper is down
        assert client.flush(10)
        wait_for(lambda: agent.children().get("shipper", shipper_pid) != shipper_pid, 15, "a new shipper child")
        wait_for(lambda: count(clickhouse, clickhouse_db) >= 1000, 30, "every span after the restart")
        distinct = int(clickhouse.query(f"SELECT uniqExact(span_id) FROM {clickhouse_db}.traces").strip())
        assert distinct == 1000  # nothing lost; 18.16 has no dedup token, so a kill mid-insert may duplicate
        client.shutdown()
        children = agent.children()
        started = time.monotonic()
        assert agent.terminate() == 0
        assert time.monotonic() - started < 15
        assert not [p for p in children.values() if os.path.exists(f"/proc/{p}")]
    finally:
        client.shutdown()
        agent.cleanup(graceful=False)


def test_agent_with_sink_none_runs_no_shipper(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path, sink="none").start()
    try:
        time.sleep(0.3)
        assert list(agent.children()) == ["ingest"]
        assert agent.terminate() == 0
    finally:
        agent.cleanup()


def test_kill9_of_the_agent_stops_its_shipper_and_a_restart_ships_on(
    clickhouse: Any, clickhouse_db: str, tmp_path: Path
) -> None:
    """The shipper child must not outlive a killed agent: two shippers would share one cursor."""
    apply_schema(clickhouse, clickhouse_db)
    agent = _agent(tmp_path, clickhouse, clickhouse_db)
    client = AutomagikTelemetry(
        config=TelemetryConfig(project_name="two-proc", version="1", socket_path=agent.socket_path)
    )
    try:
        shipper_pid = agent.child_pid("shipper")
        agent.kill_supervisor()
        wait_for(lambda: not os.path.exists(f"/proc/{shipper_pid}"), 15, "the orphaned shipper to exit")
        agent.start()
        _emit(client, 0, 300)
        assert client.flush(10)
        wait_for(lambda: count(clickhouse, clickhouse_db) == 300, 30, "spans shipped after the restart")
        assert sorted(agent.children()) == ["ingest", "shipper"]
    finally:
        client.shutdown()
        agent.cleanup(graceful=False)
