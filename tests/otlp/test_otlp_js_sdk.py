"""The real OpenTelemetry JavaScript SDK (tests/otlp/js, on this machine's Node.js) sends traces and logs
over OTLP/HTTP, JSON and protobuf, chunked bodies without Content-Length -> the agent -> the 18.16 server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from agent_process import wait_until

from .conftest import OtlpAgent

JS = Path(__file__).parent / "js"
SPANS, LOGS = 25, 12

pytestmark = pytest.mark.clickhouse


def _node() -> str:
    node = shutil.which("node")
    assert node is not None, "Node.js is not installed: `make test` installs it (scripts/bootstrap.sh)"
    assert (JS / "node_modules" / "@opentelemetry" / "sdk-trace-base").is_dir(), (
        "the JavaScript SDK is not installed: `make test` runs npm ci in tests/otlp/js (scripts/bootstrap.sh)"
    )
    return node


@pytest.mark.parametrize(("protocol", "compression"), [("json", "none"), ("protobuf", "gzip")])
def test_javascript_sdk_traces_and_logs_land_in_clickhouse(
    protocol: str,
    compression: str,
    server_otlp_agent: OtlpAgent,
    clickhouse: Any,
    clickhouse_db: str,
    tmp_path: Path,
) -> None:
    agent = server_otlp_agent
    env = {
        **os.environ,
        "OTLP_ENDPOINT": agent.otlp_url,
        "OTLP_PROTOCOL": protocol,
        "OTLP_COMPRESSION": compression,
        "SPANS": str(SPANS),
        "LOGS": str(LOGS),
        "SERVICE_NAME": f"js-{protocol}",
        "TEST_RUN": clickhouse_db,
    }
    done = subprocess.run([_node(), str(JS / "send.mjs")], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    sent = json.loads(done.stdout.strip().splitlines()[-1])

    def query(sql: str) -> list[list[str]]:
        return [r.split("\t") for r in clickhouse.query(sql.replace("{db}", clickhouse_db)).splitlines()]

    wait_until(
        lambda: (
            query("SELECT (SELECT count() FROM {db}.traces), (SELECT count() FROM {db}.logs)")
            == [[str(SPANS), str(LOGS)]]
        ),
        30,
        message="every JS span and log record in ClickHouse",
    )
    attr = "attribute_values[indexOf(attribute_keys, '{}')]"
    spans = query(
        "SELECT span_name, trace_id, span_id, parent_span_id, span_kind, status_code, status_message, service_name, "
        f"{attr.format('i')}, {attr.format('s')}, {attr.format('b')}, {attr.format('arr')}, "
        f"{attr.format('otel.scope.name')}, {attr.format('otel.scope.version')}, "
        "resource_values[indexOf(resource_keys, 'test.run')], events FROM {db}.traces ORDER BY timestamp_ns, span_name"
    )
    by_name = {row[0]: row[1:] for row in spans}
    for i in range(SPANS):
        row = by_name[f"js-span-{i}"]
        assert row[:14] == [
            sent["traceId"],
            sent["spanIds"][i],
            "" if i == 0 else sent["rootSpanId"],
            "SERVER" if i % 2 == 0 else "CLIENT",
            "ERROR" if i % 5 == 0 else "UNSET",
            f"bad {i}" if i % 5 == 0 else "",
            f"js-{protocol}",
            str(i),
            f"v{i}",
            "true" if i % 2 == 0 else "false",
            '["a","b"]',
            "js-e2e-scope",
            "1.2.3",
            clickhouse_db,
        ], i
        assert '"name":"evt"' in row[14].replace(" ", "")
    logs = query(
        "SELECT body, severity_number, severity_text, trace_id, span_id, scope_name, scope_version, "
        f"{attr.format('i')} FROM {{db}}.logs ORDER BY toInt64({attr.format('i')})"
    )
    assert logs == [
        [f"js-log-{i}", "13", "WARN", sent["traceId"], sent["rootSpanId"], "js-e2e-logger", "4.5.6", str(i)]
        for i in range(LOGS)
    ]
