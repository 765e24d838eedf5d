"""The fleet insert policy against the real ClickHouse 18.16 server: its reading, and a shipper following it."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from automagik_telemetry_agent.clickhouse.load import sample_load
from automagik_telemetry_agent.clickhouse.rows import Profile, parse_resource, transform_span
from automagik_telemetry_agent.shipper.insert_policy import Adjustment, InsertPolicy, PolicyMode, PolicySettings
from automagik_telemetry_agent.shipper.loop import Shipper
from automagik_telemetry_agent.wal.options import WalOptions
from automagik_telemetry_agent.wal.writer import WalWriter

from .shipper_helpers import RESOURCE, ShipperThread, apply_schema, count, fast_options, make_sink, span

pytestmark = pytest.mark.clickhouse


def test_the_load_reading_counts_the_servers_inserts_and_the_tables_parts(clickhouse: Any, clickhouse_db: str) -> None:
    apply_schema(clickhouse, clickhouse_db)
    sink = make_sink(clickhouse, clickhouse_db)
    sink.detect()
    before = sample_load(sink)
    assert before is not None and before.endpoints == (sink.endpoint,) and before.parts_to_delay == 150
    assert before.max_parts == 0  # an empty table
    clickhouse.query(f"SYSTEM STOP MERGES {clickhouse_db}.traces")
    try:
        for i in range(3):
            assert sink.insert(b"".join(row + b"\n" for row in _rows(i * 10, 10))).ok
        after = sample_load(sink)
    finally:
        clickhouse.query(f"SYSTEM START MERGES {clickhouse_db}.traces")
    assert after is not None
    assert after.inserts - before.inserts == 3  # each INSERT statement once (the reading's own SELECTs are not)
    assert after.max_parts == 3  # three blocks of one day's partition, merges stopped


def _rows(start: int, n: int) -> list[bytes]:
    resource = parse_resource(RESOURCE)
    return [orjson.dumps(transform_span(span(i), resource, Profile.LEGACY)) for i in range(start, start + n)]


def _ship_a_trickle(
    tmp_path: Path, clickhouse: Any, database: str, mode: PolicyMode, seconds: float
) -> tuple[Shipper, list[float]]:
    """A shipper under ``mode`` while a writer appends a record of 10 spans every 50 ms for ``seconds``; the
    shipper and every batch_wait its policy chose."""
    wal = tmp_path / mode.value / "wal"
    waits: list[float] = []  # every batch_wait the policy chose
    sink = make_sink(clickhouse, database)
    settings = PolicySettings(
        mode, batch_wait_s=0.2, batch_wait_max_s=3.0, target_inserts_per_s=0.5, sample_interval_s=1.0
    )
    policy = InsertPolicy(settings, lambda: sample_load(sink), on_change=waits.append)
    shipper = Shipper(str(wal), sink, fast_options(tmp_path / mode.value, batch_wait_s=0.2), policy=policy)
    writer = WalWriter(str(wal), WalOptions(min_free_bytes=0)).open()
    stop = threading.Event()
    written = [0]

    def write() -> None:
        while not stop.is_set():
            lines = [span(written[0] + i) for i in range(10)]
            writer.append(RESOURCE + b"\n" + b"".join(s + b"\n" for s in lines), len(lines))
            writer.flush()
            written[0] += 10
            stop.wait(0.05)

    thread = threading.Thread(target=write, daemon=True)
    with ShipperThread(shipper) as t:
        thread.start()
        time.sleep(seconds)
        stop.set()
        thread.join()
        writer.sync()
        deadline = time.monotonic() + 20
        while shipper.stats.rows < written[0] and time.monotonic() < deadline:
            time.sleep(0.05)
        t.stop()
    writer.close()
    assert shipper.stats.rows == written[0]
    return shipper, waits


def test_under_the_fleet_policy_a_busy_server_gets_fewer_larger_inserts(
    clickhouse: Any, clickhouse_db: str, tmp_path: Path
) -> None:
    """The same trickle (200 spans/s) against a target of 0.5 inserts/s: fixed inserts every 0.2 s; the fleet
    policy reads the server's rate, lengthens batch_wait towards its 3 s cap, and inserts far less often."""
    apply_schema(clickhouse, clickhouse_db)
    fixed, _ = _ship_a_trickle(tmp_path, clickhouse, clickhouse_db, PolicyMode.FIXED, 8.0)
    fleet, waits = _ship_a_trickle(tmp_path, clickhouse, clickhouse_db, PolicyMode.FLEET, 8.0)
    assert count(clickhouse, clickhouse_db) == fixed.stats.rows + fleet.stats.rows  # every span, once
    assert fleet.policy is not None and fleet.policy.adjustments[Adjustment.BUSY] >= 2
    assert max(waits) >= 1.0  # it went up (and may have come down since the trickle ended)
    rows_per_insert = (fixed.stats.rows / fixed.stats.batches, fleet.stats.rows / fleet.stats.batches)
    print(f"\nrows per insert: fixed {rows_per_insert[0]:.0f}, fleet {rows_per_insert[1]:.0f}")
    assert fixed.stats.batches >= 25  # about one per 0.2 s over 8 s
    # Without the policy both would be alike (about one batch per 0.2 s); with it clearly fewer, larger ones
    # (measured: 0.4-0.5x the batches, 2-2.5x the rows per insert; the first rate comes after ~1 s of 8).
    assert fleet.stats.batches <= 0.7 * fixed.stats.batches
    assert rows_per_insert[1] >= 1.4 * rows_per_insert[0]
