"""One cursor per signal: a stalled signal stops no other, old WALs read right, damage as before, drops by signal."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from automagik_telemetry_agent.wal import (
    DiskPolicy,
    Signal,
    WalOptions,
    WalReader,
    WalWriter,
    read_cursor,
    write_cursor,
)
from automagik_telemetry_agent.wal.cursor import cursor_path
from automagik_telemetry_agent.wal.floors import read_floors
from automagik_telemetry_agent.wal.format import SEGMENT_HEADER_SIZE, parse_segment_name
from automagik_telemetry_agent.wal.inspect import dump, verify

SPAN, LOG, METRIC = (int(s.kind) for s in Signal)
OPTIONS = WalOptions(segment_bytes=64 * 1024, max_bytes=0, min_free_bytes=0)
PAYLOAD = 2000  # bytes per record: a segment holds about 32


def _segments(wal: str) -> list[tuple[int, int]]:
    """(first seq, size) of every segment file."""
    out = []
    for name in os.listdir(wal):
        first = parse_segment_name(name)
        if first is not None:
            out.append((first, os.path.getsize(os.path.join(wal, name))))
    return sorted(out)


def _append(writer: WalWriter, kinds: list[int]) -> dict[int, int]:
    """Append one record per kind; seq -> kind."""
    out = {}
    for kind in kinds:
        seq = writer.append(writer.next_seq.to_bytes(8, "little") * (PAYLOAD // 8), 1, kind)
        out[seq] = kind
    writer.flush()
    return out


def _drain(reader: WalReader, commit: bool = True) -> list[int]:
    seqs: list[int] = []
    while True:
        batch = reader.read(max_records=100)
        seqs += [e.seq for e in batch]
        if batch and commit:
            reader.commit(batch[-1].seq)
        if reader.at_end and not batch:
            break
    if commit:
        reader.commit_idle()
    return seqs


def _of(records: dict[int, int], kind: int) -> list[int]:
    return sorted(s for s, k in records.items() if k == kind)


def test_each_signal_reads_only_its_own_records_in_order_and_commits_to_its_own_cursor_file(tmp_path) -> None:
    wal = str(tmp_path)
    writer = WalWriter(wal, OPTIONS).open()
    records = _append(writer, [SPAN, LOG, SPAN, METRIC, LOG, SPAN] * 40)
    for signal in Signal:
        reader = WalReader(wal, signal=signal)
        batch = reader.read(max_records=3)
        assert [e.seq for e in batch] == _of(records, signal.kind)[:3]
        assert all(e.kind == signal.kind for e in batch)
        reader.commit(batch[-1].seq)
        assert read_cursor(wal, signal).seq == batch[-1].seq
        assert os.path.basename(cursor_path(wal, signal)) == signal.cursor_file
        rest = _drain(reader)
        assert [e.seq for e in batch] + rest == _of(records, signal.kind)
        assert reader.stats.other_records_skipped == len(records) - len(_of(records, signal.kind))
        assert reader.committed_seq == max(records)  # the idle commit passed the others' trailing records
        reader.close()
    assert Signal.TRACES.cursor_file == "cursor"  # the file WALs had before signals
    writer.maintain()
    assert writer.cursor_seqs() == dict.fromkeys(Signal, max(records))
    writer.close()


def test_a_stalled_signal_does_not_stop_the_others_and_its_records_are_all_still_there_afterwards(tmp_path) -> None:
    """The logs sink is down: its consumer read a batch it cannot deliver and commits nothing. Spans and
    metrics keep being read and committed, retention frees every segment holding no unshipped log, and
    afterwards every log is still there, read once, in order."""
    wal = str(tmp_path)
    writer = WalWriter(wal, OPTIONS).open()
    logs = WalReader(wal, signal=Signal.LOGS)
    others = {s: WalReader(wal, signal=s) for s in (Signal.TRACES, Signal.METRICS)}
    records = _append(writer, [LOG] + [SPAN, METRIC, SPAN] * 20)  # the stuck log is in the first segment
    stuck = logs.read(max_records=10)
    assert [e.seq for e in stuck] == [1]  # in flight, never committed: the logs table is missing
    delivered: dict[Signal, list[int]] = {s: [] for s in others}
    for _ in range(30):  # half a minute of traffic, mostly spans and metrics, a few logs
        records |= _append(writer, [SPAN, METRIC, SPAN, SPAN] * 8 + [LOG] * (_ % 10 == 0))
        for signal, reader in others.items():
            delivered[signal] += _drain(reader)
        writer.maintain()
    for signal in others:
        assert delivered[signal] == _of(records, signal.kind)
        assert writer.cursor_seqs()[signal] == max(records)
    present = {seq for seq, _kind, _payload in dump(wal)}
    assert set(_of(records, LOG)) <= present, "a log was deleted while the logs consumer still needed it"
    assert writer.stats.segments_emptied > 0  # spans-only segments behind the stuck log were freed
    full = [first for first, size in _segments(wal) if size > SEGMENT_HEADER_SIZE]
    assert len(full) <= 1 + len(_of(records, LOG)) + 1, _segments(wal)  # one per unshipped log, at most
    assert writer.oldest_unconsumed_seq() == 1 and writer.cursor_seq == 0
    assert verify(wal).clean

    logs.close()  # the logs consumer restarts (its sink is back) and reads everything it has not committed
    logs = WalReader(wal, signal=Signal.LOGS)
    assert _drain(logs) == _of(records, LOG)
    assert logs.stats.gap_records == 0 and logs.stats.corrupt_records_skipped == 0
    writer.maintain()
    assert writer.segment_count() == 1 and writer.oldest_unconsumed_seq() is None
    assert writer.cursor_seq == max(records)
    writer.close()


def test_with_reject_new_a_stalled_signal_holding_little_does_not_make_the_wal_refuse_the_others(tmp_path) -> None:
    """Over the size cap the WAL would refuse every record: the segments of consumed spans behind one stuck
    log are freed, so it never gets there."""
    wal = str(tmp_path)
    options = WalOptions(segment_bytes=64 * 1024, max_bytes=256 * 1024, min_free_bytes=0)
    options.disk_policy = DiskPolicy.REJECT_NEW
    writer = WalWriter(wal, options).open()
    traces = WalReader(wal)
    _append(writer, [LOG])  # never consumed
    for _ in range(60):  # 60 x 32 spans = 30 segments, ten times the cap
        _append(writer, [SPAN] * 32)
        _drain(traces)
        writer.maintain()
        assert writer.accepting, f"refusing at {writer.total_bytes()} bytes: {_segments(wal)}"
    assert writer.stats.dropped_records == {}
    assert [e.seq for e in WalReader(wal, signal=Signal.LOGS).read()] == [1]
    writer.close()


def test_an_old_wal_with_only_the_traces_cursor_is_read_right_by_every_signal_and_retention_waits_for_none(
    tmp_path,
) -> None:
    """A WAL an agent older than signals wrote: spans only, the one ``cursor``, no floors, and its retention
    deleted the segments that cursor passed. Every signal reads it right, and no missing cursor file
    holds retention back, though the logs and metrics consumers never ran."""
    wal = str(tmp_path)
    writer = WalWriter(wal, OPTIONS).open()
    _append(writer, [SPAN] * 200)
    writer.close()
    write_cursor(wal, 100)  # what the old shipper committed
    for name in os.listdir(wal):  # what the old agent had, and had not
        if name.startswith("floors") or (name.endswith(".seg") and parse_segment_name(name) == 1):
            os.unlink(os.path.join(wal, name))  # ... and its retention deleted the first segment (seq <= 100)
    assert {n for n in os.listdir(wal) if n.startswith("cursor")} == {"cursor", "cursor.spare"}

    traces = WalReader(wal)
    assert _drain(traces, commit=False) == list(range(101, 201))
    for signal in (Signal.LOGS, Signal.METRICS):
        reader = WalReader(wal, signal=signal)
        assert not reader.cursor_damaged and reader.committed_seq == 0
        assert _drain(reader, commit=False) == []
        assert reader.stats.gap_records == 0, f"{signal}: the old agent's deletions counted as lost records"
        assert reader.position == 200
        reader.close()
    report = verify(wal)
    assert report.clean and report.cursors == {"traces": 100, "logs": 0, "metrics": 0}
    assert report.unconsumed_by_signal == {"traces": 100, "logs": 0, "metrics": 0}
    assert report.cursor_seq == 100

    writer = WalWriter(wal, OPTIONS).open()  # the new agent: stores the floors the old WAL implies
    assert read_floors(wal) == {Signal.TRACES: 0, Signal.LOGS: 100, Signal.METRICS: 100}
    assert writer.next_seq == 201
    traces.commit(200)
    assert _drain(traces) == []  # and moves on to the new agent's segment
    writer.maintain()  # logs and metrics never ran: their missing cursors hold nothing back
    assert writer.segment_count() == 1, _segments(wal)
    assert writer.oldest_unconsumed_seq() is None and writer.unshipped_bytes == 0
    writer.close()


def test_segments_found_at_start_are_scanned_for_their_kinds_when_that_decides_their_deletion(tmp_path) -> None:
    wal = str(tmp_path)
    writer = WalWriter(wal, OPTIONS).open()
    records = _append(writer, [SPAN, METRIC] * 100 + [LOG])
    writer.close()
    writer = WalWriter(wal, OPTIONS).open()  # the kinds of the older segments are not known now
    for signal in (Signal.TRACES, Signal.METRICS):
        assert _drain(WalReader(wal, signal=signal)) == _of(records, signal.kind)
    writer.maintain()  # the logs cursor is 0, but only the last segment holds a log
    oldest = _segments(wal)[0][0]
    assert 1 < oldest <= 201, _segments(wal)  # every segment before the log's went
    assert {seq for seq, _k, _p in dump(wal)} == set(range(oldest, 202))
    assert [e.seq for e in WalReader(wal, signal=Signal.LOGS).read()] == [201]
    writer.close()


@pytest.mark.parametrize("signal", list(Signal))
@pytest.mark.parametrize("damage", ["flipped byte", "torn (short)", "too long"])
def test_a_damaged_cursor_of_any_signal_restarts_it_from_the_oldest_record_instead_of_skipping(
    tmp_path, signal, damage
) -> None:
    wal = str(tmp_path)
    writer = WalWriter(wal, OPTIONS).open()
    records = _append(writer, [SPAN, LOG, METRIC] * 4)
    write_cursor(wal, 9, signal)
    write_cursor(wal, 10, signal)  # the spare now holds 9
    path = cursor_path(wal, signal)
    with open(path, "r+b") as f:
        if damage == "flipped byte":
            f.seek(10)
            f.write(b"\xff")
        elif damage == "torn (short)":
            f.truncate(12)
        else:
            f.seek(0, os.SEEK_END)
            f.write(b"\0" * 8)
    state = read_cursor(wal, signal)
    assert state.damaged and state.seq == 0
    reader = WalReader(wal, signal=signal)
    assert reader.cursor_damaged
    assert [e.seq for e in reader.read(100)] == _of(records, signal.kind)
    assert reader.stats.gap_records == 0
    others = [s for s in Signal if s is not signal]
    for other in others:  # the other signals' cursors are untouched
        assert not read_cursor(wal, other).damaged
    report = verify(wal)
    assert report.cursor_damaged and report.damaged_cursors == [str(signal)] and not report.clean
    for other in others:
        write_cursor(wal, max(records), other)
    writer.maintain()
    assert writer.oldest_unconsumed_seq() == _of(records, signal.kind)[0]  # taken as 0: nothing is deleted
    reader.commit(_of(records, signal.kind)[-1])  # a commit repairs it
    assert read_cursor(wal, signal) == read_cursor(wal, signal).__class__(_of(records, signal.kind)[-1])
    writer.close()


def test_commit_idle_moves_the_cursor_over_other_signals_records_but_never_past_a_batch_in_flight(tmp_path) -> None:
    wal = str(tmp_path)
    writer = WalWriter(wal, OPTIONS).open()
    _append(writer, [SPAN] * 5 + [LOG] + [SPAN] * 5)
    logs = WalReader(wal, signal=Signal.LOGS)
    assert logs.commit_idle() == 0  # nothing read yet
    batch = logs.read()
    assert [e.seq for e in batch] == [6] and logs.position == 11 and logs.in_flight
    assert logs.commit_idle() == 0, "the idle commit passed a log in flight"
    logs.commit(6)
    assert not logs.in_flight and read_cursor(wal, Signal.LOGS).seq == 6
    assert logs.commit_idle() == 11 and read_cursor(wal, Signal.LOGS).seq == 11
    with pytest.raises(ValueError):
        logs.commit(12)
    logs.rewind()
    assert logs.read() == [] and logs.position == 11
    writer.close()


def test_read_up_to_stops_at_that_seq_and_the_next_read_goes_on_from_there(tmp_path) -> None:
    wal = str(tmp_path)
    writer = WalWriter(wal, OPTIONS).open()
    records = _append(writer, [SPAN, LOG] * 10)
    reader = WalReader(wal)
    assert [e.seq for e in reader.read(100, up_to=8)] == [1, 3, 5, 7] and reader.position == 8
    assert not reader.at_end
    assert [e.seq for e in reader.read(100)] == [s for s in _of(records, SPAN) if s > 8]
    writer.close()


def test_read_stops_after_max_skipped_records_of_other_signals_and_says_it_is_not_at_the_end(tmp_path) -> None:
    wal = str(tmp_path)
    writer = WalWriter(wal, OPTIONS).open()
    _append(writer, [SPAN] * 50 + [LOG])
    logs = WalReader(wal, signal=Signal.LOGS)
    assert logs.read(max_skipped=20) == [] and logs.position == 20 and not logs.at_end
    assert [e.seq for e in logs.read(max_skipped=20)] == []
    assert [e.seq for e in logs.read(max_skipped=20)] == [51]
    assert logs.read() == [] and logs.at_end
    writer.close()


def test_a_damaged_payload_is_counted_by_its_own_signals_reader_and_passed_over_by_the_others(tmp_path) -> None:
    wal = str(tmp_path)
    writer = WalWriter(wal, OPTIONS).open()
    records = _append(writer, [SPAN, LOG, SPAN, LOG, SPAN])
    writer.close()
    segment = os.path.join(wal, "00000000000000000001.seg")
    with open(segment, "r+b") as f:  # the payload of record 2, a log
        f.seek(SEGMENT_HEADER_SIZE + (32 + PAYLOAD) + 32 + 100)
        f.write(b"\xff\xff")
    logs, traces = WalReader(wal, signal=Signal.LOGS), WalReader(wal)
    assert [e.seq for e in logs.read()] == [4] and logs.stats.corrupt_records_skipped == 1
    assert [e.seq for e in traces.read()] == _of(records, SPAN) and traces.stats.corrupt_records_skipped == 0


def test_drop_oldest_counts_dropped_records_exactly_by_signal_and_in_the_ledger(tmp_path) -> None:
    wal = str(tmp_path)
    options = WalOptions(segment_bytes=64 * 1024, max_bytes=256 * 1024, min_free_bytes=0)
    writer = WalWriter(wal, options).open()
    records = _append(writer, [SPAN, LOG, METRIC, SPAN] * 50)  # about 400 KiB: over the cap
    traces = WalReader(wal)
    _drain(traces)  # spans shipped: only logs and metrics are unshipped
    traces.close()
    writer.maintain()
    gone = sorted(set(records) - {seq for seq, _k, _p in dump(wal)})
    assert gone and writer.total_bytes() <= 256 * 1024
    lost = {signal: [s for s in gone if records[s] == signal.kind] for signal in Signal}
    assert writer.stats.dropped_records == {"wal_size_cap": len(lost[Signal.LOGS]) + len(lost[Signal.METRICS])}
    assert writer.stats.dropped_records_by_signal == {
        "logs": len(lost[Signal.LOGS]),
        "metrics": len(lost[Signal.METRICS]),
    }
    with open(os.path.join(wal, "drops.log")) as f:
        ledger = [dict(p.split("=", 1) for p in line.split()[1:]) for line in f]
    assert sum(int(e["records_logs"]) for e in ledger) == len(lost[Signal.LOGS])
    assert sum(int(e["records_traces"]) for e in ledger) == 0
    assert {int(e["segment_first_seq"]) for e in ledger} <= set(gone)
    report = verify(wal)
    assert report.missing_records == 0 and report.clean, report
    logs = WalReader(wal, signal=Signal.LOGS)
    assert _drain(logs) == [s for s in _of(records, LOG) if s not in gone]
    writer.close()


def test_the_writer_never_hands_out_a_seq_at_or_below_any_signals_cursor(tmp_path) -> None:
    """A logs consumer passed records (of other kinds) that a power loss then erased: their numbers are never
    given to new records, which that consumer would otherwise skip."""
    wal = str(tmp_path)
    writer = WalWriter(wal, OPTIONS).open()
    _append(writer, [SPAN] * 5)
    writer.close()
    write_cursor(wal, 9, Signal.LOGS)
    writer = WalWriter(wal, OPTIONS).open()
    assert writer.next_seq == 10
    assert writer.append(b"log", 1, LOG) == 10
    writer.flush()
    assert [e.seq for e in WalReader(wal, signal=Signal.LOGS).read()] == [10]
    writer.close()


def test_an_emptied_segment_survives_a_restart_and_readers_pass_it_without_counting_a_gap(tmp_path) -> None:
    """Retention cut a segment to its header behind a stuck one; the agent restarts with it the newest
    one left (the segment after it was empty): it is kept, and its numbers are not handed out again."""
    wal = str(tmp_path)
    writer = WalWriter(wal, OPTIONS).open()
    records = _append(writer, [SPAN] * 40)  # segment 1..32, then 33..
    writer.close()  # 33..40 sealed by the restart
    writer = WalWriter(wal, OPTIONS).open()
    records |= _append(writer, [LOG] * 3)
    writer.close()
    writer = WalWriter(wal, OPTIONS).open()  # an empty active segment
    logs = WalReader(wal, signal=Signal.LOGS)
    assert _drain(logs) == [41, 42, 43]
    writer.maintain()  # spans unshipped: segments 1 and 33 needed; 41 emptied
    assert (41, SEGMENT_HEADER_SIZE) in _segments(wal)
    writer.abandon()
    writer = WalWriter(wal, OPTIONS).open()  # the empty active goes; the emptied one stays
    assert (41, SEGMENT_HEADER_SIZE) in _segments(wal) and writer.next_seq == 44
    records |= _append(writer, [SPAN])
    traces = WalReader(wal)
    assert _drain(traces) == _of(records, SPAN)
    assert traces.stats.gap_records == 0
    report = verify(wal)
    assert report.clean and report.emptied_segments == 1 and report.missing_records == 0, report
    writer.maintain()
    assert writer.segment_count() == 1
    writer.close()


def test_wal_verify_reports_every_signals_cursor(tmp_path) -> None:
    wal = str(tmp_path)
    writer = WalWriter(wal, OPTIONS).open()
    _append(writer, [SPAN, LOG, METRIC, SPAN])
    writer.close()
    write_cursor(wal, 1, Signal.TRACES)
    write_cursor(wal, 3, Signal.METRICS)
    cmd = [sys.executable, "-m", "automagik_telemetry_agent", "wal", "verify", wal, "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["cursors"] == {"traces": 1, "logs": 0, "metrics": 3}
    assert report["unconsumed_by_signal"] == {"traces": 1, "logs": 1, "metrics": 0}
    assert report["unconsumed_records"] == 2 and report["cursor_seq"] == 1 and report["damaged_cursors"] == []


def test_a_segment_dropped_right_after_an_emptied_one_is_still_counted_by_verify(tmp_path) -> None:
    wal = str(tmp_path)
    options = WalOptions(segment_bytes=64 * 1024, max_bytes=256 * 1024, min_free_bytes=0)
    writer = WalWriter(wal, options).open()
    _append(writer, [LOG] * 33)  # the first segment: logs, never shipped
    _append(writer, [SPAN] * 66)
    traces = WalReader(wal)
    _drain(traces)
    traces.close()
    writer.maintain()  # the spans-only segments after the first are emptied (one file)
    assert [size for _first, size in _segments(wal)][:2] == [
        SEGMENT_HEADER_SIZE + 33 * (32 + PAYLOAD),
        SEGMENT_HEADER_SIZE,
    ]
    _append(writer, [METRIC] * 200)  # unshipped metrics over the cap: the oldest full segments go
    writer.maintain()
    dropped = writer.stats.dropped_records["wal_size_cap"]
    assert writer.stats.dropped_records_by_signal["logs"] == 33 and writer.stats.dropped_records_by_signal["metrics"]
    first_left = _segments(wal)[0][0]
    assert first_left == 34  # the emptied one stayed; the metrics segments after it were dropped
    report = verify(wal)
    assert report.clean and report.missing_records == 0, report
    assert report.dropped_by_policy_records == dropped - 33, report  # the logs went before the oldest left
    writer.close()
