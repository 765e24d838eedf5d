"""The WAL directory's watch: the generation the shipper's threads wait on instead of polling."""

from __future__ import annotations

import logging
import os
import select
from pathlib import Path

import pytest

from automagik_telemetry_agent.wal import WalOptions, WalWriter
from automagik_telemetry_agent.wal.cursor import write_cursor
from automagik_telemetry_agent.wal.format import segment_name
from automagik_telemetry_agent.wal.watch import WalWatch


def _watch(path: Path) -> WalWatch:
    watch = WalWatch.open(str(path))
    assert watch is not None, "inotify is available on the machines this project runs on"
    return watch


def _readable(watch: WalWatch, timeout_ms: int = 0) -> bool:
    poller = select.poll()
    poller.register(watch.fileno(), select.POLLIN)
    return bool(poller.poll(timeout_ms))


def test_the_writers_appends_and_new_segments_advance_the_generation(tmp_path: Path) -> None:
    watch = _watch(tmp_path)
    try:
        seen = watch.changes()
        assert not _readable(watch)
        writer = WalWriter(str(tmp_path), WalOptions(min_free_bytes=0, segment_bytes=64 * 1024)).open()
        try:
            assert _readable(watch, 1000), "creating the first segment is an event"
            seen = watch.changes()
            writer.append(b"{}\n{}\n", 1)
            writer.flush()
            assert _readable(watch, 1000)
            after = watch.changes()
            assert after > seen
            assert watch.changes() == after, "no new write, no new generation"
            for _ in range(40):  # > 64 KiB: the writer rotates to a new segment
                writer.append(b"{}\n" + b"x" * 4000 + b"\n", 1)
            writer.flush()
            assert watch.changes() > after
        finally:
            writer.close()
    finally:
        watch.close()


def test_a_write_between_the_read_and_the_wait_is_not_missed(tmp_path: Path) -> None:
    """The reader takes the generation before it reads; a write that lands after its read but before its
    wait is already queued on the fd, so the wait returns at once and the generation has moved."""
    segment = tmp_path / segment_name(1)
    segment.write_bytes(b"header")
    watch = _watch(tmp_path)
    try:
        seen = watch.changes()  # before the read
        with open(segment, "ab") as f:  # the writer, between the read and the wait
            f.write(b"record")
        assert _readable(watch, 0)
        assert watch.changes() != seen
    finally:
        watch.close()


def test_the_shippers_own_files_in_the_directory_do_not_count(tmp_path: Path) -> None:
    watch = _watch(tmp_path)
    try:
        seen = watch.changes()
        write_cursor(str(tmp_path), 42)
        (tmp_path / "consumer.lock").write_bytes(b"")
        (tmp_path / "agent_id").write_text("abc")
        assert watch.changes() == seen
        (tmp_path / segment_name(7)).write_bytes(b"x")
        assert watch.changes() == seen + 1
    finally:
        watch.close()


def test_a_queue_overflow_counts_as_a_change(tmp_path: Path) -> None:
    """The kernel bounds the queue (fs.inotify.max_queued_events) and drops the rest for one
    IN_Q_OVERFLOW: the watch must take that as "something changed", not as nothing."""
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 100_000:
        pytest.skip(f"max_queued_events is {limit}: too many files to create for an overflow")
    watch = _watch(tmp_path)
    try:
        seen = watch.changes()
        for i in range(limit + 10):  # distinct names: events the kernel cannot merge
            os.close(os.open(tmp_path / f"junk-{i}", os.O_CREAT | os.O_WRONLY, 0o600))
        assert watch.changes() == seen + 1
        assert watch.overflows == 1
    finally:
        watch.close()


def test_a_directory_that_cannot_be_watched_gives_no_watch_and_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        assert WalWatch.open(str(tmp_path / "missing")) is None
    assert [r.getMessage() for r in caplog.records] == [
        f"cannot watch {tmp_path / 'missing'} (No such file or directory); the shipper polls it instead"
    ]


def test_a_closed_watch_keeps_its_generation_and_says_so(tmp_path: Path) -> None:
    watch = _watch(tmp_path)
    (tmp_path / segment_name(1)).write_bytes(b"x")
    generation = watch.changes()
    watch.close()
    watch.close()
    assert watch.closed
    assert watch.changes() == generation
