"""Retention and the disk policy: which segments go, and what dropping unshipped records costs.

A segment is deleted once no signal needs it: every record in it is at or below its own signal's
durable cursor (:mod:`.consumers`). Over the size cap (``wal.max_size``) or under the free-disk
watermark (``wal.min_free``) the disk policy applies: ``drop_oldest`` deletes the oldest unshipped
segments, counting exactly what they held (by reason, and by signal) and writing a line to the
``drops.log`` ledger; ``reject_new`` refuses new records instead (``WalWriter.accepting``). A consumer
holds a shared flock on the segments of the batch it ships; a deletion takes an exclusive one, so a
segment is never dropped under a batch in flight.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from .backlog import BacklogMarks
from .consumers import Consumers
from .durable import append_line_durably, fsync_dir
from .format import DROPS_FILE, SEGMENT_HEADER_SIZE, FormatError
from .segment import Record, SegmentFile, SegmentScanner, Tail
from .signals import Signal
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


@dataclass
class Unconsumed:
    """The records of a segment that their signal's cursor has not passed."""

    records: int = 0
    items: int = 0
    first: int = 0  # lowest and highest seq among them
    last: int = 0
    records_by_signal: Counter[Signal] = field(default_factory=Counter)
    items_by_signal: Counter[Signal] = field(default_factory=Counter)


class _Held(enum.Enum):
    MISSING = "missing"  # the file is gone
    BUSY = "busy"  # a consumer holds it (its shared lock on a segment it reads)


@contextlib.contextmanager
def _exclusive(path: str, flags: int) -> Iterator[int | _Held]:
    """``path`` opened and locked exclusively without waiting: its fd, or why not (closed at the end)."""
    try:
        fd = os.open(path, flags | os.O_CLOEXEC)
    except FileNotFoundError:
        yield _Held.MISSING
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield _Held.BUSY
            return
        yield fd
    finally:
        os.close(fd)


def delete_segment(
    wal_dir: str,
    seg: SegmentFile,
    reason: DropReason | None,
    cursors: Callable[[], Mapping[Signal, int]],
    stats: WalStats,
) -> bool:
    """Delete a sealed segment; False if a consumer holds it. With a reason, its unconsumed records (each
    above its signal's cursor in ``cursors()``, read under the lock) are dropped, counted and written to
    the ledger."""
    ledger_line = ""
    with _exclusive(seg.path, os.O_RDONLY) as fd:
        if fd is _Held.MISSING:
            return True
        if fd is _Held.BUSY:
            return False
        if reason is not None:
            lost = count_unconsumed(fd, cursors())
            if lost.records:
                stats.dropped_records[reason] += lost.records
                stats.dropped_items[reason] += lost.items
                for signal, n in lost.records_by_signal.items():
                    stats.dropped_records_by_signal[signal.value] += n
                    stats.dropped_items_by_signal[signal.value] += lost.items_by_signal[signal]
                log.error(
                    "WAL disk policy (%s): dropped %d unshipped records (%d items), seq %d..%d (%s)",
                    reason,
                    lost.records,
                    lost.items,
                    lost.first,
                    lost.last,
                    ", ".join(f"{s}: {n}" for s, n in sorted(lost.records_by_signal.items())),
                )
                ledger_line = ledger_entry(seg, lost, reason)
                try:
                    append_line_durably(os.path.join(wal_dir, DROPS_FILE), ledger_line)
                    ledger_line = ""
                except OSError as exc:
                    if exc.errno not in DISK_FULL_ERRNOS:
                        raise
                    # The disk is full: the ledger line goes in once the unlink below made room.
        os.unlink(seg.path)
        fsync_dir(wal_dir)
    # The file's fd is closed now: its space is freed.
    stats.segments_deleted += 1
    if ledger_line:
        append_line_durably(os.path.join(wal_dir, DROPS_FILE), ledger_line)
    return True


