"""`automagik-telemetry query` with sink = clickhouse asks the server over HTTP, read-only as well."""

from __future__ import annotations

from typing import Any

import pytest
from agent_process import run_cli

pytestmark = pytest.mark.clickhouse


def test_query_reads_from_the_server_and_refuses_writes(clickhouse: Any, clickhouse_db: str) -> None:
    clickhouse.query(f"CREATE TABLE {clickhouse_db}.t (x UInt8) ENGINE = Memory")
    clickhouse.query(f"INSERT INTO {clickhouse_db}.t VALUES (1), (2)")
    target = ["--config", "/dev/null", "--clickhouse-endpoint", clickhouse.url]
    read = run_cli("query", *target, f"SELECT sum(x) FROM {clickhouse_db}.t")
    assert (read.returncode, read.stdout, read.stderr) == (0, "3\n", "")
    as_json = run_cli("query", *target, "--format", "JSONEachRow", f"SELECT x FROM {clickhouse_db}.t ORDER BY x")
    assert as_json.stdout == '{"x":1}\n{"x":2}\n', as_json.stderr
    refused = run_cli("query", *target, f"DROP TABLE {clickhouse_db}.t")
    assert refused.returncode == 2 and "read-only" in refused.stderr and refused.stderr.count("\n") == 1
    assert clickhouse.query(f"SELECT count() FROM {clickhouse_db}.t").strip() == "2"
