"""The shipper's exact batch bytes and dedup tokens on the modern engine (chDB 26.x, in process)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from automagik_telemetry_agent.clickhouse.http import ClickHouseHttpSink, profile_row_keys
from automagik_telemetry_agent.clickhouse.rows import Profile, parse_resource, transform_span
from automagik_telemetry_agent.clickhouse.schema import apply, detect_table_profile, render_migrations, table_columns
from automagik_telemetry_agent.clickhouse.sink import Capabilities
from automagik_telemetry_agent.shipper.batch import batch_token, freeze_batch
from automagik_telemetry_agent.wal import WalReader

from .shipper_helpers import RESOURCE, span, write_wal

pytestmark = pytest.mark.chdb


def _insert(execute: Any, body: bytes, token: str) -> None:
    assert "'" not in token and "\\" not in token
    execute(
        f"INSERT INTO telemetry.traces SETTINGS insert_deduplication_token = '{token}' "
        "FORMAT JSONEachRow\n" + body.decode()
    )


def _count(execute: Any) -> int:
    return int(execute("SELECT count() FROM telemetry.traces FORMAT TabSeparated"))


def test_chdb_batch_bytes_and_dedup_token(chdb_session_factory: Any, tmp_path: Path) -> None:
    session = chdb_session_factory("shipper")

    def execute(sql: str) -> str:
        return str(session.query(sql))

    every = [m.version for m in render_migrations(Profile.MODERN, "telemetry", "traces", 0)]
    assert apply(execute, Profile.MODERN, "telemetry", "traces", 0) == every  # traces, logs, metrics
    columns = table_columns(execute, "telemetry", "traces")
    assert detect_table_profile(columns) is Profile.MODERN
    assert profile_row_keys(Profile.MODERN) <= set(columns)

    wal = tmp_path / "wal"
    lines = [span(i) for i in range(120)]
    lines[7] = span(7, spanId="zz")  # dead-lettered by the transform, never sent
    write_wal(wal, [lines[:50], lines[50:]])
    agent_id = (wal / "agent_id").read_text().strip()
    reader = WalReader(str(wal))
    entries = reader.read(max_records=10)
    reader.close()
    batch = freeze_batch(entries, Profile.MODERN, agent_id)
    assert (batch.first_seq, batch.last_seq) == (1, 2)
    assert batch.token == batch_token(agent_id, 1, 2, [e.salt for e in entries])
    assert batch.token.startswith(f"{agent_id}:1-2:")
    assert batch.rows == 119 and len(batch.dead) == 1 and batch.dead[0].error.startswith("invalid spanId")
    # The same entries always freeze to the same bytes and token (what a retry or a restart resends).
    again = freeze_batch(entries, Profile.MODERN, agent_id)
    assert (again.body, again.token) == (batch.body, batch.token)

    _insert(execute, batch.body, batch.token)
    out = execute(
        "SELECT * FROM telemetry.traces ORDER BY timestamp_ns "
        "SETTINGS output_format_json_quote_64bit_integers = 0 FORMAT JSONEachRow"
    )
    got = [json.loads(line) for line in out.splitlines() if line]
    resource = parse_resource(RESOURCE)
    expected = [transform_span(line, resource, Profile.MODERN) for i, line in enumerate(lines) if i != 7]
    assert len(got) == 119
    for g, e in zip(got, expected, strict=True):
        assert g == {k: e[k] for k in g}

    # A retry of the same frozen batch (same bytes, same token) adds nothing.
    _insert(execute, batch.body, batch.token)
    assert _count(execute) == 119
    # Bisected halves carry derived tokens; re-sending a half is deduplicated as well.
    half = batch.row_bytes(0, 60)
    _insert(execute, half, batch.token + ":0")
    assert _count(execute) == 119 + 60
    _insert(execute, half, batch.token + ":0")
    assert _count(execute) == 119 + 60

    # The sink sends the token as a URL setting only to servers that know it.
    sink = ClickHouseHttpSink("http://127.0.0.1:1", "telemetry", "traces")
    sink.capabilities = Capabilities("26.9.2.1", True, True)
    assert sink.insert_params(batch.token)["insert_deduplication_token"] == batch.token
    assert sink.choose_encoding(len(batch.body)) == "zstd"
    sink.capabilities = Capabilities("18.16.1", False, False)
    assert "insert_deduplication_token" not in sink.insert_params(batch.token)
    assert sink.choose_encoding(len(batch.body)) == "gzip"
    assert sink.choose_encoding(100) == "none"
