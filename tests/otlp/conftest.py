"""Fixtures and helpers for the OTLP/HTTP receiver tests.

* :func:`free_port`: a TCP port nobody listens on now (bound and released; the agent binds it next).
* ``otlp_agent``: ``make(tmp_dir, **settings)`` starts a real agent (:class:`AgentProcess`) with its OTLP
  receiver on a free loopback port; ``agent.otlp_url`` is ``http://127.0.0.1:<port>``. Stopped at teardown.
* ``server_otlp_agent``: such an agent shipping to the session's 18.16 server, into a fresh database
  with the schema applied (``agent.database``).
* :func:`post`: one raw HTTP POST (``http.client``), for the tests that send what no SDK would.
"""

from __future__ import annotations

import gzip
import http.client
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_process import AgentProcess
from shipper.shipper_helpers import apply_schema


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OtlpAgent(AgentProcess):
    otlp_url: str
    otlp_port: int


@pytest.fixture
def otlp_agent() -> Iterator[Callable[..., OtlpAgent]]:
    started: list[OtlpAgent] = []

    def make(tmp_dir: Path, **settings: Any) -> OtlpAgent:
        port = free_port()
        agent = OtlpAgent(tmp_dir, otlp_listen=f"127.0.0.1:{port}", **settings)
        agent.otlp_port, agent.otlp_url = port, f"http://127.0.0.1:{port}"
        started.append(agent)
        agent.start()
        return agent

    yield make
    for agent in started:
        agent.cleanup()
        print(agent.stderr_text[-6000:])  # pytest shows it for a failing test only


@pytest.fixture
def server_otlp_agent(
    otlp_agent: Callable[..., OtlpAgent], clickhouse: Any, clickhouse_db: str, tmp_path: Path
) -> OtlpAgent:
    apply_schema(clickhouse, clickhouse_db)
    return otlp_agent(
        tmp_path / "agent",
        sink="clickhouse",
        clickhouse_endpoint=clickhouse.url,
        database=clickhouse_db,
        batch_wait="100ms",
    )


def post(
    port: int,
    path: str,
    body: bytes,
    content_type: str = "application/x-protobuf",
    *,
    gzipped: bool = False,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[int, dict[str, str], bytes]:
    """POST ``body`` to the receiver; (status, headers with lower-case names, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        sent = gzip.compress(body) if gzipped else body
        h = {"Content-Type": content_type, **(headers or {})}
        if gzipped:
            h["Content-Encoding"] = "gzip"
        conn.request("POST", path, body=sent, headers=h)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()
