"""Fixtures of the client tests: the client package on sys.path, socket paths, clients, fake agents."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest

CLIENT_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "client"))
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
for directory in (CLIENT_DIR, TESTS_DIR):
    if directory not in sys.path:
        sys.path.insert(0, directory)

from automagik_telemetry import AutomagikTelemetry, TelemetryConfig  # noqa: E402

ENV_VARS = (
    "AUTOMAGIK_TELEMETRY_ENABLED",
    "AUTOMAGIK_TELEMETRY_SOCKET",
    "AUTOMAGIK_TELEMETRY_ENVIRONMENT",
    "AUTOMAGIK_TELEMETRY_OPT_IN_REQUIRED",
    "AUTOMAGIK_TELEMETRY_PRIVACY",
    "AUTOMAGIK_TELEMETRY_VERBOSE",
    "DO_NOT_TRACK",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No telemetry variable set, and a fresh home directory (no opt-out file, no stored user id)."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))


@pytest.fixture
def sock_path() -> Iterator[str]:
    """A socket path in a fresh short temp dir (Unix socket paths must stay under 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="at-", dir="/tmp") as directory:
        yield os.path.join(directory, "agent.sock")


@pytest.fixture
def make_client(sock_path: str) -> Iterator[Callable[..., AutomagikTelemetry]]:
    """``make_client(**config)``: a client on ``sock_path`` (fast flush_interval); shut down afterwards."""
    clients: list[AutomagikTelemetry] = []

    def make(**overrides: Any) -> AutomagikTelemetry:
        settings: dict[str, Any] = {
            "project_name": "test-app",
            "version": "1.2.3",
            "socket_path": sock_path,
            "flush_interval": 0.05,
            "exit_flush_timeout": 0.2,
        }
        settings.update(overrides)
        client = AutomagikTelemetry(config=TelemetryConfig(**settings))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.shutdown(0.1)


@pytest.fixture
def child_env() -> dict[str, str]:
    """The environment for a child Python that imports the client and the fake agent."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [CLIENT_DIR, TESTS_DIR, env.get("PYTHONPATH")]))
    return env


@pytest.fixture
def agent_process(sock_path: str, child_env: dict[str, str]) -> Iterator[Callable[[str], subprocess.Popen[str]]]:
    """``agent_process(mode)``: a fake agent in its own process (so it can be SIGSTOPped)."""
    processes: list[subprocess.Popen[str]] = []

    def start(mode: str) -> subprocess.Popen[str]:
        command = [sys.executable, os.path.join(TESTS_DIR, "fake_agent.py"), sock_path, mode]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=child_env)
        processes.append(process)
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        return process

    yield start
    for process in processes:
        process.kill()  # SIGKILL also ends a SIGSTOPped process
        process.wait(10)
