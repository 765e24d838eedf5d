"""The client's privacy setting, proven where it matters: what lands in ClickHouse (the 18.16 server, via a
real agent) holds no e-mail address, phone number, API key or password, in spans, logs or metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from agent_process import AgentProcess, wait_until
from shipper.shipper_helpers import apply_schema

from automagik_telemetry import AutomagikTelemetry, TelemetryConfig
from automagik_telemetry.privacy import PrivacyConfig

pytestmark = pytest.mark.clickhouse

SECRETS = ("jane.doe@example.com", "555-123-4567", "ABCDEFGHIJKLMNOPQRSTUVWXYZ123456", "hunter2")
PII = {
    "contact": "write to jane.doe@example.com",
    "phone": "call 555-123-4567 now",
    "auth": "api_key_ABCDEFGHIJKLMNOPQRSTUVWXYZ123456",
    "password": "hunter2",
}


def test_with_privacy_on_no_secret_reaches_any_table(clickhouse: Any, clickhouse_db: str, tmp_path: Path) -> None:
    apply_schema(clickhouse, clickhouse_db)
    with AgentProcess(
        tmp_path / "agent",
        sink="clickhouse",
        clickhouse_endpoint=clickhouse.url,
        database=clickhouse_db,
        batch_wait="100ms",
    ) as agent:
        client = AutomagikTelemetry(
            config=TelemetryConfig(
                project_name="private", version="1", socket_path=agent.socket_path, privacy=PrivacyConfig()
            )
        )
        try:
            client.track_event("signup", dict(PII))
            client.track_error(ValueError("mail jane.doe@example.com"), dict(PII))
            client.track_log("call 555-123-4567 or write to jane.doe@example.com", "WARN", dict(PII))
            client.track_metric("signups", 1, "counter", dict(PII))
            assert client.flush(10)
        finally:
            client.shutdown(1)

        def everything() -> str:
            return "".join(
                clickhouse.query(f"SELECT * FROM {clickhouse_db}.{table} FORMAT TabSeparated")
                for table in ("traces", "logs", "metrics")
            )

        def counts() -> list[str]:
            return [
                clickhouse.query(f"SELECT count() FROM {clickhouse_db}.{t}").strip()
                for t in ("traces", "logs", "metrics")
            ]

        wait_until(lambda: counts() == ["2", "1", "1"], 30, message="2 spans, 1 log, 1 metric point shipped")
    stored = everything()
    for secret in SECRETS:
        assert secret not in stored, secret
    assert "[REDACTED]" in stored  # the password key's value, in each table's attributes
    assert stored.count("[REDACTED]") >= 4


def test_under_the_agents_rules_alone_no_secret_reaches_any_table_from_either_inlet(
    clickhouse: Any, clickhouse_db: str, tmp_path: Path
) -> None:
    """The application does nothing for privacy (no client setting; an OTLP exporter that knows nothing of
    it); the operator's ``redact.keys = "default"`` and ``redact.pii`` clean both inlets before the WAL."""
    import orjson
    from otlp.conftest import free_port, post

    apply_schema(clickhouse, clickhouse_db)
    port = free_port()
    with AgentProcess(
        tmp_path / "agent", sink="clickhouse", clickhouse_endpoint=clickhouse.url, database=clickhouse_db,
        batch_wait="100ms", redact_keys="default", redact_pii="true", otlp_listen=f"127.0.0.1:{port}",
    ) as agent:  # fmt: skip
        client = AutomagikTelemetry(
            config=TelemetryConfig(project_name="careless", version="1", socket_path=agent.socket_path)
        )
        try:
            assert client.config.privacy is None
            client.track_event("signup", dict(PII))
            client.track_log("call 555-123-4567 or write to jane.doe@example.com", "WARN", dict(PII))
            client.track_metric("signups", 1, "counter", dict(PII))
            assert client.flush(10)
        finally:
            client.shutdown(1)
        attributes = [{"key": k, "value": {"stringValue": v}} for k, v in PII.items()]
        export = {
            "resourceSpans": [
                {
                    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "otlp-app"}}]},
                    "scopeSpans": [
                        {
                            "spans": [
                                {
                                    "traceId": "ab" * 16,
                                    "spanId": "cd" * 8,
                                    "name": "otlp-signup",
                                    "startTimeUnixNano": "1700000000000000000",
                                    "attributes": attributes,
                                }
                            ]
                        }
                    ],
                }
            ]
        }
        assert post(port, "/v1/traces", orjson.dumps(export), "application/json")[0] == 200

        def counts() -> list[str]:
            return [
                clickhouse.query(f"SELECT count() FROM {clickhouse_db}.{t}").strip()
                for t in ("traces", "logs", "metrics")
            ]

        wait_until(lambda: counts() == ["2", "1", "1"], 30, message="2 spans, 1 log, 1 metric point shipped")
    stored = "".join(
        clickhouse.query(f"SELECT * FROM {clickhouse_db}.{table} FORMAT TabSeparated")
        for table in ("traces", "logs", "metrics")
    )
    for secret in SECRETS:
        assert secret not in stored, secret
    assert "otlp-signup" in stored and stored.count("[REDACTED]") >= 4
