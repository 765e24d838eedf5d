"""`doctor`, `send-test` and `status` against real agents and the real ClickHouse server.

Each test runs the real CLI as a subprocess. The doctor tests start an ingest-only agent (so the
"agent running" check passes) and point doctor at ClickHouse with one thing broken at a time; each
asserts the exact set of failed checks, so a FAIL cannot come from somewhere else.
"""

from __future__ import annotations

import http.server
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_process import AgentProcess, run_cli
from clickhouse_server import AGENT_PASSWORD, AGENT_USER, READONLY_PASSWORD, READONLY_USER, free_port
from shipper.shipper_helpers import apply_schema

from automagik_telemetry_agent.clickhouse.rows import Profile
from automagik_telemetry_agent.clickhouse.schema import render_migrations
from automagik_telemetry_agent.ops.status import render
from automagik_telemetry_agent.shipper.dead_letter import DeadLetter, DeadLetterEntry


def doctor(agent: AgentProcess, clickhouse: Any, db: str, *extra: str) -> tuple[int, dict[str, str], str]:
    """Run doctor for ClickHouse ``db``: (exit code, {check name: status}, stdout)."""
    result = run_cli(
        "doctor",
        *agent.cli_flags(
            "--sink",
            "clickhouse",
            "--clickhouse-endpoint",
            clickhouse.url,
            "--database",
            db,
            "--connect-timeout",
            "2s",
            *extra,
        ),
    )
    assert "Traceback" not in result.stderr, result.stderr
    checks = {}
    for line in result.stdout.splitlines():
        m = re.match(r"^(ok|warn|FAIL)\s+([^:]+): ", line)
        if m:
            checks[m.group(2)] = m.group(1)
    return result.returncode, checks, result.stdout


def failed(checks: dict[str, str]) -> set[str]:
    return {name for name, status in checks.items() if status == "FAIL"}


@pytest.fixture
def ingest_agent(tmp_path: Path) -> Iterator[AgentProcess]:
    with AgentProcess(tmp_path / "agent", metrics_listen="") as agent:
        yield agent


# ------------------------------------------------------------------------------------- doctor
@pytest.mark.clickhouse
def test_doctor_healthy_setup_exits_0(clickhouse: Any, clickhouse_db: str, ingest_agent: AgentProcess) -> None:
    apply_schema(clickhouse, clickhouse_db)
    code, checks, out = doctor(ingest_agent, clickhouse, clickhouse_db)
    assert code == 0, out
    assert failed(checks) == set()
    for name in (
        "config",
        "setup",
        "socket",
        "WAL",
        "clickhouse reachable",
        "clickhouse auth",
        "clickhouse version",
        "clickhouse table",
        "clickhouse schema",
        "clickhouse insert",
        "dead letters",
    ):
        assert checks.get(name) == "ok", out
    latest = render_migrations(Profile.LEGACY, "telemetry", "traces", 0)[-1].version
    assert "legacy row profile" in out and f"version {latest}" in out and out.rstrip().endswith(("passed", "warnings"))


@pytest.mark.clickhouse
def test_doctor_missing_table_fails_with_schema_apply(
    clickhouse: Any, clickhouse_db: str, ingest_agent: AgentProcess
) -> None:
    code, checks, out = doctor(ingest_agent, clickhouse, clickhouse_db)
    assert code == 1
    assert failed(checks) == {"clickhouse table"}
    assert "fix: run `automagik-telemetry schema apply`" in out and "does not exist" in out


@pytest.mark.clickhouse
def test_doctor_bad_password_fails_auth(
    clickhouse: Any, clickhouse_db: str, ingest_agent: AgentProcess, tmp_path: Path
) -> None:
    apply_schema(clickhouse, clickhouse_db)
    password_file = tmp_path / "password"
    password_file.write_text(AGENT_PASSWORD + "-wrong\n")
    code, checks, out = doctor(
        ingest_agent, clickhouse, clickhouse_db, "--username", AGENT_USER, "--password-file", str(password_file)
    )
    assert code == 1
    assert failed(checks) == {"clickhouse auth"} and checks["clickhouse reachable"] == "ok"
    assert f"rejected user '{AGENT_USER}''s password" in out
    password_file.write_text(AGENT_PASSWORD + "\n")  # the control: the right password passes
    code, checks, out = doctor(
        ingest_agent, clickhouse, clickhouse_db, "--username", AGENT_USER, "--password-file", str(password_file)
    )
    assert code == 0, out


@pytest.mark.clickhouse
def test_doctor_unreachable_endpoint_fails(clickhouse: Any, clickhouse_db: str, ingest_agent: AgentProcess) -> None:
    code, checks, out = doctor(
        ingest_agent, clickhouse, clickhouse_db, "--clickhouse-endpoint", f"http://127.0.0.1:{free_port()}"
    )
    assert code == 1
    assert failed(checks) == {"clickhouse reachable"}
    assert "clickhouse table" not in checks  # nothing past an unreachable server
    assert "fix: check that ClickHouse runs" in out


