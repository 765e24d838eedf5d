"""Unit tests of the shipper's pieces without a server: tokens, pacing, bisection, dead letters."""

from __future__ import annotations

import random
import re
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from automagik_telemetry_agent.clickhouse.errors import ErrorClass
from automagik_telemetry_agent.clickhouse.http import ClickHouseHttpSink
from automagik_telemetry_agent.clickhouse.rows import Profile
from automagik_telemetry_agent.clickhouse.sink import InsertResult
from automagik_telemetry_agent.paths import default_dead_letter_dir
from automagik_telemetry_agent.shipper.batch import batch_token
from automagik_telemetry_agent.shipper.dead_letter import DeadLetter, DeadLetterEntry
from automagik_telemetry_agent.shipper.loop import Shipper
from automagik_telemetry_agent.shipper.pacing import TokenBucket, backoff_delay
from automagik_telemetry_agent.wal import read_cursor

from .shipper_helpers import ShipperThread, fast_options, span, wait_for, write_wal


def test_batch_token_is_stable_and_order_free() -> None:
    assert batch_token("a", 3, 9, [2, 1, 1]) == batch_token("a", 3, 9, (1, 2))
    assert batch_token("a", 3, 9, [1]) != batch_token("a", 3, 9, [2])
    assert re.fullmatch(r"a:3-9:[0-9a-f]{8}", batch_token("a", 3, 9, [5]))


def test_backoff_full_jitter_capped() -> None:
    rand = random.Random(1)
    for attempt in range(80):
        d = backoff_delay(attempt, 1.0, 60.0, rand)
        assert 0 <= d <= min(60.0, 2.0**attempt)


def test_token_bucket() -> None:
    now = [0.0]
    bucket = TokenBucket(1000, clock=lambda: now[0])
    assert bucket.take(1000) == 0  # one second of burst
    assert bucket.take(500) == pytest.approx(0.5)
    now[0] += 0.5
    assert bucket.take(0) == 0
    assert TokenBucket(0).take(10**9) == 0


def test_dead_letter_file(tmp_path: Path) -> None:
    assert default_dead_letter_dir(str(tmp_path / "wal")) == str(tmp_path / "dead-letter")
    dl = DeadLetter(str(tmp_path / "dl"))
    dl.write(
        [
            DeadLetterEntry("transform", "invalid JSON", 3, raw=b"{nope"),
            DeadLetterEntry("rejected", "Code: 27, ...", 4, row=b'{"a":1}\n', error_code=27),
        ]
    )
    dl.write([])
    entries = dl.read()
    assert dl.count == 2
    assert entries[0]["raw"] == "{nope" and entries[0]["wal_seq"] == 3 and entries[0]["error_code"] is None
    assert entries[1]["row"] == {"a": 1} and entries[1]["error_code"] == 27
    assert entries[0]["time"].endswith("Z")


class FakeSink(ClickHouseHttpSink):
    """Refuses any body containing a marker (BAD_DATA), fails the first ``transient`` calls."""

    def __init__(self, transient: int = 0, connection_errors: int = 0) -> None:
        super().__init__("http://127.0.0.1:1", "db", "t")
        self.transient = transient
        self.connection_errors = connection_errors
        self.detections = 0
        self.sent: list[tuple[bytes, str | None]] = []
        self.stored: list[dict[str, Any]] = []

    def detect(self) -> Any:
        self.detections += 1
        self.profile = Profile.LEGACY
        return None

    def insert(self, body: bytes, token: str | None = None) -> InsertResult:
        self.sent.append((body, token))
        if self.connection_errors:
            self.connection_errors -= 1
            return InsertResult(False, ErrorClass.TRANSIENT, None, "connection refused", None)
        if self.transient:
            self.transient -= 1
            return InsertResult(False, ErrorClass.TRANSIENT, 209, "Code: 209. timeout", 503)
        if b"BAD" in body:
            return InsertResult(False, ErrorClass.BAD_DATA, 27, "Code: 27, cannot parse", 500)
        self.stored += [orjson.loads(line) for line in body.splitlines()]
        return InsertResult(True, ErrorClass.OK, None, "", 200, len(body), len(body))


