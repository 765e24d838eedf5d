"""Shipper metrics against the real ClickHouse: the scrape's shipped rows equal the table's count, and
failures, retries and dead letters are counted by class."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from shipper import fault_proxy
from shipper.fault_proxy import FaultProxy
from shipper.shipper_helpers import (
    ShipperThread,
    apply_schema,
    count,
    fast_options,
    make_sink,
    span,
    wait_for,
    write_wal,
)

from automagik_telemetry_agent.ingest.metrics import collect_ingest
from automagik_telemetry_agent.metrics.exposition import AgentMetrics
from automagik_telemetry_agent.shipper.loop import Shipper
from automagik_telemetry_agent.shipper.metrics import collect_shipper
from automagik_telemetry_agent.wal import WalReader

from .test_metrics_ingest import InProcessIngest
from .traffic import scrape, send_known_traffic, total, value

pytestmark = pytest.mark.clickhouse


@pytest.fixture
def metrics() -> Iterator[AgentMetrics]:
    m = AgentMetrics()
    yield m
    m.close()


def test_scrape_of_ingest_and_shipper_matches_traffic_and_clickhouse(
    clickhouse: Any, clickhouse_db: str, tmp_path: Path, metrics: AgentMetrics
) -> None:
    apply_schema(clickhouse, clickhouse_db)
    wal_dir = tmp_path / "wal"
    sock_dir = tempfile.mkdtemp(prefix="at-metrics-", dir="/tmp")
    ingest = InProcessIngest(wal_dir, os.path.join(sock_dir, "agent.sock"))
    try:
        t = send_known_traffic(ingest.server.options.socket_path, valid=60)
    finally:
        ingest.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)
    # Three more spans, one of which no transform can read: it is dead-lettered, never sent.
    last = write_wal(wal_dir, [[span(9000), b"{not json", span(9001)]])[-1]
    started = time.time()
    shipper = Shipper(str(wal_dir), make_sink(clickhouse, clickhouse_db), fast_options(tmp_path, batch_rows=50))
    with ShipperThread(shipper) as thread:
        wait_for(lambda: shipper.stats.committed_seq >= last, 30, "the whole WAL shipped")
        metrics.observe("shipper", 2002, collect_shipper(shipper))
        thread.stop()
    metrics.observe("ingest", 2001, collect_ingest(ingest.server))
    server = metrics.serve("127.0.0.1:0")
    assert server is not None
    samples = scrape(server.port)

    stored = count(clickhouse, clickhouse_db)
    assert stored == t.spans + 2
    assert value(samples, "shipper_rows_total") == stored
    assert value(samples, "shipper_dead_lettered_rows_total", reason="transform") == 1
    assert value(samples, "shipper_dead_lettered_rows_total", reason="rejected") == 0
    batches = value(samples, "shipper_batches_total")
    assert batches >= stored / 50  # batch_rows=50
    assert value(samples, "shipper_insert_requests_total") == batches  # no failure, no retry
    assert value(samples, "shipper_insert_duration_seconds_count") == batches
    assert total(samples, "shipper_insert_failures_total") == 0
    assert total(samples, "shipper_retries_total") == 0
    raw, sent = value(samples, "shipper_uncompressed_bytes_total"), value(samples, "shipper_sent_bytes_total")
    assert raw == shipper.stats.bytes_raw and sent == shipper.stats.bytes_compressed and 0 < sent <= raw
    assert started <= value(samples, "shipper_last_success_timestamp_seconds") <= time.time()
    assert value(samples, "shipper_consecutive_failures") == 0
    assert value(samples, "wal_corrupt_records_skipped_total") == 0
    assert value(samples, "ingest_spans_received_total") == t.spans
    summary = metrics.summary()
    assert summary["rows_shipped"] == stored and summary["dead_lettered_rows"] == 1
    assert summary["insert_failures"] == 0 and summary["metrics_port"] == server.port


def test_failed_inserts_and_retries_are_counted_by_class(
    clickhouse: Any, clickhouse_db: str, tmp_path: Path, metrics: AgentMetrics
) -> None:
    apply_schema(clickhouse, clickhouse_db)
    wal_dir = tmp_path / "wal"
    last = write_wal(wal_dir, [[span(i) for i in range(j * 10, j * 10 + 10)] for j in range(3)])[-1]
    with FaultProxy(clickhouse.url) as proxy:
        for _ in range(3):
            proxy.push(fault_proxy.status_503())
        shipper = Shipper(str(wal_dir), make_sink(proxy, clickhouse_db), fast_options(tmp_path))
        with ShipperThread(shipper) as thread:
            wait_for(lambda: shipper.stats.committed_seq >= last, 30, "shipped after the 503s")
            metrics.observe("shipper", 1, collect_shipper(shipper))
            thread.stop()
        requests = len(proxy.inserts())
    samples = scrape(metrics.serve("127.0.0.1:0").port)  # type: ignore[union-attr]
    assert value(samples, "shipper_insert_failures_total", **{"class": "transient"}) == 3
    assert value(samples, "shipper_insert_failures_total", **{"class": "config"}) == 0
    assert value(samples, "shipper_retries_total", **{"class": "transient"}) == 3
    assert value(samples, "shipper_insert_requests_total") == requests
    assert value(samples, "shipper_insert_duration_seconds_count") == requests
    assert value(samples, "shipper_rows_total") == count(clickhouse, clickhouse_db) == 30
    assert metrics.summary()["insert_failures"] == 3


def test_corrupt_records_the_shipper_skips_are_counted(
    clickhouse: Any, clickhouse_db: str, tmp_path: Path, metrics: AgentMetrics
) -> None:
    apply_schema(clickhouse, clickhouse_db)
    wal_dir = tmp_path / "wal"
    seqs = write_wal(wal_dir, [[span(i)] for i in range(5)])
    segment = next(wal_dir.glob("*.seg"))
    data = bytearray(segment.read_bytes())
    reader = WalReader(str(wal_dir))
    assert len(reader.read()) == 5
    reader.close()
    # Flip a byte in the payload of record 3: the scanner skips it and resynchronises at record 4.
    record_len = (len(data) - 40) // 5
    data[40 + 2 * record_len + 40] ^= 0xFF
    segment.write_bytes(bytes(data))
    shipper = Shipper(str(wal_dir), make_sink(clickhouse, clickhouse_db), fast_options(tmp_path))
    with ShipperThread(shipper) as thread:
        wait_for(lambda: shipper.stats.committed_seq >= seqs[-1], 30, "the readable records shipped")
        metrics.observe("shipper", 1, collect_shipper(shipper))
        thread.stop()
    samples = scrape(metrics.serve("127.0.0.1:0").port)  # type: ignore[union-attr]
    assert value(samples, "wal_corrupt_records_skipped_total") == 1
    assert value(samples, "shipper_rows_total") == count(clickhouse, clickhouse_db) == 4
