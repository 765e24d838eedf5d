"""Model-based property test of the WAL (hypothesis stateful).

The model is a dict seq -> payload of every record the log must still hold, plus the cursor.
Rules append, flush, sync, read+commit, maintain (retention) and crash. A crash drops the writer's
user-space buffer and cuts the active segment at an arbitrary byte at or after the last fsynced
record, then reopens writer and reader. Invariants: every fsynced record survives every crash, the
surviving unsynced records are exactly a prefix, (seq, segment salt) never repeats, and a reader
from the cursor sees exactly the model's records, in order, byte for byte.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from automagik_telemetry_agent.wal import WalOptions, WalReader, WalWriter
from automagik_telemetry_agent.wal.format import RECORD_HEADER_SIZE, SEGMENT_HEADER_SIZE, parse_segment_name
from automagik_telemetry_agent.wal.inspect import verify
from automagik_telemetry_agent.wal.segment import Record, SegmentScanner, Tail

OPTIONS = WalOptions(segment_bytes=64 * 1024, max_bytes=0, min_free_bytes=0, write_buffer_bytes=4096)


def _active_segment(wal_dir: str) -> str:
    names = sorted(n for n in os.listdir(wal_dir) if parse_segment_name(n) is not None)
    return os.path.join(wal_dir, names[-1])


def _end_of_seq(path: str, seq: int) -> int:
    """File offset just after record ``seq`` in this segment (header size if it is not there)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        scanner = SegmentScanner.open(fd)
        end = SEGMENT_HEADER_SIZE
        while (item := scanner.next()) is not None and not isinstance(item, Tail):
            if isinstance(item, Record) and item.seq <= seq:
                end = item.end
            elif isinstance(item, Record):
                break
        return end
    finally:
        os.close(fd)


class WalMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="walmodel-")
        self.writer = WalWriter(self.dir, OPTIONS).open()
        self.reader = WalReader(self.dir)
        self.model: dict[int, bytes] = {}
        self.cursor = 0
        self.read_upto = 0
        self.seen_seqs: set[tuple[int, int]] = set()
        self.crashes = 0

    def teardown(self) -> None:
        self.reader.close()
        self.writer.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(
        payload=st.one_of(st.binary(max_size=200), st.binary(min_size=3000, max_size=12000)), count=st.integers(0, 50)
    )
    def append(self, payload: bytes, count: int) -> None:
        seq = self.writer.append(payload, count)
        identity = (seq, self.writer.active_salt)
        # A seq lost in a crash may come back, but never in the same segment: (seq, salt) is a
        # record's identity (batch dedup tokens derive from it), and it is never reused.
        assert identity not in self.seen_seqs, f"record identity {identity} reused"
        assert seq > self.cursor
        self.seen_seqs.add(identity)
        self.model[seq] = payload

    @rule()
    def flush(self) -> None:
        self.writer.flush()

    @rule()
    def sync(self) -> None:
        self.writer.flush()
        self.writer.sync()
        assert self.writer.durable_seq == self.writer.next_seq - 1

    @rule()
    def background_sync(self) -> None:
        """What the group-commit thread does: sync whatever reached the OS, without flushing."""
        self.writer.sync()

    @rule(n=st.integers(1, 20), commit=st.booleans())
    def read(self, n: int, commit: bool) -> None:
        entries = self.reader.read(max_records=n)
        for entry in entries:
            assert entry.seq == min(s for s in self.model if s > self.read_upto), "reader skipped a record"
            assert entry.payload == self.model[entry.seq]
            self.read_upto = entry.seq
        if commit and entries:
            self.reader.commit(entries[-1].seq)
            for seq in [s for s in self.model if s <= entries[-1].seq]:
                del self.model[seq]
            self.cursor = entries[-1].seq

    @rule()
    def maintain(self) -> None:
        self.writer.maintain()
        assert self.writer.segment_count() >= 1

    @precondition(lambda self: self.crashes < 6)
    @rule(cut=st.floats(0.0, 1.0))
    def crash(self, cut: float) -> None:
        """Power loss: the buffer is gone and the unsynced tail is cut at an arbitrary byte."""
        self.crashes += 1
        durable = self.writer.durable_seq
        active = _active_segment(self.dir)
        self.writer.abandon()
        self.reader.close()
        size = os.path.getsize(active)
        keep_from = _end_of_seq(active, durable)
        cut_at = keep_from + int((size - keep_from) * cut)
        os.truncate(active, cut_at)
        survivors = _end_of_seq(active, 1 << 62)  # end of the last complete record below the cut
        last_surviving = durable
        fd = os.open(active, os.O_RDONLY)
        try:
            scanner = SegmentScanner.open(fd)
            while (item := scanner.next()) is not None and not isinstance(item, Tail):
                if isinstance(item, Record) and item.end <= survivors:
                    last_surviving = max(last_surviving, item.seq)
        finally:
            os.close(fd)
        for seq in [s for s in self.model if s > last_surviving]:
            del self.model[seq]
        self.writer = WalWriter(self.dir, OPTIONS).open()
        self.reader = WalReader(self.dir)
        self.read_upto = self.cursor
        assert self.writer.next_seq > max(last_surviving, self.cursor)
        report = verify(self.dir)
        assert report.clean and report.torn_tail_bytes == 0, report

    @invariant()
    def durable_records_never_exceed_written(self) -> None:
        assert self.writer.durable_seq <= self.writer.written_seq < self.writer.next_seq

    def check_full_read(self) -> None:
        reader = WalReader(self.dir)
        try:
            got = []
            while batch := reader.read(max_records=500):
                got.extend(batch)
        finally:
            reader.close()
        expected = [(s, self.model[s]) for s in sorted(self.model) if s <= self.writer.written_seq]
        assert [(e.seq, e.payload) for e in got] == expected
        assert reader.stats.corrupt_records_skipped == 0 and reader.stats.gap_records == 0
        report = verify(self.dir)
        assert report.clean, report
        assert report.unconsumed_records == len(expected)

    @rule()
    def full_read_matches_model(self) -> None:
        self.writer.flush()
        self.check_full_read()


WalMachine.TestCase.settings = settings(
    max_examples=80,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
test_wal_agrees_with_model_across_crashes = WalMachine.TestCase


def test_crash_cut_inside_record_header_keeps_everything_fsynced(tmp_path) -> None:
    """A hand-picked case: the cut lands inside the header of the first unsynced record."""
    wal = str(tmp_path)
    writer = WalWriter(wal, OPTIONS).open()
    for i in range(5):
        writer.append(bytes([i]) * 100, 1)
    writer.flush()
    writer.sync()
    writer.append(b"unsynced" * 10, 1)
    writer.flush()
    active = _active_segment(wal)
    end = _end_of_seq(active, 5)
    writer.abandon()
    os.truncate(active, end + RECORD_HEADER_SIZE // 2)
    writer = WalWriter(wal, OPTIONS).open()
    assert writer.stats.torn_tail_bytes_truncated == RECORD_HEADER_SIZE // 2
    assert writer.next_seq == 6
    writer.close()
    reader = WalReader(wal)
    assert [e.payload for e in reader.read(100)] == [bytes([i]) * 100 for i in range(5)]
