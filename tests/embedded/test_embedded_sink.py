"""The embedded sink (chDB in process): the table, tokens, error classes, the one-process rule, the cwd guard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest
from agent_process import agent_env
from shipper.shipper_helpers import ShipperThread, fast_options, wait_for, write_wal

from automagik_telemetry_agent.clickhouse.chdb import LOCK_FILE, lock_holder
from automagik_telemetry_agent.clickhouse.embedded import EmbeddedSink
from automagik_telemetry_agent.clickhouse.errors import ErrorClass
from automagik_telemetry_agent.clickhouse.http import profile_row_keys
from automagik_telemetry_agent.clickhouse.rows import Profile, parse_resource, transform_span
from automagik_telemetry_agent.clickhouse.schema import render_migrations, table_columns
from automagik_telemetry_agent.shipper.batch import freeze_batch
from automagik_telemetry_agent.shipper.loop import Shipper
from automagik_telemetry_agent.wal import WalReader

from .conftest import BASE_NS, span_line

pytestmark = pytest.mark.chdb

RESOURCE = b'{"attributes":[{"key":"service.name","value":{"stringValue":"svc"}}]}'


def _count(sink: EmbeddedSink) -> tuple[int, int]:
    """(rows, distinct span ids) in the sink's table."""
    rows, distinct = sink.query(f"SELECT count(), uniqExact(span_id) FROM {sink.target}").split()
    return int(rows), int(distinct)


def test_detect_creates_the_modern_table_in_a_fresh_store(embedded_dir: Path) -> None:
    sink = EmbeddedSink(str(embedded_dir), serve_queries=False)
    try:
        detected = sink.detect()
        assert detected.profile is Profile.MODERN and sink.profile is Profile.MODERN
        assert detected.capabilities.dedup_token and detected.capabilities.version.startswith("26.")
        columns = table_columns(sink.query, "telemetry", "traces")
        assert profile_row_keys(Profile.MODERN) <= set(columns)
        assert "non_replicated_deduplication_window = 1000" in sink.query("SHOW CREATE TABLE telemetry.traces")
        assert lock_holder(str(embedded_dir)) == os.getpid()
        sink.detect()  # idempotent: the table exists, nothing is re-applied
        migrations = len(render_migrations(Profile.MODERN, "telemetry", "traces", 0))
        assert sink.query("SELECT count() FROM telemetry.schema_migrations").strip() == str(migrations)
    finally:
        sink.close()


