"""Recovery and damage: torn tails, byte flips, bad headers, a cursor ahead of the log, verify's verdicts."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from automagik_telemetry_agent.wal import WalOptions, WalReader, WalWriter, write_cursor
from automagik_telemetry_agent.wal.format import (
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    encode_segment_header,
    new_salt,
    parse_segment_name,
)
from automagik_telemetry_agent.wal.inspect import verify

OPTIONS = WalOptions(segment_bytes=64 * 1024, max_bytes=0, min_free_bytes=0)
PAYLOAD = 1000  # bytes per record in these tests


def _segments(wal: str) -> list[str]:
    return sorted(os.path.join(wal, n) for n in os.listdir(wal) if parse_segment_name(n) is not None)


def _fill(wal: str, n: int, sync: bool = True) -> WalWriter:
    writer = WalWriter(wal, OPTIONS).open()
    for i in range(n):
        writer.append(i.to_bytes(4, "little") * (PAYLOAD // 4), 1)
    writer.flush()
    if sync:
        writer.sync()
    return writer


def _read_all(wal: str) -> tuple[list[int], WalReader]:
    reader = WalReader(wal)
    seqs = []
    while batch := reader.read(500):
        seqs.extend(e.seq for e in batch)
    return seqs, reader


def _flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x5A]))


def _record_offset(index: int) -> int:
    return SEGMENT_HEADER_SIZE + index * (RECORD_HEADER_SIZE + PAYLOAD)


@pytest.mark.parametrize("where", ["header", "payload", "length_field"])
def test_byte_flip_in_the_middle_skips_exactly_one_record_and_keeps_the_rest(tmp_path, where) -> None:
    wal = str(tmp_path)
    _fill(wal, 20).close()
    segment = _segments(wal)[0]
    base = _record_offset(7)
    offset = {"header": base + 9, "payload": base + RECORD_HEADER_SIZE + 500, "length_field": base + 5}[where]
    _flip(segment, offset)

    report = verify(wal)
    assert not report.clean
    assert report.corrupt_records == 1
    assert report.records == 19

    seqs, reader = _read_all(wal)
    assert seqs == [s for s in range(1, 21) if s != 8]
    assert reader.stats.corrupt_records_skipped == 1

    writer = WalWriter(wal, OPTIONS).open()  # the agent starts: no crash loop, nothing deleted
    assert writer.next_seq == 21
    assert writer.stats.corrupt_records_at_open == 1  # counted once at start, nothing truncated
    assert writer.stats.torn_tail_bytes_truncated == 0
    writer.close()


def test_byte_flip_in_newest_segment_is_counted_at_open_and_later_records_survive(tmp_path) -> None:
    wal = str(tmp_path)
    writer = _fill(wal, 10)
    segment = _segments(wal)[-1]
    writer.abandon()
    _flip(segment, _record_offset(3) + RECORD_HEADER_SIZE + 10)
    writer = WalWriter(wal, OPTIONS).open()
    assert writer.stats.corrupt_records_at_open == 1
    assert writer.stats.torn_tail_bytes_truncated == 0  # records after the damage are kept
    writer.close()
    seqs, _ = _read_all(wal)
    assert seqs == [1, 2, 3, 5, 6, 7, 8, 9, 10]


def test_torn_tail_is_truncated_and_verify_is_clean_afterwards(tmp_path) -> None:
    wal = str(tmp_path)
    writer = _fill(wal, 5)
    writer.append(b"x" * 800, 1)
    writer.flush()
    segment = _segments(wal)[-1]
    writer.abandon()
    os.truncate(segment, os.path.getsize(segment) - 300)
    before = verify(wal)
    assert before.torn_tail_bytes == RECORD_HEADER_SIZE + 500
    assert before.clean  # a torn tail is a crash artifact the next start repairs, not corruption
    writer = WalWriter(wal, OPTIONS).open()
    assert writer.stats.torn_tail_bytes_truncated == RECORD_HEADER_SIZE + 500
    writer.close()
    after = verify(wal)
    assert after.torn_tail_bytes == 0 and after.clean and after.records == 5


def test_zero_filled_tail_after_power_loss_is_a_torn_tail(tmp_path) -> None:
    wal = str(tmp_path)
    writer = _fill(wal, 3)
    segment = _segments(wal)[-1]
    writer.abandon()
    with open(segment, "ab") as f:
        f.write(b"\0" * 4096)  # delayed allocation: size grew, data never written
    writer = WalWriter(wal, OPTIONS).open()
    assert writer.stats.torn_tail_bytes_truncated == 4096
    writer.close()
    assert _read_all(wal)[0] == [1, 2, 3]


def test_cursor_ahead_of_the_log_after_power_loss_never_reuses_consumed_seqs(tmp_path) -> None:
    """The consumer shipped and committed records that a power loss then erased from the log."""
    wal = str(tmp_path)
    writer = _fill(wal, 5)
    writer.append(b"unsynced", 1)
    writer.flush()
    reader = WalReader(wal)
    assert [e.seq for e in reader.read(100)] == [1, 2, 3, 4, 5, 6]
    reader.commit(6)
    reader.close()
    segment = _segments(wal)[-1]
    writer.abandon()
    os.truncate(segment, _record_offset(5))  # record 6 never reached the platter
    writer = WalWriter(wal, OPTIONS).open()
    assert writer.next_seq == 7
    assert writer.append(b"new", 1) == 7
    writer.flush()
    writer.close()
    reader = WalReader(wal)
    assert [e.payload for e in reader.read(10)] == [b"new"]


def test_damaged_cursor_restarts_from_the_oldest_record_instead_of_skipping(tmp_path) -> None:
    wal = str(tmp_path)
    _fill(wal, 4).close()
    write_cursor(wal, 2)
    with open(os.path.join(wal, "cursor"), "r+b") as f:
        f.seek(10)
        f.write(b"\xff")
    reader = WalReader(wal)
    assert reader.cursor_damaged
    assert [e.seq for e in reader.read(10)] == [1, 2, 3, 4]
    assert verify(wal).cursor_damaged


def test_segment_with_bad_header_is_quarantined_not_deleted_and_the_agent_starts(tmp_path) -> None:
    wal = str(tmp_path)
    writer = _fill(wal, 200)  # several segments
    writer.close()
    first = _segments(wal)[0]
    _flip(first, 2)
    writer = WalWriter(wal, OPTIONS).open()
    assert writer.stats.quarantined_segments == 1
    assert os.path.exists(first + ".corrupt")
    writer.close()
    seqs, reader = _read_all(wal)
    assert seqs and seqs[-1] == 200 and 1 not in seqs
    assert reader.stats.gap_records == 64  # the unreadable segment's records: lost, and counted
    report = verify(wal)
    assert not report.clean and report.quarantined_segments == ["00000000000000000001.seg.corrupt"]


def test_crash_while_creating_a_segment_leaves_no_trace(tmp_path) -> None:
    wal = str(tmp_path)
    _fill(wal, 3).close()
    with open(os.path.join(wal, "00000000000000000004.seg"), "wb") as f:
        f.write(b"ATWAL")  # header torn at creation
    writer = WalWriter(wal, OPTIONS).open()
    assert writer.stats.quarantined_segments == 0
    assert writer.next_seq == 4
    writer.close()
    assert verify(wal).clean


def test_second_writer_on_the_same_directory_is_refused(tmp_path) -> None:
    from automagik_telemetry_agent.wal import WalLockedError

    writer = WalWriter(str(tmp_path), OPTIONS).open()
    with pytest.raises(WalLockedError, match="in use by another agent"):
        WalWriter(str(tmp_path), OPTIONS).open()
    writer.close()


def test_reader_holding_a_batch_blocks_the_drop_of_that_segment_and_drop_counts_are_exact(tmp_path) -> None:
    wal = str(tmp_path)
    options = WalOptions(segment_bytes=64 * 1024, max_bytes=256 * 1024, min_free_bytes=0)
    writer = WalWriter(wal, options).open()
    reader = WalReader(wal)
    for i in range(120):  # about 120 KiB: two sealed segments
        writer.append(i.to_bytes(4, "little") * 250, 1)
    writer.flush()
    batch = reader.read(10)  # the consumer holds segment 1 (shared lock) for its batch in flight
    for i in range(120, 400):
        writer.append(i.to_bytes(4, "little") * 250, 1)
    writer.flush()
    writer.maintain()
    dropped = writer.stats.dropped_records["wal_size_cap"]
    assert dropped > 0
    assert os.path.exists(_segments(wal)[0]) and parse_segment_name(os.path.basename(_segments(wal)[0])) == 1
    reader.commit(batch[-1].seq)
    rest = []
    while more := reader.read(500):
        rest.extend(e.seq for e in more)
    delivered = {e.seq for e in batch} | set(rest)
    assert len(delivered) + dropped == 400  # every record either delivered or counted as dropped
    assert reader.stats.gap_records == dropped
    report = verify(wal)
    assert report.missing_records == 0 and report.dropped_by_policy_records == dropped
    writer.close()


def test_wal_verify_cli_prints_one_json_object_and_exit_code_says_corrupt(tmp_path) -> None:
    wal = str(tmp_path)
    _fill(wal, 5).close()
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "automagik_telemetry_agent", "wal", "verify", wal, "--json"]
    clean = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert clean.returncode == 0
    report = json.loads(clean.stdout)
    for key in (
        "segments",
        "records",
        "bytes",
        "first_seq",
        "last_seq",
        "cursor_seq",
        "corrupt_records",
        "torn_tail_bytes",
    ):
        assert key in report
    assert (report["records"], report["first_seq"], report["last_seq"]) == (5, 1, 5)
    _flip(_segments(wal)[0], _record_offset(2) + 100)
    dirty = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert dirty.returncode == 1
    assert json.loads(dirty.stdout)["corrupt_records"] == 1


def test_wal_dump_prints_every_span_with_its_resource_as_json_lines(tmp_path) -> None:
    wal = str(tmp_path)
    writer = WalWriter(wal, OPTIONS).open()
    resource = b'{"attributes":[{"key":"service.name","value":{"stringValue":"svc"}}]}\n'
    writer.append(resource + b'{"name":"a"}\n{"name":"b"}\n', 2)
    writer.append(b'{"attributes":[]}\n{"name":"c"}\n', 1)
    writer.close()
    dump = subprocess.run(
        [sys.executable, "-m", "automagik_telemetry_agent", "wal", "dump", wal], capture_output=True, text=True
    )
    assert dump.returncode == 0, dump.stderr
    lines = [json.loads(line) for line in dump.stdout.splitlines()]
    got = [(x["seq"], x["index"], x["record"]["name"]) for x in lines]
    assert got == [(1, 0, "a"), (1, 1, "b"), (2, 0, "c")]
    assert lines[0]["resource"]["attributes"][0]["value"]["stringValue"] == "svc"


def test_cursor_commit_needs_no_free_space_after_the_first(tmp_path) -> None:
    """On a 100% full filesystem the consumer can still commit, so the writer can free space behind it."""
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(tmp_path)]).returncode != 0:
        pytest.fail("this test needs a tmpfs mount (run as root, as make test does)")
    try:
        wal = str(tmp_path / "wal")
        writer = _fill(wal, 5)
        reader = WalReader(wal)
        reader.read(2)
        reader.commit(1)  # the first commit creates the cursor and its spare
        fd = os.open(tmp_path / "filler", os.O_WRONLY | os.O_CREAT)
        with pytest.raises(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
        os.close(fd)
        with pytest.raises(OSError):  # the filesystem is full: a new file cannot be written
            (tmp_path / "probe").write_bytes(b"x" * 4096)
        reader.commit(2)
        assert WalReader(wal).committed_seq == 2
        reader.close()
        writer.close()
    finally:
        subprocess.run(["umount", "-l", str(tmp_path)])


@pytest.mark.parametrize("written", [0, 5])
def test_a_segment_the_writer_is_still_creating_is_not_ready_yet_rather_than_unreadable(
    tmp_path, caplog, written: int
) -> None:
    """The writer creates a segment (O_CREAT) before it writes its header: a reader that lists the
    directory in between must wait for it quietly, and read its records once they are there."""
    wal = str(tmp_path)
    _fill(wal, 3).close()
    seqs, reader = _read_all(wal)
    assert seqs == [1, 2, 3]
    header = encode_segment_header(new_salt(), 4, 1)
    path = os.path.join(wal, "00000000000000000004.seg")
    with open(path, "wb") as f:
        f.write(header[:written])
    caplog.set_level(logging.DEBUG, logger="automagik_telemetry_agent")
    assert reader.read(500) == [] and reader.at_end
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    with open(path, "ab") as f:
        f.write(header[written:])
    assert reader.read(500) == []  # the header alone: a ready segment with no record yet
    os.unlink(path)
    writer = WalWriter(wal, OPTIONS).open()  # a real writer takes the name and appends
    writer.append(b"x" * PAYLOAD, 1)
    writer.flush()
    assert [e.seq for e in reader.read(500)] == [4]
    writer.close()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
