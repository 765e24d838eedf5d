"""The original automagik-telemetry 0.1.4 SDK, unmodified (the wheel from PyPI, scripts/bootstrap.sh,
installed in a scratch venv), pointed at the agent's OTLP receiver with ``AUTOMAGIK_TELEMETRY_ENDPOINT``:
its events, metrics and logs land in the three tables of the 18.16 server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from agent_process import wait_until

from .conftest import OtlpAgent

pytestmark = pytest.mark.clickhouse

WHEELS = Path(__file__).parent / ".v014"

APP = """
from automagik_telemetry import AutomagikTelemetry, LogSeverity, MetricType, TelemetryConfig
import automagik_telemetry, sys
assert automagik_telemetry.__file__.startswith(sys.argv[1]), automagik_telemetry.__file__  # the venv's 0.1.4
assert automagik_telemetry.__version__ == "0.1.4", automagik_telemetry.__version__
client = AutomagikTelemetry(TelemetryConfig(project_name="legacy-app", version="9.9.9"))
for i in range(5):
    client.track_event("legacy.event", {"i": i, "user": "someone"})
client.track_metric("legacy.metric", 42.5, MetricType.GAUGE, {"k": "v"})
client.track_log("legacy log line", LogSeverity.WARN, {"k": "v"})
client.flush()
"""


@pytest.fixture
def v014_python(tmp_path: Path) -> Path:
    """A scratch venv with the unmodified 0.1.4 wheel installed (offline, from the file bootstrap fetched)."""
    wheels = sorted(WHEELS.glob("automagik_telemetry-0.1.4-*.whl"))
    assert wheels, f"the 0.1.4 wheel is missing in {WHEELS}: `make test` downloads it (scripts/bootstrap.sh)"
    venv = tmp_path / "venv014"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
    python = venv / "bin" / "python"
    install = [str(python), "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--disable-pip-version-check"]
    # Its metadata asks for Python >= 3.12; its code runs on 3.11, which this proves.
    subprocess.run([*install, "--ignore-requires-python", str(wheels[0])], check=True, capture_output=True, timeout=120)
    return python


def test_the_unmodified_014_sdk_over_otlp_json_lands_in_all_three_tables(
    v014_python: Path, server_otlp_agent: OtlpAgent, clickhouse: Any, clickhouse_db: str, tmp_path: Path
) -> None:
    agent = server_otlp_agent
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AUTOMAGIK_TELEMETRY_") and k not in ("CI", "PYTHONPATH", "VIRTUAL_ENV")
    }
    env.update(
        HOME=str(tmp_path),
        AUTOMAGIK_TELEMETRY_ENABLED="true",
        AUTOMAGIK_TELEMETRY_ENDPOINT=agent.otlp_url,
    )
    done = subprocess.run(
        [str(v014_python), "-c", APP, str(v014_python.parent.parent)],
        env=env,
        cwd=tmp_path,  # not the repository: its metadata would answer for 0.2's version
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr

    def counts() -> list[str]:
        tables = ("traces", "logs", "metrics")
        sql = "SELECT " + ", ".join(f"(SELECT count() FROM {{db}}.{t})" for t in tables)
        return clickhouse.query(sql.replace("{db}", clickhouse_db)).split()

    wait_until(lambda: counts() == ["5", "1", "1"], 30, message="0.1.4's 5 events, 1 log, 1 metric in ClickHouse")
    attr = "attribute_values[indexOf(attribute_keys, '{}')]"
    spans = clickhouse.query(
        f"SELECT span_name, length(trace_id), length(span_id), project_name, project_version, {attr.format('i')} "
        f"FROM {clickhouse_db}.traces ORDER BY toFloat64({attr.format('i')})"
    ).splitlines()
    assert [s.split("\t") for s in spans] == [
        ["legacy.event", "32", "16", "legacy-app", "9.9.9", f"{i}.0"]
        for i in range(5)  # 0.1.4 sends doubles
    ]
    log = clickhouse.query(f"SELECT body, severity_number, {attr.format('k')} FROM {clickhouse_db}.logs").split("\t")
    assert log == ["legacy log line", "13", "v\n"]
    metric = clickhouse.query(f"SELECT metric_name, metric_type, value_double FROM {clickhouse_db}.metrics").split()
    assert metric == ["legacy.metric", "GAUGE", "42.5"]