class _NotClickHouse(http.server.BaseHTTPRequestHandler):
    """Another HTTP service: it answers every POST with ``200 Ok.`` and no X-ClickHouse-* headers."""

    def do_POST(self) -> None:  # the http.server API names it
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "4")
        self.end_headers()
        self.wfile.write(b"Ok.\n")

    def log_message(self, *_: Any) -> None:
        pass


@pytest.mark.clickhouse
def test_doctor_says_when_the_endpoint_is_not_clickhouse(
    clickhouse: Any, clickhouse_db: str, ingest_agent: AgentProcess
) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotClickHouse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        code, checks, out = doctor(
            ingest_agent,
            clickhouse,
            clickhouse_db,
            "--clickhouse-endpoint",
            f"http://127.0.0.1:{server.server_address[1]}",
        )
    finally:
        server.shutdown()
        server.server_close()
    assert code == 1
    assert failed(checks) == {"clickhouse reachable"}, out
    assert "is not ClickHouse's HTTP interface" in out and "HTTP 200 without X-ClickHouse-* headers" in out
    assert "answers, but it is not ClickHouse: set --clickhouse-endpoint" in out


@pytest.mark.clickhouse
def test_doctor_readonly_user_fails_insert_privilege(
    clickhouse: Any, clickhouse_db: str, ingest_agent: AgentProcess
) -> None:
    apply_schema(clickhouse, clickhouse_db)
    code, checks, out = doctor(
        ingest_agent, clickhouse, clickhouse_db, "--username", READONLY_USER, "--password", READONLY_PASSWORD
    )
    assert code == 1
    assert failed(checks) == {"clickhouse insert"} and checks["clickhouse table"] == "ok"
    assert "read-only" in out


@pytest.mark.clickhouse
def test_doctor_agent_not_running_fails(clickhouse: Any, clickhouse_db: str, tmp_path: Path) -> None:
    apply_schema(clickhouse, clickhouse_db)
    agent = AgentProcess(tmp_path / "never-started")
    code, checks, out = doctor(agent, clickhouse, clickhouse_db)
    assert code == 1
    assert failed(checks) == {"agent"} and "fix: start it" in out


def test_doctor_reports_dead_letters_as_warning(ingest_agent: AgentProcess) -> None:
    DeadLetter(str(Path(ingest_agent.wal_dir).parent / "dead-letter")).write(
        [DeadLetterEntry("transform", "invalid JSON", 3, raw=b"{")]
    )
    result = run_cli("doctor", *ingest_agent.cli_flags("--sink", "none"))
    assert result.returncode == 0, result.stdout
    assert re.search(r"^warn\s+dead letters: 1 spans in .*dead-letter.jsonl$", result.stdout, re.M)
    assert "automagik-telemetry dead-letter list" in result.stdout


def test_doctor_bad_config_fails_in_one_line(tmp_path: Path) -> None:
    result = run_cli("doctor", "--config", "/dev/null", "--wal-dir", str(tmp_path), "--fsync", "sometimes")
    assert result.returncode == 1
    assert result.stdout.splitlines()[0].startswith("FAIL  config: --fsync: 'sometimes' is not one of")


# ------------------------------------------------------------------------------------- send-test
@pytest.mark.clickhouse
def test_send_test_span_reaches_clickhouse(clickhouse: Any, clickhouse_db: str, tmp_path: Path) -> None:
    apply_schema(clickhouse, clickhouse_db)
    ch = ["--clickhouse-endpoint", clickhouse.url, "--database", clickhouse_db]
    with AgentProcess(
        tmp_path / "agent",
        sink="clickhouse",
        metrics_listen="",
        batch_wait="100ms",
        clickhouse_endpoint=clickhouse.url,
        database=clickhouse_db,
    ) as agent:
        result = run_cli("send-test", *agent.cli_flags(*ch), "--timeout", "20")
    assert result.returncode == 0, result.stdout + result.stderr
    trace_id, span_id = re.search(r"^span ([0-9a-f]{32})/([0-9a-f]{16}) acknowledged", result.stdout, re.M).groups()
    seconds = float(re.search(r"visible in .* (\d+\.\d+)s after it was sent", result.stdout).group(1))
    assert 0 < seconds < 20
    row = clickhouse.query(
        f"SELECT service_name, span_name, environment FROM {clickhouse_db}.traces "
        f"WHERE trace_id = '{trace_id}' AND span_id = '{span_id}' FORMAT TabSeparated"
    )
    assert row.split("\t") == ["automagik-telemetry", "automagik-telemetry.send-test", "send-test\n"]


