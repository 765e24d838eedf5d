"""The client is stdlib-only: applications must never inherit the agent's dependencies."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import sys
sys.path.insert(0, {client!r})
import automagik_telemetry
from automagik_telemetry import AutomagikTelemetry, TelemetryConfig
client = AutomagikTelemetry(config=TelemetryConfig(project_name="p", version="1", socket_path="/nonexistent/s"))
with client.span("x"):
    pass
client.track_event("e", {{"k": 1}})
assert client.flush(timeout=0.2) is False   # no agent: bounded, honest, no exception
client.shutdown()
third_party = sorted(m for m in sys.modules if m.split(".")[0] not in sys.stdlib_module_names
                     and m.split(".")[0] not in ("automagik_telemetry", "__main__"))
print(third_party)
"""


def test_client_imports_and_runs_with_no_site_packages_at_all() -> None:
    # -I: isolated (no PYTHONPATH, no user site); -S: no site-packages. Only the stdlib and client/.
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", PROBE.format(client=str(REPO / "client"))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"non-stdlib modules imported: {result.stdout}"


def test_base_install_declares_no_dependencies() -> None:
    with open(REPO / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    assert project["dependencies"] == []
    assert "orjson" in " ".join(project["optional-dependencies"]["agent"])
