"""Retention and the disk policy: which segments go, and what dropping unshipped records costs.

A segment is deleted once the durable cursor has passed its last record. Over the size cap
(``wal.max_size``) or under the free-disk watermark (``wal.min_free``) the disk policy applies:
``drop_oldest`` deletes the oldest unshipped segments, counting exactly what they held (by reason)
and writing a line to the ``drops.log`` ledger; ``reject_new`` refuses new records instead
(``WalWriter.accepting``). A consumer holds a shared flock on the segments of the batch it ships; a
deletion takes an exclusive one, so a segment is never dropped under a batch in flight.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import logging
import os
import time
from collections.abc import Callable

from .backlog import BacklogMarks
from .durable import append_line_durably, fsync_dir
from .format import DROPS_FILE, SEGMENT_HEADER_SIZE, FormatError
from .segment import Record, SegmentFile, SegmentScanner, Tail
from .stats import WalStats

log = logging.getLogger(__name__)

#: Errors that mean "the disk cannot take more now": a policy matter, never a crash.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class DropReason(enum.StrEnum):
    """Why the disk policy applies (the ``reason`` label of the drop counters)."""

    SIZE_CAP = "wal_size_cap"
    FREE_DISK = "disk_free_watermark"


def over_limits(wal_dir: str, max_bytes: int, min_free_bytes: int, total_bytes: int) -> DropReason | None:
    """Which limit the WAL is past, if any (the size cap first)."""
    if max_bytes and total_bytes > max_bytes:
        return DropReason.SIZE_CAP
    if min_free_bytes:
        try:
            st = os.statvfs(wal_dir)
        except OSError:
            return None
        if st.f_bavail * st.f_frsize < min_free_bytes:
            return DropReason.FREE_DISK
    return None


def delete_segment(
    wal_dir: str, seg: SegmentFile, reason: DropReason | None, cursor: Callable[[], int], stats: WalStats
) -> bool:
    """Delete a sealed segment; False if a consumer holds it. With a reason, its unconsumed records (above
    ``cursor()``, read under the lock) are dropped, counted and written to the ledger."""
    try:
        fd = os.open(seg.path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    ledger_line = ""
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        cursor_seq = cursor()
        if reason is not None:
            records, items, first, last = count_unconsumed(fd, cursor_seq)
            if records:
                stats.dropped_records[reason] += records
                stats.dropped_items[reason] += items
                log.error(
                    "WAL disk policy (%s): dropped %d unshipped records (%d items), seq %d..%d",
                    reason,
                    records,
                    items,
                    first,
                    last,
                )
                ledger_line = (
                    f"{time.time_ns()} first_seq={first} last_seq={last} records={records} "
                    f"items={items} reason={reason}"
                )
                try:
                    append_line_durably(os.path.join(wal_dir, DROPS_FILE), ledger_line)
                    ledger_line = ""
                except OSError as exc:
                    if exc.errno not in DISK_FULL_ERRNOS:
                        raise
                    # The disk is full: the ledger line goes in once the unlink below made room.
        os.unlink(seg.path)
        fsync_dir(wal_dir)
    finally:
        os.close(fd)  # the space is freed once the last fd is closed
    stats.segments_deleted += 1
    if ledger_line:
        append_line_durably(os.path.join(wal_dir, DROPS_FILE), ledger_line)
    return True


def count_unconsumed(fd: int, cursor_seq: int) -> tuple[int, int, int, int]:
    """(records, items, first seq, last seq) of the segment's records above ``cursor_seq``."""
    records = items = 0
    first = last = 0
    try:
        scanner = SegmentScanner.open(fd)
    except FormatError:
        return 0, 0, 0, 0
    while (item := scanner.next()) is not None:
        if isinstance(item, Tail):
            break
        if isinstance(item, Record) and item.seq > cursor_seq:
            records += 1
            items += item.header.count
            first = first or item.seq
            last = item.seq
    return records, items, first, last


def unshipped_backlog(
    marks: BacklogMarks, oldest: int | None, sizes: list[tuple[int, int]]
) -> tuple[int, float | None]:
    """(bytes from the oldest unshipped record to the end of the WAL, that record's write time) from the
    backlog marks (wal/backlog.py says how exact) and each segment's (first seq, size)."""
    mark = marks.find(oldest) if oldest is not None else None
    if mark is None:
        return 0, None
    unshipped = 0  # record bytes (headers and payloads) from the mark on
    for first, size in sizes:
        if first >= mark.segment:
            unshipped += max(0, size - (mark.offset if first == mark.segment else SEGMENT_HEADER_SIZE))
    return unshipped, mark.time