def retain(wal_dir: str, sealed: list[SegmentFile], consumers: Consumers, stats: WalStats, scan_budget: int) -> None:
    """Free every sealed segment no signal needs (docs/wal.md, "Rotation and retention"), updating ``sealed``:
    delete the oldest ones, first raising the floors of the signals whose cursors they are ahead of
    (:mod:`.floors`); empty the later ones down to their header (:func:`empty_segment`), or delete them
    when the segment before is an emptied one already (:func:`merge_into_emptied`)."""
    oldest, later = consumers.unneeded(sealed, scan_budget)
    if oldest:
        consumers.raise_floors(oldest[-1].last_seq or 0, DISK_FULL_ERRNOS)
        for seg in oldest:
            if not delete_segment(wal_dir, seg, None, consumers.current, stats):
                break
            sealed.remove(seg)
    for seg in later:
        before = sealed[sealed.index(seg) - 1]
        if before.size <= SEGMENT_HEADER_SIZE and merge_into_emptied(wal_dir, before, seg, stats):
            before.last_seq = seg.last_seq
            sealed.remove(seg)
        elif seg.size > SEGMENT_HEADER_SIZE and empty_segment(seg, stats):
            seg.size, seg.kinds = SEGMENT_HEADER_SIZE, {}


def empty_segment(seg: SegmentFile, stats: WalStats) -> bool:
    """Cut a sealed segment no signal needs down to its header; False if a consumer holds it.

    For a segment retention cannot delete yet because an older one is still needed (a signal's consumer
    is stuck): its space is freed now, and the file keeps its place, so that a reader passing it knows
    its sequence numbers were consumed rather than lost (a sealed segment holding nothing but its header
    is emptied by retention: the writer never seals an empty one)."""
    with _exclusive(seg.path, os.O_RDWR) as fd:
        if fd is _Held.MISSING or fd is _Held.BUSY:
            return False
        os.ftruncate(fd, SEGMENT_HEADER_SIZE)
        os.fsync(fd)
    stats.segments_emptied += 1
    return True


def merge_into_emptied(wal_dir: str, emptied: SegmentFile, seg: SegmentFile, stats: WalStats) -> bool:
    """Delete ``seg``, needed by no signal, right after ``emptied``: the emptied segment's numbers then run
    on over ``seg``'s (a segment's numbers run up to the next segment's first), so a run of them stays one
    file. It holds ``emptied``'s lock meanwhile: a reader passing it (holding it until it opened the next
    segment) never sees the segment after it vanish. False if a consumer holds either."""
    with _exclusive(emptied.path, os.O_RDONLY) as fd:
        if fd is _Held.MISSING or fd is _Held.BUSY:
            return False
        return delete_segment(wal_dir, seg, None, dict, stats)


def ledger_entry(seg: SegmentFile, lost: Unconsumed, reason: DropReason) -> str:
    """One drops.log line (docs/wal.md, "Drop ledger line")."""
    by_signal = " ".join(f"records_{s}={lost.records_by_signal[s]}" for s in Signal)
    segment_last = seg.last_seq if seg.last_seq is not None else lost.last
    return (
        f"{time.time_ns()} first_seq={lost.first} last_seq={lost.last} records={lost.records} "
        f"items={lost.items} reason={reason} segment_first_seq={seg.first_seq} "
        f"segment_last_seq={segment_last} {by_signal}"
    )


def count_unconsumed(fd: int, cursors: Mapping[Signal, int]) -> Unconsumed:
    """The segment's records above their own signal's cursor (records of a kind no signal reads are
    nobody's to ship: not counted)."""
    out = Unconsumed()
    try:
        scanner = SegmentScanner.open(fd)
    except FormatError:
        return out
    while (item := scanner.next()) is not None:
        if isinstance(item, Tail):
            break
        if not isinstance(item, Record):
            continue
        signal = Signal.of_kind(item.header.kind)
        if signal is None or item.seq <= cursors[signal]:
            continue
        out.records += 1
        out.items += item.header.count
        out.records_by_signal[signal] += 1
        out.items_by_signal[signal] += item.header.count
        out.first = out.first or item.seq
        out.last = item.seq
    return out


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
