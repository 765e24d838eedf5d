"""kill -9 of the receiving process in the middle of requests: every request answered 200 is in
ClickHouse, and the retries of the requests that were cut off (the same body again, as exporters retry)
create no duplicates: the parts already durable are recognized in the WAL and not written twice."""

from __future__ import annotations

import http.client
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from agent_process import wait_until
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from .conftest import OtlpAgent

pytestmark = pytest.mark.clickhouse

SENDERS, REQUESTS, SPANS_PER_REQUEST = 4, 40, 300
T0 = 1_700_000_000_000_000_000


def request_body(sender: int, n: int) -> bytes:
    """Request ``n`` of ``sender``: SPANS_PER_REQUEST spans with ids unique across the test, several
    RECORDS messages (so a kill can fall between the parts of one request)."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = f"sender-{sender}"
    ss = rs.scope_spans.add()
    for i in range(SPANS_PER_REQUEST):
        number = (sender * REQUESTS + n) * SPANS_PER_REQUEST + i + 1
        span = ss.spans.add(name=f"op-{i % 7}" + "x" * 120, start_time_unix_nano=T0 + number)
        span.trace_id, span.span_id = number.to_bytes(16, "big"), number.to_bytes(8, "big")
    return request.SerializeToString()


class Exporter(threading.Thread):
    """Sends its requests in order, each until it is answered 200, re-sending the same body after a
    connection error or a 503, as OTLP exporters do."""

    def __init__(self, port: int, sender: int) -> None:
        super().__init__(daemon=True)
        self.port, self.sender = port, sender
        self.acknowledged: list[int] = []
        self.retries = 0
        self.error: str = ""

    def run(self) -> None:
        for n in range(REQUESTS):
            body = request_body(self.sender, n)
            deadline = time.monotonic() + 60
            while True:
                status = self._post(body)
                if status == 200:
                    self.acknowledged.append(n)
                    break
                if status not in (None, 503) or time.monotonic() > deadline:
                    self.error = f"request {n}: status {status}"
                    return
                self.retries += 1
                time.sleep(0.05)

    def _post(self, body: bytes) -> int | None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("POST", "/v1/traces", body=body, headers={"Content-Type": "application/x-protobuf"})
            response = conn.getresponse()
            response.read()
            return response.status
        except (OSError, http.client.HTTPException):
            return None  # cut off: the receiver was killed
        finally:
            conn.close()


def test_kill9_of_the_receiver_mid_request_loses_nothing_answered_and_retries_duplicate_nothing(
    server_otlp_agent: OtlpAgent, clickhouse: Any, clickhouse_db: str, tmp_path: Path
) -> None:
    agent = server_otlp_agent
    exporters = [Exporter(agent.otlp_port, s) for s in range(SENDERS)]
    for e in exporters:
        e.start()
    rng = random.Random(12)
    killed = 0
    for _ in range(3):
        time.sleep(rng.uniform(0.3, 1.0))
        if not any(e.is_alive() for e in exporters):
            break
        pid = agent.child_pid("otlp")
        os.kill(pid, signal.SIGKILL)
        killed += 1
        wait_until(lambda: agent.children().get("otlp") not in (None, pid), 15, message="a new otlp child")  # noqa: B023
    for e in exporters:
        e.join(120)
    assert killed >= 2, "the exporters finished before the receiver could be killed twice"
    assert [e.error for e in exporters] == [""] * SENDERS
    assert all(e.acknowledged == list(range(REQUESTS)) for e in exporters)
    assert sum(e.retries for e in exporters) > 0, "no request was cut off by a kill: the test proved nothing"

    total = SENDERS * REQUESTS * SPANS_PER_REQUEST
    wait_until(
        lambda: clickhouse.query(f"SELECT count() FROM {clickhouse_db}.traces").strip() == str(total),
        60,
        message=f"{total} spans in ClickHouse",
    )
    time.sleep(1.0)  # a duplicate would arrive in the next batch: give it the time to
    assert clickhouse.query(f"SELECT count(), uniqExact(span_id) FROM {clickhouse_db}.traces") == f"{total}\t{total}\n"
    assert "OTLP request parts found in the newest WAL segments" in agent.stderr_text
