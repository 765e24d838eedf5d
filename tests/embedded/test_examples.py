"""Every example in examples/ runs against a real agent, and the store holds exactly what it says it sent."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from agent_process import AgentProcess, agent_env

from .conftest import REPO, ask, wait_count

pytestmark = pytest.mark.chdb

EXAMPLES = {
    "plain_script.py": ["--files", "20", "--chunks", "5"],
    "web_app.py": ["--self-test", "40"],
    "multiprocess_worker.py": ["--workers", "3", "--jobs", "100"],
}


def test_each_example_delivers_exactly_what_it_reports(
    embedded_agent: Callable[..., AgentProcess], store_dir: Path
) -> None:
    agent = embedded_agent(store_dir)
    total = 0
    for index, (script, args) in enumerate(EXAMPLES.items()):
        environment = f"example-{index}"
        env = agent_env(
            {"AUTOMAGIK_TELEMETRY_SOCKET": agent.socket_path, "AUTOMAGIK_TELEMETRY_ENVIRONMENT": environment}
        )
        run = subprocess.run(
            [sys.executable, str(REPO / "examples" / script), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        sent = json.loads(run.stdout.strip().splitlines()[-1])
        assert sent.get("durable", sent.get("all_durable")) is True, sent
        assert sent["errors"] > 0  # every example records failures too
        total += sent["spans"]
        wait_count(store_dir, sent["spans"], where=f"WHERE environment = '{environment}'")
        out = ask(
            store_dir,
            "SELECT span_name, count(), countIf(status_code = 'ERROR') FROM telemetry.traces "
            f"WHERE environment = '{environment}' GROUP BY span_name ORDER BY span_name",
        )
        assert out is not None
        rows = [line.split("\t") for line in out.splitlines()]
        assert {name: int(count) for name, count, _ in rows} == sent["by_name"], script
        assert sum(int(errors) for *_, errors in rows) == sent["errors"], script
    assert ask(store_dir, "SELECT count(), uniqExact(span_id) FROM telemetry.traces") == f"{total}\t{total}\n"
