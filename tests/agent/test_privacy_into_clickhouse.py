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