@pytest.mark.clickhouse
def test_send_test_says_when_the_span_never_reaches_the_table(
    clickhouse: Any, clickhouse_db: str, tmp_path: Path
) -> None:
    ch = ["--clickhouse-endpoint", clickhouse.url, "--database", clickhouse_db]  # no table: the shipper waits
    with AgentProcess(
        tmp_path / "agent",
        sink="clickhouse",
        metrics_listen="",
        batch_wait="100ms",
        clickhouse_endpoint=clickhouse.url,
        database=clickhouse_db,
    ) as agent:
        result = run_cli("send-test", *agent.cli_flags(*ch), "--timeout", "2")
    assert result.returncode == 1
    assert "acknowledged by the agent" in result.stdout
    (line,) = result.stderr.strip().splitlines()
    assert f"is not in {clickhouse_db}.traces" in line and "after 2s" in line
    assert "check `automagik-telemetry status` and the shipper's log" in line


def test_send_test_without_an_agent_says_not_reachable(tmp_path: Path) -> None:
    result = run_cli(
        "send-test",
        "--config",
        "/dev/null",
        "--socket",
        str(tmp_path / "none.sock"),
        "--wal-dir",
        str(tmp_path / "wal"),
        "--timeout",
        "2",
    )
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert f"the agent is not reachable on {tmp_path / 'none.sock'}" in line and "is it running?" in line


@pytest.mark.chdb
def test_send_test_span_reaches_the_embedded_store(tmp_path: Path) -> None:
    pytest.importorskip("chdb")
    store = str(tmp_path / "store")
    with AgentProcess(
        tmp_path / "agent", sink="embedded", embedded=store, metrics_listen="", batch_wait="100ms"
    ) as agent:
        result = run_cli("send-test", *agent.cli_flags("--sink", "embedded", "--embedded", store), "--timeout", "30")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"visible in the embedded store in {store}" in result.stdout


# ------------------------------------------------------------------------------------- status
def test_status_without_an_agent_exits_3(tmp_path: Path) -> None:
    result = run_cli("status", "--config", "/dev/null", "--socket", str(tmp_path / "agent.sock"))
    assert result.returncode == 3
    (line,) = result.stderr.strip().splitlines()
    assert "the agent is not running" in line and str(tmp_path / "control.sock") in line


def test_status_of_a_running_agent(tmp_path: Path) -> None:
    with AgentProcess(tmp_path / "agent", metrics_listen="") as agent:
        result = run_cli("status", *agent.cli_flags(), "--json")
        assert result.returncode == 0, result.stderr
        status = json.loads(result.stdout)
        assert status["pid"] == agent.pid and status["state"] in ("running", "starting")
        assert status["children"]["ingest"]["state"] == "running"
        human = run_cli("status", *agent.cli_flags())
        assert human.returncode == 0, human.stderr
        assert re.search(rf"^agent:\s+\w+, pid {agent.pid}, up ", human.stdout, re.M)
        assert re.search(r"^ingest:\s+running, pid \d+, 0 restarts", human.stdout, re.M)


def test_status_render_lines_line_up() -> None:
    status = {
        "pid": 10,
        "uptime_s": 3725.0,
        "state": "running",
        "children": {
            "ingest": {"state": "running", "pid": 11, "restarts": 0, "last_report_age_s": 0.4},
            "shipper": {"state": "backoff", "pid": None, "restarts": 3, "last_report_age_s": None},
        },
        "metrics": {
            "spans_received": 1200,
            "records_received": 40,
            "rejected_messages": 0,
            "wal_bytes": 3 * 1024**2,
            "wal_unshipped_bytes": 1024**2,
            "wal_oldest_unshipped_age_s": 75,
            "last_ship_time": 1000.0,
            "rows_shipped": 900,
            "insert_failures": 2,
            "wal_dropped_spans": 0,
            "client_dropped_spans": 5,
            "dead_lettered_rows": 1,
            "last_error": "table telemetry.traces does not exist",
            "metrics_port": None,
        },
        "config": {"socket.path": "/run/a.sock", "wal.dir": "/var/lib/wal", "sink": "clickhouse"},
    }
    lines = render(status, now=1090.0)
    assert lines[0] == "agent:         running, pid 10, up 1h 2m"
    assert "shipper:       backoff, 3 restarts" in lines
    assert "backlog:       1.0 MiB unshipped of 3.0 MiB WAL, oldest 1m 15s" in lines
    assert "last ship:     1m 30s ago, 900 rows shipped, 2 failed inserts" in lines
    assert "last error:    table telemetry.traces does not exist" in lines
    assert len({line.index(line.split(":", 1)[1].strip()) for line in lines}) == 1  # one value column