def test_transient_retries_resend_identical_bytes_and_token(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    seqs = write_wal(wal, [[span(i) for i in range(30)]])
    sink = FakeSink(transient=3)
    shipper = Shipper(str(wal), sink, fast_options(tmp_path, backoff_base_s=0.01, backoff_cap_s=0.02))
    with ShipperThread(shipper) as t:
        wait_for(lambda: read_cursor(str(wal)).seq == seqs[-1], 10, "committed")
        t.stop()
    assert len(sink.sent) == 4 and len(set(sink.sent)) == 1  # same bytes, same token, every time
    assert shipper.stats.retries_transient == 3 and len(sink.stored) == 30


def test_server_is_detected_again_after_a_broken_connection_but_not_after_an_http_error(tmp_path: Path) -> None:
    """A server restarted (maybe upgraded) behind an outage gets its version and table checked again."""
    wal = tmp_path / "wal"
    seqs = write_wal(wal, [[span(i) for i in range(10)]])
    sink = FakeSink(transient=2, connection_errors=2)
    shipper = Shipper(str(wal), sink, fast_options(tmp_path, backoff_base_s=0.01, backoff_cap_s=0.02))
    with ShipperThread(shipper) as t:
        wait_for(lambda: read_cursor(str(wal)).seq == seqs[-1], 10, "committed")
        t.stop()
    assert sink.detections == 1 + 2  # at start, then once after each broken connection (not after the 503s)
    assert len(set(sink.sent)) == 1 and len(sink.stored) == 10


def test_bisection_isolates_bad_rows_with_derived_tokens(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    bad = {3, 4, 50, 99}
    seqs = write_wal(wal, [[span(i, name="BAD" if i in bad else f"n{i}") for i in range(100)]])
    sink = FakeSink()
    shipper = Shipper(str(wal), sink, fast_options(tmp_path))
    with ShipperThread(shipper) as t:
        wait_for(lambda: read_cursor(str(wal)).seq == seqs[-1], 10, "committed")
        t.stop()
    assert sorted(int(r["attribute_values"][0]) for r in sink.stored) == [i for i in range(100) if i not in bad]
    dead = DeadLetter(str(tmp_path / "dead-letter")).read()
    assert sorted(e["row"]["span_name"] for e in dead) == ["BAD"] * 4
    top = sink.sent[0][1]
    assert top is not None
    tokens = [tok for _, tok in sink.sent[1:]]
    assert all(
        tok is not None and tok.startswith(top + ":") and set(tok[len(top) + 1 :]) <= {"0", "1"} for tok in tokens
    )
    assert len(set(tokens)) == len(tokens)  # every sub-batch has its own token
    assert len(sink.sent) < 60  # O(bad * log n), not one request per row


class GatedSink(FakeSink):
    """Holds every INSERT until the test opens the gate once for it; records what was in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Semaphore(0)
        self.waiting = threading.Event()
        self.started = 0
        self.concurrent = 0
        self.max_concurrent = 0

    def insert(self, body: bytes, token: str | None = None) -> InsertResult:
        self.started += 1
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        self.waiting.set()
        self.gate.acquire()
        self.waiting.clear()
        try:
            return super().insert(body, token)
        finally:
            self.concurrent -= 1


def _inflight(tmp_path: Path) -> dict[str, Any]:
    return orjson.loads((tmp_path / "shipper" / "inflight.json").read_bytes())


def test_pipelined_batches_are_sent_one_at_a_time_and_committed_in_wal_order(tmp_path: Path) -> None:
    """The next batch is frozen while one is in flight, but it is recorded in flight and sent only after
    the previous one is committed: the cursor and inflight.json always describe one batch at a time."""
    wal = tmp_path / "wal"
    seqs = write_wal(wal, [[span(r * 10 + i) for i in range(10)] for r in range(6)])
    sink = GatedSink()
    shipper = Shipper(str(wal), sink, fast_options(tmp_path, batch_rows=20))
    with ShipperThread(shipper) as t:
        for n in range(3):  # batches of two records each
            wait_for(sink.waiting.is_set, 10, f"INSERT {n + 1} in flight")
            first, last = seqs[2 * n], seqs[2 * n + 1]
            assert read_cursor(str(wal)).seq == (seqs[2 * n - 1] if n else 0), "committed before the answer"
            assert (_inflight(tmp_path)["first"], _inflight(tmp_path)["last"]) == (first, last)
            assert sink.started == n + 1, "a batch was sent before the previous one was committed"
            sink.gate.release()
            wait_for(lambda last=last: read_cursor(str(wal)).seq == last, 10, f"batch {n + 1} committed")
        t.stop()
    assert sink.max_concurrent == 1
    assert [orjson.loads(line)["span_id"] for body, _ in sink.sent for line in body.splitlines()] == [
        f"{i + 1:016x}" for i in range(60)
    ]


def test_a_stop_while_the_next_batch_is_frozen_commits_the_one_in_flight_and_sends_no_more(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    seqs = write_wal(wal, [[span(r * 10 + i) for i in range(10)] for r in range(4)])
    sink = GatedSink()
    shipper = Shipper(str(wal), sink, fast_options(tmp_path, batch_rows=20))
    with ShipperThread(shipper) as t:
        wait_for(sink.waiting.is_set, 10, "the first INSERT in flight")
        time.sleep(0.2)  # the second batch is collected and frozen meanwhile
        shipper.request_stop()
        sink.gate.release()
        t.thread.join(10)
    assert read_cursor(str(wal)).seq == seqs[1]
    assert sink.started == 1 and len(sink.stored) == 20
    assert _inflight(tmp_path)["last"] == seqs[1]  # the unsent batch was never recorded as in flight


def test_a_partial_batch_goes_at_once_after_a_quiet_spell_then_at_most_one_per_batch_wait(tmp_path: Path) -> None:
    """Latency without an insert storm: the first spans after a quiet spell are sent as soon as the WAL runs
    dry; a small batch right behind them waits until batch_wait after the previous INSERT began."""
    wal = tmp_path / "wal"
    first = write_wal(wal, [[span(0)]])
    sink = FakeSink()
    shipper = Shipper(str(wal), sink, fast_options(tmp_path, batch_wait_s=3.0, batch_rows=1000))
    with ShipperThread(shipper) as t:
        began = time.monotonic()
        wait_for(lambda: read_cursor(str(wal)).seq == first[-1], 10, "the first span committed")
        assert time.monotonic() - began < 2.0, "a lone span after a quiet spell waited out batch_wait"
        sent_at = time.monotonic()
        second = write_wal(wal, [[span(1)]])
        time.sleep(1.0)
        assert read_cursor(str(wal)).seq == first[-1], "a small batch went less than batch_wait after the last"
        wait_for(lambda: read_cursor(str(wal)).seq == second[-1], 10, "the second span committed")
        assert time.monotonic() - sent_at >= 2.5
        big = write_wal(wal, [[span(2 + r * 100 + i) for i in range(100)] for r in range(5)])
        wait_for(lambda: read_cursor(str(wal)).seq == big[-1], 10, "the large batch committed")
        assert time.monotonic() - sent_at < 5.0, "a half-full batch waited for batch_wait"
        t.stop()
    assert [len(body.splitlines()) for body, _ in sink.sent] == [1, 1, 500]


def test_a_legacy_table_on_a_server_with_dedup_tokens_still_gets_the_restart_probe(tmp_path: Path) -> None:
    """A token deduplicates only on a table with a dedup window: a legacy table kept after the server was
    upgraded past 22.2 has none, so a restarted shipper must probe before re-sending its in-flight batch."""
    from automagik_telemetry_agent.clickhouse.sink import Capabilities
    from automagik_telemetry_agent.shipper.batch import freeze_batch
    from automagik_telemetry_agent.wal import WalReader

    class UpgradedServerLegacyTable(FakeSink):
        def detect(self) -> Any:
            super().detect()
            self.capabilities = Capabilities("23.8.1.1", True, True)

        def count_present(self, span_ids: list[str], min_ns: int, max_ns: int) -> int:
            return len(set(span_ids) & {row["span_id"] for row in self.stored})

    wal = tmp_path / "wal"
    seqs = write_wal(wal, [[span(i) for i in range(20)]])
    reader = WalReader(str(wal))
    batch = freeze_batch(reader.read(max_records=10), Profile.LEGACY, (wal / "agent_id").read_text().strip())
    reader.close()
    sink = UpgradedServerLegacyTable()
    sink.stored = [orjson.loads(line) for line in batch.body.splitlines()]  # stored before the crash ...
    shipper = Shipper(str(wal), sink, fast_options(tmp_path))
    shipper.inflight.write(batch)  # ... while the cursor had not moved
    with ShipperThread(shipper) as t:
        wait_for(lambda: read_cursor(str(wal)).seq == seqs[-1], 10, "committed")
        t.stop()
    assert sink.sent == [] and len(sink.stored) == 20
    assert shipper.stats.resumed_batches_skipped == 1