def test_the_same_token_twice_stores_a_batch_once(embedded_dir: Path, tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    write_wal(wal, [[span_line(i) for i in range(k * 100, (k + 1) * 100)] for k in range(2)], resource=RESOURCE)
    reader = WalReader(str(wal))
    entries = reader.read(max_records=10)
    reader.close()
    batch = freeze_batch(entries, Profile.MODERN, "agent-1")
    sink = EmbeddedSink(str(embedded_dir), serve_queries=False)
    try:
        sink.detect()
        first = sink.insert(batch.body, batch.token)
        assert first.ok and first.raw_bytes == len(batch.body)
        assert sink.insert(batch.body, batch.token).ok  # a retry: same bytes, same token
        assert _count(sink) == (200, 200)
        assert sink.count_present([f"{i + 1:016x}" for i in range(0, 200, 20)], 0, 2**63) == 10
        # A bisection half carries a derived token: stored once too.
        assert sink.insert(batch.row_bytes(0, 10), batch.token + ":0").ok
        assert sink.insert(batch.row_bytes(0, 10), batch.token + ":0").ok
        assert _count(sink) == (210, 200)
        # The token, not the bytes, names a batch (without it chDB would fall back to a hash of the rows):
        # other bytes under a used token are dropped, the same bytes under a new token are stored.
        assert sink.insert(batch.row_bytes(10, 20), batch.token).ok
        assert _count(sink) == (210, 200)
        assert sink.insert(batch.row_bytes(0, 10), batch.token + ":1").ok
        assert _count(sink) == (220, 200)
    finally:
        sink.close()


def test_failures_are_classified_like_the_servers_answers(embedded_dir: Path) -> None:
    sink = EmbeddedSink(str(embedded_dir), serve_queries=False)
    try:
        sink.detect()
        bad = sink.insert(b'{"timestamp_ns":"not a number"}\n', "t-bad")
        assert not bad.ok and bad.error_class is ErrorClass.BAD_DATA and bad.code is not None
        assert bad.message.startswith("Code:"), bad.message
        assert sink.insert(span_row(sink), "t-good").ok  # the connection is usable after a failed insert
        sink.query("DROP TABLE telemetry.traces")
        missing = sink.insert(span_row(sink), "t-missing")
        assert (missing.error_class, missing.code) == (ErrorClass.CONFIG, 60)
        assert "the shipper creates it" in sink.explain(missing)
        sink.detect()  # what the shipper does after a CONFIG error: the table is back
        assert sink.insert(span_row(sink), "t-again").ok
    finally:
        sink.close()


def span_row(sink: EmbeddedSink) -> bytes:
    """One valid row of the sink's profile, JSONEachRow-encoded."""
    assert sink.profile is not None
    return orjson.dumps(transform_span(span_line(1), parse_resource(RESOURCE), sink.profile)) + b"\n"


def test_a_restarted_shipper_resends_a_stored_batch_without_duplicating_it(embedded_dir: Path, tmp_path: Path) -> None:
    """The crash window tokens exist for: the store took a batch, the shipper died before its cursor moved."""
    wal = tmp_path / "wal"
    write_wal(wal, [[span_line(i) for i in range(k * 100, (k + 1) * 100)] for k in range(5)], resource=RESOURCE)
    agent_id = (wal / "agent_id").read_text().strip()
    options = fast_options(tmp_path, batch_rows=200)
    sink = EmbeddedSink(str(embedded_dir), serve_queries=False)
    try:
        sink.detect()
        reader = WalReader(str(wal))
        entries = reader.read(max_records=2)
        reader.close()
        batch = freeze_batch(entries, Profile.MODERN, agent_id)
        Shipper(str(wal), sink, options).inflight.write(batch)  # recorded in flight, then sent ...
        assert sink.insert(batch.body, batch.token).ok  # ... and stored; the cursor never moved
        assert _count(sink) == (200, 200)
        shipper = Shipper(str(wal), sink, options)  # the restarted shipper
        with ShipperThread(shipper) as running:
            wait_for(lambda: shipper.stats.committed_seq == 5, 20, "cursor at 5")
            running.stop()
        assert shipper.stats.rows == 500  # it did resend the first batch (same range, same token) ...
        assert _count(sink) == (500, 500)  # ... and the store dropped it
    finally:
        sink.close()


def test_a_second_process_gets_one_line_naming_the_holder(embedded_dir: Path) -> None:
    sink = EmbeddedSink(str(embedded_dir), serve_queries=False)
    try:
        sink.detect()
        code = textwrap.dedent(f"""
            from automagik_telemetry_agent.clickhouse.embedded import EmbeddedSink
            from automagik_telemetry_agent.clickhouse.sink import SinkError
            try:
                EmbeddedSink({str(embedded_dir)!r}).detect()
            except SinkError as exc:
                print(exc.result.error_class.value, exc)
        """)
        out = subprocess.run([sys.executable, "-c", code], env=agent_env(), capture_output=True, text=True, timeout=60)
        assert out.stdout.strip() == (
            f"transient the embedded store {embedded_dir} is in use by process "
            f"{os.getpid()} (chDB allows one process per data directory): waiting "
            "for it to exit"
        ), out.stderr
        assert (embedded_dir / LOCK_FILE).exists()
    finally:
        sink.close()


def test_a_config_xml_in_the_working_directory_is_not_read(embedded_dir: Path, tmp_path: Path) -> None:
    """chDB reads ./config.xml at import and at open; the store must not move or break because of one."""
    elsewhere = tmp_path / "hijacked"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "config.xml").write_text(
        f"<clickhouse><path>{elsewhere}/</path><default_database>nowhere</default_database></clickhouse>"
    )
    sink = EmbeddedSink(str(embedded_dir), serve_queries=False)
    sink.detect()
    sink.insert(span_row(sink), "t1")
    sink.close()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "automagik_telemetry_agent",
            "query",
            "--embedded",
            str(embedded_dir),
            "SELECT count(), currentDatabase() FROM telemetry.traces",
        ],
        env=agent_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (out.returncode, out.stdout) == (0, "1\tdefault\n"), out.stderr
    assert not elsewhere.exists()


def test_a_batch_spanning_more_partitions_than_one_insert_may_is_split_and_every_span_ships(
    embedded_dir: Path, tmp_path: Path
) -> None:
    """Spans from 300 different days (clients with wrong clocks) in one batch: the server refuses the block
    (Code 252, too many partitions for a single INSERT block). That is a property of these rows, not an
    overloaded server: the shipper bisects until each INSERT fits, instead of retrying the batch forever."""
    day = 86_400 * 10**9
    lines = [
        json.dumps(
            {
                "traceId": f"{i + 1:032x}",
                "spanId": f"{i + 1:016x}",
                "name": "skewed",
                "kind": 1,
                "startTimeUnixNano": str(BASE_NS - i * day),
                "endTimeUnixNano": str(BASE_NS - i * day + 9),
            }
        ).encode()
        for i in range(300)
    ]
    wal = tmp_path / "wal"
    seqs = write_wal(wal, [lines], resource=RESOURCE)
    sink = EmbeddedSink(str(embedded_dir), serve_queries=False)
    try:
        shipper = Shipper(str(wal), sink, fast_options(tmp_path, batch_rows=1000))
        with ShipperThread(shipper) as running:
            wait_for(lambda: shipper.stats.committed_seq == seqs[-1], 30, "the batch committed")
            running.stop()
        assert _count(sink) == (300, 300), (shipper.stats, (tmp_path / "dead-letter").exists())
        assert shipper.stats.bisect_requests > 0 and shipper.stats.dead_lettered == 0
        assert shipper.stats.retries_transient == 0
    finally:
        sink.close()
