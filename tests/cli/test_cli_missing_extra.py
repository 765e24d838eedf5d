"""`pip install automagik-telemetry` without the `agent` extra: the commands that need it say what to
install in one line and exit 69; the ones that do not (client, `wal`, `config check`, `status`) still work."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from agent_process import agent_env, run_cli

BLOCKED = ("orjson", "requests", "zstandard", "prometheus_client")
INSTALL = "install 'automagik-telemetry[agent]'"


@pytest.fixture
def without_agent_extra(tmp_path: Path) -> dict[str, str]:
    """An environment in which none of the agent extra's packages can be imported."""
    site = tmp_path / "no-agent-extra"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        f"import sys\nfor name in {BLOCKED!r}:\n    sys.modules[name] = None  # `import name` fails\n"
    )
    env = agent_env()
    env["PYTHONPATH"] = f"{site}{os.pathsep}{env['PYTHONPATH']}"
    return env


@pytest.mark.parametrize(
    "command",
    [
        ["shipper", "--sink", "clickhouse"],
        ["schema", "apply", "--clickhouse-endpoint", "http://127.0.0.1:9"],
        ["doctor"],
        ["send-test"],
        ["dead-letter", "list"],
        ["query", "SELECT 1"],
    ],
)
def test_a_command_that_needs_the_agent_extra_says_what_to_install_and_exits_69(
    command: list[str], without_agent_extra: dict[str, str], tmp_path: Path
) -> None:
    flags = ["--config", "/dev/null"] if command[0] != "schema" else []
    flags += ["--wal-dir", str(tmp_path / "wal")] if command[0] in ("shipper", "doctor", "dead-letter") else []
    result = run_cli(*command, *flags, env=without_agent_extra, timeout=30)
    assert result.returncode == 69, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last == (
        f"automagik-telemetry: `automagik-telemetry {command[0]}` needs orjson, requests, zstandard, "
        f"prometheus-client (not installed): {INSTALL}"
    )


def test_the_agent_without_the_extra_names_what_is_missing(without_agent_extra: dict[str, str], tmp_path: Path) -> None:
    common = [
        "--config",
        "/dev/null",
        "--wal-dir",
        str(tmp_path / "wal"),
        "--socket",
        str(tmp_path / "a.sock"),
        "--wal-min-free",
        "0",
    ]
    shipping = run_cli("agent", *common, "--sink", "clickhouse", env=without_agent_extra, timeout=30)
    assert (shipping.returncode, shipping.stderr) == (
        69,
        f"automagik-telemetry: the shipper needs orjson, requests, zstandard: {INSTALL}, or run ingest only "
        "with --sink none\n",
    )
    receiving = run_cli("agent", *common, "--sink", "none", env=without_agent_extra, timeout=30)
    assert (receiving.returncode, receiving.stderr) == (
        69,
        f'automagik-telemetry: the OTLP receiver needs orjson: {INSTALL}, or turn it off with --otlp-listen ""\n',
    )
    ingest_only = run_cli("agent", *common, "--sink", "none", "--otlp-listen", "", env=without_agent_extra, timeout=30)
    assert (ingest_only.returncode, ingest_only.stderr) == (
        69,
        "automagik-telemetry: metrics.listen is '127.0.0.1:9479' but prometheus-client is not installed: "
        f'{INSTALL}, or set metrics.listen = ""\n',
    )


def test_commands_that_do_not_need_the_extra_still_work_without_it(
    without_agent_extra: dict[str, str], tmp_path: Path
) -> None:
    wal = tmp_path / "wal"
    wal.mkdir()
    checked = run_cli("config", "check", "--config", "/dev/null", "--no-runtime", env=without_agent_extra)
    assert checked.returncode == 0, checked.stderr
    verified = run_cli("wal", "verify", str(wal), env=without_agent_extra)
    assert verified.returncode == 0, verified.stderr
    status = run_cli(
        "status", "--config", "/dev/null", "--socket", str(tmp_path / "none.sock"), env=without_agent_extra
    )
    assert status.returncode == 3 and "the agent is not running" in status.stderr
