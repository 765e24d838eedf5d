"""Model-based property test of the WAL's per-signal consumers (hypothesis stateful).

The model is every record written (seq -> kind, payload) and, per signal, its durable cursor, what its
reader has read since it (re)started and what it has committed. Rules append records of the three kinds,
flush, read and commit (a batch, or the idle commit) per signal, stall and resume a signal for long
stretches, rewind, restart a reader, restart the writer (cleanly, or killed with its buffer lost), run
retention, and catch every signal up. Invariants: a reader returns exactly its signal's next records in
order, never one its signal committed past; every record some signal still needs is in the WAL; no
reader ever counts a record missing (nothing is dropped here, so any gap would be a retention bug); and
once every signal caught up, retention leaves only the active segment.
"""

from __future__ import annotations

import shutil
import tempfile

from hypothesis import HealthCheck, settings, target
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from automagik_telemetry_agent.wal import Signal, WalOptions, WalReader, WalWriter
from automagik_telemetry_agent.wal.inspect import dump, verify

OPTIONS = WalOptions(segment_bytes=64 * 1024, max_bytes=0, min_free_bytes=0, write_buffer_bytes=4096)
SIGNALS = st.sampled_from(list(Signal))
MIXED = [1, 1, 2, 1, 3, 1, 1, 2, 1, 1, 1, 3]  # the kinds of a mixed run of records, in turn


class SignalsMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="walsignals-")
        self.writer = WalWriter(self.dir, OPTIONS).open()
        self.readers = {s: WalReader(self.dir, signal=s) for s in Signal}
        self.records: dict[int, tuple[int, bytes]] = {}  # appended (those <= written_seq are in the file)
        self.committed = dict.fromkeys(Signal, 0)
        self.read_upto = dict.fromkeys(Signal, 0)  # last seq the current reader returned
        self.pending: dict[Signal, list[int]] = {s: [] for s in Signal}  # read, not committed
        self.delivered: dict[Signal, list[int]] = {s: [] for s in Signal}  # committed, in order
        self.stalled: set[Signal] = set()
        self.counter = 0
        self.steps = 0  # since the last catch-up: long enough stretches for stalls to matter
        self.emptied = 0

    def teardown(self) -> None:
        # Steer the search toward runs where retention empties segments behind a stalled signal.
        target(float(self.emptied), label="segments emptied behind a stalled signal")
        for reader in self.readers.values():
            reader.close()
        self.writer.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------------ helpers
    def in_file(self) -> dict[int, tuple[int, bytes]]:
        return {s: r for s, r in self.records.items() if s <= self.writer.written_seq}

    def of_signal(self, signal: Signal, after: int) -> list[int]:
        kind = int(signal.kind)
        return sorted(s for s, (k, _) in self.in_file().items() if k == kind and s > after)

    def needed(self) -> set[int]:
        signal_of = {int(s.kind): s for s in Signal}
        return {s for s, (k, _) in self.in_file().items() if s > self.committed[signal_of[k]]}

    def reopen_reader(self, signal: Signal) -> None:
        self.readers[signal].close()
        self.readers[signal] = WalReader(self.dir, signal=signal)
        assert self.readers[signal].committed_seq == self.committed[signal]
        self.read_upto[signal] = self.committed[signal]
        self.pending[signal].clear()  # read again after the restart: never committed

    def do_read(self, signal: Signal, n: int) -> None:
        reader = self.readers[signal]
        entries = reader.read(max_records=n)
        expected = self.of_signal(signal, self.read_upto[signal])
        got = [e.seq for e in entries]
        assert got == expected[: len(got)], f"{signal}: read {got}, expected the next of {expected}"
        assert len(got) == min(n, len(expected)), f"{signal}: stopped early at {got} of {expected}"
        for entry in entries:
            kind, payload = self.records[entry.seq]
            assert (entry.kind, entry.payload) == (kind, payload)
        if entries:
            self.read_upto[signal] = got[-1]
            self.pending[signal] += got
        if len(got) < n:
            assert reader.at_end

    def do_commit(self, signal: Signal) -> None:
        if self.pending[signal]:
            last = self.pending[signal][-1]
            self.readers[signal].commit(last)
            self.delivered[signal] += self.pending[signal]
            self.pending[signal].clear()
            self.committed[signal] = last

    def do_commit_idle(self, signal: Signal) -> None:
        reader = self.readers[signal]
        before = reader.committed_seq
        cursor = reader.commit_idle()
        if self.pending[signal]:
            assert cursor == before, "the idle commit passed a batch in flight"
        else:
            assert cursor == max(before, reader.position)
            self.committed[signal] = cursor

    # ------------------------------------------------------------------ rules
    @rule(
        n=st.integers(1, 25),
        only=st.sampled_from([None, None, 1, 1, 2, 3]),
        size=st.sampled_from([40, 3000, 9000, 20000]),
        flush=st.booleans(),
    )
    def append(self, n: int, only: int | None, size: int, flush: bool) -> None:
        """``n`` records of mixed kinds (mostly spans), or a burst of one kind (segments then hold nothing of
        some signal); sizes vary around ``size`` (a segment holds 3 to 1600 records)."""
        for _ in range(n):
            self.counter += 1
            kind = only if only is not None else MIXED[self.counter % len(MIXED)]
            payload = self.counter.to_bytes(4, "little") * ((size + self.counter % 997) // 4)
            seq = self.writer.append(payload, 1, kind)
            assert seq > max(self.committed.values()), "a seq at or below a signal's cursor was handed out again"
            self.records[seq] = (kind, payload)
        if flush:
            self.writer.flush()

    @rule(signal=SIGNALS, n=st.integers(1, 30), then=st.sampled_from(["nothing", "commit", "idle"]))
    def read(self, signal: Signal, n: int, then: str) -> None:
        if signal in self.stalled:
            return
        self.do_read(signal, n)
        if then == "commit":
            self.do_commit(signal)
        elif then == "idle":
            self.do_commit_idle(signal)

    @rule(signal=SIGNALS)
    def stall_or_resume(self, signal: Signal) -> None:
        """A stalled signal's consumer reads nothing (its sink is down) until it resumes."""
        self.stalled ^= {signal}

    @rule(signal=SIGNALS, restart=st.booleans())
    def rewind_or_restart_reader(self, signal: Signal, restart: bool) -> None:
        """Forget what was read and not committed: by rewind() (a failed delivery), or a new process."""
        if restart:
            self.reopen_reader(signal)
        else:
            self.readers[signal].rewind()
            self.read_upto[signal] = self.committed[signal]
            self.pending[signal].clear()

    @rule()
    def maintain(self) -> None:
        emptied = self.writer.stats.segments_emptied
        self.writer.maintain()
        assert self.writer.segment_count() >= 1
        self.emptied += self.writer.stats.segments_emptied - emptied

    @precondition(lambda self: len(self.records) > 0)
    @rule(killed=st.booleans())
    def restart_writer(self, killed: bool) -> None:
        """A clean stop (everything flushed), or a kill: the user-space buffer is lost, the file is not."""
        if killed:
            self.writer.abandon()
            for seq in [s for s in self.records if s > self.writer.written_seq]:
                del self.records[seq]
        else:
            self.writer.close()
        self.writer = WalWriter(self.dir, OPTIONS).open()
        assert self.writer.next_seq > max(self.committed.values())
        assert self.writer.next_seq > max(self.in_file(), default=0)

    @precondition(lambda self: self.steps >= 40)
    @rule()
    def catch_up(self) -> None:
        """Every signal reads and commits everything: then retention keeps only the active segment."""
        self.writer.flush()
        for signal in Signal:
            while True:
                self.do_read(signal, 50)
                if self.readers[signal].at_end:
                    break
            self.do_commit(signal)
            self.do_commit_idle(signal)
            assert self.delivered[signal] == self.of_signal(signal, 0), f"{signal}: not each record exactly once"
        self.writer.maintain()
        self.steps = 0
        assert self.writer.segment_count() == 1, sorted(self.writer._sealed, key=lambda s: s.first_seq)
        assert self.writer.oldest_unconsumed_seq() is None and self.writer.unshipped_bytes == 0
        report = verify(self.dir)
        assert report.clean and report.unconsumed_records == 0, report

    # ------------------------------------------------------------------ invariants
    @invariant()
    def count_steps(self) -> None:
        self.steps += 1

    @invariant()
    def every_needed_record_is_still_in_the_wal(self) -> None:
        present = {seq: (kind, payload) for seq, kind, payload in dump(self.dir)}
        for seq in self.needed():
            assert present.get(seq) == self.records[seq], f"seq {seq} deleted while its signal still needs it"

    @invariant()
    def no_reader_counts_a_record_missing(self) -> None:
        for signal, reader in self.readers.items():
            assert reader.stats.gap_records == 0, f"{signal} counted a gap: retention deleted a needed record"
            assert reader.stats.corrupt_records_skipped == 0

    @invariant()
    def the_backlog_starts_at_or_before_the_oldest_needed_record(self) -> None:
        oldest = self.writer.oldest_unconsumed_seq()
        needed = self.needed()
        if needed:
            assert oldest is not None and oldest <= min(needed)
        if oldest is None:
            assert not needed

    @invariant()
    def delivered_records_are_in_order_and_of_their_signal(self) -> None:
        for signal, seqs in self.delivered.items():
            assert seqs == sorted(set(seqs)), f"{signal} delivered a record twice or out of order"
            assert all(self.records[s][0] == int(signal.kind) for s in seqs)


SignalsMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
test_each_signal_reads_its_records_once_in_order_and_retention_deletes_only_what_no_signal_needs = (
    SignalsMachine.TestCase
)
