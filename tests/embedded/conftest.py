"""Fixtures and helpers for the embedded (chDB) sink tests.

* ``embedded_dir``: a short, fresh directory for a store opened *in this process*. chDB binds a
  process to one data path at a time, and ``chdb_session_factory`` (tests/conftest.py) keeps its last
  session open; taking one from it and closing it frees chDB for this store.
* ``store_dir``: a short, fresh directory for a store held by an agent subprocess (short, because
  ``<dir>/query.sock`` must fit in a Unix socket path).
* ``embedded_agent``: ``make(store_dir, **settings)`` starts a real agent with ``--embedded`` (via
  :class:`AgentProcess`); stopped at teardown.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_process import AgentProcess, wait_until

from automagik_telemetry_agent.clickhouse.query import QueryError, _ask
from automagik_telemetry_agent.clickhouse.query_server import socket_path

REPO = Path(__file__).resolve().parents[2]
BASE_NS = 1_700_000_000_000_000_000


def span_line(i: int, name: str | None = None, error: bool = False) -> bytes:
    """A valid OTLP span line numbered ``i``; its span id is :func:`span_id` (unique per ``i``)."""
    return json.dumps(
        {
            "traceId": f"{i + 1:032x}",
            "spanId": span_id(i),
            "name": name or f"op-{i % 5}",
            "kind": 1,
            "startTimeUnixNano": str(BASE_NS + i * 1000),
            "endTimeUnixNano": str(BASE_NS + i * 1000 + 500),
            "attributes": [{"key": "i", "value": {"intValue": str(i)}}],
            "status": {"code": 2 if error else 1},
        },
        separators=(",", ":"),
    ).encode()


def span_id(i: int) -> str:
    return f"{i + 1:016x}"


def ask(directory: str | Path, sql: str, fmt: str = "TabSeparated") -> str | None:
    """The answer of the agent holding the store in ``directory``; None when nobody listens.

    Never opens the store in this process (unlike ``run_query``), so a test can poll while the
    shipper restarts.
    """
    try:
        out = _ask(socket_path(str(directory)), sql, fmt, timeout=30)
    except (QueryError, OSError):  # e.g. the shipper was killed while answering
        return None
    return None if out is None else out.decode()


def children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc/<pid>/task/*/children), depth first."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids = [int(x) for x in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
        for kid in kids:
            out.append(kid)
            out += children(kid)
    return out


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [part.decode(errors="replace") for part in f.read().split(b"\0") if part]
    except (FileNotFoundError, ProcessLookupError):
        return []


def shipper_pid(agent_pid: int) -> int | None:
    """The agent's shipper child (whatever the process tree looks like), or None."""
    for pid in children(agent_pid):
        if "shipper" in cmdline(pid):
            return pid
    return None


def wait_count(directory: str | Path, expected: int, timeout: float = 30.0, where: str = "") -> int:
    """Poll the agent until ``telemetry.traces`` holds ``expected`` rows (``where`` filters)."""

    def count() -> int | None:
        out = ask(directory, f"SELECT count() FROM telemetry.traces {where}")
        return int(out) if out is not None and int(out) == expected else None

    return wait_until(count, timeout, interval=0.1, message=f"{expected} rows in {directory}")


@pytest.fixture
def store_dir() -> Iterator[Path]:
    """A path for an embedded store (not created), in a scratch directory removed after the test."""
    pytest.importorskip("chdb", reason="the embedded sink needs chdb-core")
    path = Path(tempfile.mkdtemp(prefix="at-emb-", dir="/tmp"))
    try:
        yield path / "store"
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def embedded_dir(chdb_session_factory: Callable[..., Any], store_dir: Path) -> Path:
    """:func:`store_dir` for a sink opened in this test process: the session fixture's chDB session is
    closed first, since chDB allows one data path per process."""
    chdb_session_factory("released").close()
    return store_dir


@pytest.fixture
def embedded_agent(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    started: list[AgentProcess] = []

    def make(store: Path, **settings: Any) -> AgentProcess:
        settings = {"sink": "embedded", "embedded": str(store), "metrics_listen": "", "batch_wait": "50ms", **settings}
        agent = AgentProcess(tmp_path / f"agent{len(started)}", **settings)
        started.append(agent)
        return agent.start()

    yield make
    for agent in started:
        agent.cleanup()
        print(agent.stderr_text[-6000:])  # pytest shows it for a failing test only


def wait_gone(path: str | Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
