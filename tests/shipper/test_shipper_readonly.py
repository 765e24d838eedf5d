"""A readonly ClickHouse user: a configuration error. Data kept, one actionable line, shipped once fixed."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from clickhouse_server import READONLY_PASSWORD, READONLY_USER

from automagik_telemetry_agent.shipper.loop import Shipper
from automagik_telemetry_agent.wal import read_cursor

from .shipper_helpers import ShipperThread, apply_schema, count, fast_options, make_sink, span, wait_for, write_wal

pytestmark = pytest.mark.clickhouse


def test_readonly_user_keeps_data_says_so_once_and_ships_after_the_fix(
    clickhouse: Any, clickhouse_db: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    apply_schema(clickhouse, clickhouse_db)
    wal = tmp_path / "wal"
    seqs = write_wal(wal, [[span(i) for i in range(25)]])
    caplog.set_level(logging.INFO, logger="automagik_telemetry_agent")
    readonly = make_sink(clickhouse, clickhouse_db, username=READONLY_USER, password=READONLY_PASSWORD)
    shipper = Shipper(str(wal), readonly, fast_options(tmp_path))
    with ShipperThread(shipper) as t:
        wait_for(lambda: shipper.stats.retries_config >= 3, 10, "configuration retries")
        t.stop()
    assert count(clickhouse, clickhouse_db) == 0
    assert read_cursor(str(wal)).seq == 0
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "164" in errors[0] and "readonly" in errors[0].lower()
    shipper = Shipper(str(wal), make_sink(clickhouse, clickhouse_db), fast_options(tmp_path))
    with ShipperThread(shipper) as t:
        wait_for(lambda: read_cursor(str(wal)).seq == seqs[-1], 20, "shipped by a user allowed to insert")
        t.stop()
    assert count(clickhouse, clickhouse_db) == 25
