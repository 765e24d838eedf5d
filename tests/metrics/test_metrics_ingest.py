"""Ingest and WAL metrics from a real IngestServer and WalWriter, through AgentMetrics and a real /metrics scrape.

The ingest server runs in-process (as the ingest child runs it) so that the test can call collect_ingest
the way the child's reporter does, and simulate a child restart on the same WAL.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_process import wait_until

from automagik_telemetry_agent.ingest.metrics import collect_ingest
from automagik_telemetry_agent.ingest.server import IngestOptions, IngestServer
from automagik_telemetry_agent.metrics.exposition import AgentMetrics
from automagik_telemetry_agent.wal import WalOptions, WalReader, WalWriter
from automagik_telemetry_agent.wal.format import RECORD_HEADER_SIZE, SEGMENT_HEADER_SIZE

from .traffic import Samples, Traffic, scrape, send_known_traffic, total, value


class InProcessIngest:
    """IngestServer + WalWriter serving in a thread (what `automagik-telemetry ingest` runs)."""

    def __init__(self, wal_dir: Path, socket_path: str, **wal: object) -> None:
        self.writer = WalWriter(str(wal_dir), WalOptions(min_free_bytes=0, **wal)).open()  # type: ignore[arg-type]
        self.server = IngestServer(IngestOptions(socket_path=socket_path), self.writer)
        self.server.listen()
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="ingest-test")
        self.thread.start()

    def stop(self) -> None:
        self.server.request_stop()
        self.thread.join(10)
        assert not self.thread.is_alive()
        self.writer.close()


@pytest.fixture
def sock_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="at-metrics-", dir="/tmp")  # AF_UNIX paths are short
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def metrics() -> Iterator[AgentMetrics]:
    m = AgentMetrics()
    yield m
    m.close()


def check_ingest_counters(samples: Samples, t: Traffic) -> None:
    assert value(samples, "ingest_messages_received_total") == t.messages
    assert value(samples, "ingest_received_bytes_total") == t.bytes
    assert value(samples, "ingest_records_received_total") == t.records
    assert value(samples, "ingest_spans_received_total") == t.spans
    for reason in ("too_short", "bad_magic", "unsupported_kind", "bad_payload", "empty", "disk_full"):
        assert value(samples, "ingest_rejected_messages_total", reason=reason) == t.rejected_messages[reason]
        assert value(samples, "ingest_rejected_spans_total", reason=reason) == t.rejected_spans[reason]
    assert total(samples, "ingest_rejected_messages_total") == sum(t.rejected_messages.values())
    assert value(samples, "client_dropped_spans_total", reason="queue_full") == t.client["dropped_queue_full"]
    assert value(samples, "client_dropped_spans_total", reason="unconfirmed") == t.client["unconfirmed_records"]
    assert value(samples, "client_reported_total", counter="sent_records") == t.client["sent_records"]
    assert value(samples, "wal_appended_records_total") == t.records
    assert value(samples, "wal_appended_spans_total") == t.spans


def wal_file_bytes(wal_dir: Path) -> int:
    return sum(p.stat().st_size for p in wal_dir.glob("*.seg"))


def test_scrape_matches_the_traffic_sent_to_ingest(tmp_path: Path, sock_dir: str, metrics: AgentMetrics) -> None:
    wal_dir = tmp_path / "wal"
    ingest = InProcessIngest(wal_dir, os.path.join(sock_dir, "agent.sock"))
    started = time.time()
    try:
        t = send_known_traffic(ingest.server.options.socket_path)
        # maintain() refreshes the backlog about once a second.
        wait_until(lambda: ingest.writer.unshipped_bytes > 0, 5, message="the backlog to be measured")
        metrics.observe("ingest", os.getpid(), collect_ingest(ingest.server))
        server = metrics.serve("127.0.0.1:0")
        assert server is not None
        samples = scrape(server.port)
        check_ingest_counters(samples, t)
        appended = ingest.writer.stats.appended_bytes
        assert value(samples, "wal_appended_bytes_total") == appended
        assert value(samples, "wal_bytes") == wal_file_bytes(wal_dir) == appended + SEGMENT_HEADER_SIZE
        assert value(samples, "wal_segments") == 1
        assert value(samples, "wal_accepting") == 1
        # Nothing consumes this WAL: every record is unshipped, and its age is bounded by the test's time.
        assert value(samples, "wal_unshipped_records") == t.records
        assert value(samples, "wal_unshipped_bytes") == appended
        age = value(samples, "wal_oldest_unshipped_age_seconds")
        assert 0 < age <= time.time() - started + 1.0
        fsyncs = ingest.writer.stats.fsyncs
        assert fsyncs >= 1
        assert value(samples, "wal_fsync_duration_seconds_count") == fsyncs
        assert value(samples, "wal_fsync_duration_seconds_bucket", le="+Inf") == fsyncs
        assert value(samples, "wal_fsync_duration_seconds_sum") == pytest.approx(ingest.writer.stats.fsync_seconds)
        assert value(samples, "agent_info", agent_id=ingest.writer.agent_id) == 1
        assert value(samples, "child_up", child="ingest") == 1
        assert metrics.summary()["records_received"] == t.records
    finally:
        ingest.stop()


def test_counters_add_up_across_a_simulated_ingest_restart(
    tmp_path: Path, sock_dir: str, metrics: AgentMetrics
) -> None:
    wal_dir, sock = tmp_path / "wal", os.path.join(sock_dir, "agent.sock")
    ingest = InProcessIngest(wal_dir, sock)
    try:
        first = send_known_traffic(sock, valid=10)
        metrics.observe("ingest", 1001, collect_ingest(ingest.server))
    finally:
        ingest.stop()
    metrics.child_restarted("ingest")
    ingest = InProcessIngest(wal_dir, sock)  # a new process starts from zero on the same WAL
    try:
        # The same client instance re-reports its cumulative counters (they did not change).
        second = send_known_traffic(sock, valid=7, first_span=1000)
        metrics.observe("ingest", 1002, collect_ingest(ingest.server))
        server = metrics.serve("127.0.0.1:0")
        assert server is not None
        samples = scrape(server.port)
    finally:
        ingest.stop()
    assert value(samples, "ingest_records_received_total") == first.records + second.records
    assert value(samples, "ingest_messages_received_total") == first.messages + second.messages
    assert value(samples, "ingest_rejected_messages_total", reason="bad_magic") == 2
    assert value(samples, "client_dropped_spans_total", reason="queue_full") == 7  # re-reported, not added
    assert value(samples, "child_restarts_total", child="ingest") == 1
    assert value(samples, "wal_unshipped_records") == first.records + second.records


def test_backlog_shrinks_as_the_consumer_commits_and_stays_an_upper_bound(tmp_path: Path) -> None:
    """unshipped bytes/age: exact at mark boundaries, never below the truth, over by at most a mark interval."""
    writer = WalWriter(str(tmp_path / "wal"), WalOptions(min_free_bytes=0, segment_bytes=4 * 1024 * 1024)).open()
    try:
        payload = b"{}\n" + b"x" * 20_000 + b"\n"
        sizes: list[int] = []
        for _ in range(3):  # three flushes a second apart: three marks
            for _ in range(30):
                writer.append(payload, 1)
                sizes.append(RECORD_HEADER_SIZE + len(payload))
            writer.flush()
            time.sleep(1.05)
        writer.maintain()
        assert writer.unshipped_bytes == sum(sizes)
        written_at = writer.oldest_unshipped_time
        assert written_at is not None and 3.0 <= time.time() - written_at <= 4.5
        reader = WalReader(writer.dir)
        for consumed in (30, 45, 90):  # a mark boundary, between marks, everything
            got = reader.read(max_records=consumed - reader.position)
            reader.commit(got[-1].seq)
            writer.maintain()
            truth = sum(sizes[consumed:])
            assert truth <= writer.unshipped_bytes <= truth + 30 * sizes[0]
            if consumed == 30:
                assert writer.unshipped_bytes == truth
        assert writer.unshipped_bytes == 0 and writer.oldest_unshipped_time is None
        reader.close()
    finally:
        writer.close()


def test_backlog_of_records_from_before_a_restart_is_bounded_by_their_segment(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    writer = WalWriter(str(wal), WalOptions(min_free_bytes=0)).open()
    created = time.time()
    for _ in range(5):
        writer.append(b"{}\n{}\n", 1)
    writer.close()
    time.sleep(0.3)
    writer = WalWriter(str(wal), WalOptions(min_free_bytes=0)).open()
    try:
        writer.maintain()
        assert writer.unshipped_bytes == 5 * (RECORD_HEADER_SIZE + 6)
        assert writer.oldest_unshipped_time == pytest.approx(created, abs=0.1)
    finally:
        writer.close()
