"""SIGHUP without a shipper (what is applied, what needs a restart, what is refused), the control socket,
and configuration problems the supervisor finds before any child starts (exit 2, one line)."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
from collections.abc import Callable
from pathlib import Path

from agent_process import AgentProcess, RawClient, record_line, run_cli, wait_until

from automagik_telemetry_agent.supervisor.control import ControlError, request

from .conftest import NotifyListener


def test_sighup_applies_live_settings_reports_the_others_and_survives_a_broken_file(
    supervised: Callable[..., AgentProcess], notify_socket: NotifyListener
) -> None:
    agent = supervised(log_level=None, env=notify_socket.env())  # log.level from the file, not a flag
    Path(agent.config_path).write_text('[log]\nlevel = "info"\n[wal]\nfsync_interval_ms = 50\n')
    agent.start()
    children = agent.children()
    Path(agent.config_path).write_text('[log]\nlevel = "debug"\n[wal]\nfsync_interval_ms = 20\n')
    agent.signal(signal.SIGHUP)
    wait_until(
        lambda: "configuration reloaded: log.level = 'debug'" in agent.stderr_text,
        10,
        message="the live change applied",
    )
    assert "wal.fsync_interval_ms changed: needs a restart (systemctl restart automagik-telemetry)" in agent.stderr_text
    Path(agent.config_path).write_text("[log\nlevel = 'x'\n")  # not TOML
    agent.signal(signal.SIGHUP)
    wait_until(
        lambda: "configuration reload failed, keeping the running configuration" in agent.stderr_text,
        10,
        message="the refused reload",
    )
    with RawClient(agent.socket_path) as client:
        client.send_records([record_line("still-serving")], seq=1)
        assert client.wait_ack(1)
    assert agent.children() == children  # nothing restarted
    reloads = [m for _, m in notify_socket.snapshot() if "RELOADING" in m or "READY" in m]
    assert [sorted(k for k in m if k in ("READY", "RELOADING")) for m in reloads] == [
        ["READY"],
        ["RELOADING"],
        ["READY"],
        ["RELOADING"],
        ["READY"],
    ]
    assert agent.terminate() == 0


def test_control_socket_answers_status_refuses_unknown_commands_and_is_private(
    supervised: Callable[..., AgentProcess],
) -> None:
    agent = supervised().start()
    path = os.path.join(os.path.dirname(agent.socket_path), "control.sock")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    answer = request(path, {"cmd": "status"})
    status = answer["status"]
    assert answer["ok"] and status["pid"] == agent.pid and status["state"] == "running"
    assert status["children"]["ingest"]["state"] == "running"
    assert status["children"]["ingest"]["pid"] == agent.children()["ingest"]
    assert status["children"]["ingest"]["restarts"] == 0
    assert status["config"] == {"socket.path": agent.socket_path, "wal.dir": agent.wal_dir, "sink": "none"}
    assert status["socket_activated"] is False
    assert request(path, {"cmd": "reboot"}) == {"ok": False, "error": "unknown command 'reboot' (known: status)"}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:  # garbage: an answer, not a crash
        raw.settimeout(5)
        raw.connect(path)
        raw.sendall(b"\x00\xff not json\n")
        assert json.loads(raw.recv(4096))["ok"] is False
    done = run_cli("status", "--json", "--config", agent.config_path, "--socket", agent.socket_path)
    assert done.returncode == 0 and json.loads(done.stdout)["pid"] == agent.pid
    assert agent.terminate() == 0
    assert not os.path.exists(path)
    try:
        request(path, {"cmd": "status"}, timeout=1)
        raise AssertionError("the control socket still answers after the agent stopped")
    except ControlError:
        pass


def test_a_metrics_port_in_use_is_a_config_error_before_any_child_starts(
    supervised: Callable[..., AgentProcess],
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        agent = supervised(metrics_listen=f"127.0.0.1:{port}").start(wait=False)
        assert agent.wait_exit(15) == 2
    lines = agent.stderr_text.splitlines()[1:]  # after AgentProcess's own "--- start" line
    assert [line for line in lines if "config error" in line] == [
        f"automagik-telemetry: config error: cannot serve metrics on 127.0.0.1:{port}: Address already in use: "
        'choose another --metrics-listen (metrics.listen), or "" to turn the endpoint off'
    ]
    assert "Traceback" not in agent.stderr_text and "ingest started" not in agent.stderr_text
    assert not os.path.exists(agent.socket_path)  # the socket it created is removed again
