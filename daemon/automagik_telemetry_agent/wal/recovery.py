"""Recovery at open: what the WAL directory holds after whatever ended the last writer (docs/wal.md).

Every segment's header is checked: a file cut short before its header was complete never held a record
and is removed; a header that is unreadable, or disagrees with the file's name, gets the segment moved
aside as ``.corrupt`` (quarantined, never deleted). The newest segment is scanned to the end: corrupt
records in it are counted and left in place, a torn tail (a write a crash cut short; never
acknowledged) is truncated, and a newest segment left without any record is removed so that the
next one gets a fresh salt (but not one retention emptied: see retention.empty_segment). Older
segments are not rescanned: their readers skip and count damage.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from .backlog import BacklogMarks
from .durable import fsync_dir
from .format import QUARANTINE_SUFFIX, SEGMENT_HEADER_SIZE, FormatError, list_segment_files
from .segment import Corrupt, KindRanges, Record, SegmentFile, SegmentScanner, Tail, add_kind, open_segment
from .stats import WalStats

log = logging.getLogger(__name__)


@dataclass
class Recovered:
    segments: list[SegmentFile]  # every usable segment, oldest first, each with its last seq
    last_seq: int  # the last valid record's seq (0 if none), or the end of an emptied segment's numbers


def recover_segments(wal_dir: str, stats: WalStats, marks: BacklogMarks) -> Recovered:
    """Validate headers, repair the newest segment; ``marks`` gets each segment's creation time (the age
    bound of records written before this start)."""
    segments: list[SegmentFile] = []
    created: dict[int, float] = {}
    files = list_segment_files(wal_dir)
    for first, path in files:
        try:
            fd, header = open_segment(path)
            os.close(fd)
        except (OSError, FormatError) as exc:
            if os.path.getsize(path) < SEGMENT_HEADER_SIZE:
                # A crash while creating it: it never held a record.
                os.unlink(path)
                fsync_dir(wal_dir)
                continue
            quarantine(wal_dir, path, str(exc), stats)
            continue
        if header.first_seq != first:
            quarantine(wal_dir, path, f"header says first seq {header.first_seq}, name says {first}", stats)
            continue
        segments.append(SegmentFile(first, path, os.path.getsize(path)))
        created[first] = header.created_ns / 1e9
    last_seq = 0
    while segments:
        newest = segments[-1]
        following = [first for first, _ in files if first > newest.first_seq]
        if newest.size == SEGMENT_HEADER_SIZE and following:
            # Only a header, though a newer segment was started after it: retention emptied it (the writer
            # never seals an empty segment). Kept: its numbers run up to the next one's, all consumed.
            newest.kinds = {}
            last_seq = following[0] - 1
            break
        last_seq = repair_newest(newest, stats)
        if last_seq >= newest.first_seq:
            break
        # The newest segment holds no record: remove it (a new one gets a fresh salt).
        os.unlink(newest.path)
        fsync_dir(wal_dir)
        segments.pop()
        last_seq = newest.first_seq - 1
    for i, seg in enumerate(segments[:-1]):
        seg.last_seq = segments[i + 1].first_seq - 1
    if segments:
        segments[-1].last_seq = last_seq
    for seg in segments:
        marks.mark(seg.first_seq, created[seg.first_seq], seg.first_seq, SEGMENT_HEADER_SIZE)
    return Recovered(segments, last_seq)


def quarantine(wal_dir: str, path: str, why: str, stats: WalStats) -> None:
    log.error("WAL segment %s is unreadable (%s); moved aside as %s%s", path, why, path, QUARANTINE_SUFFIX)
    os.replace(path, path + QUARANTINE_SUFFIX)
    fsync_dir(wal_dir)
    stats.quarantined_segments += 1


def repair_newest(seg: SegmentFile, stats: WalStats) -> int:
    """Scan the newest segment, count corrupt records, truncate a torn tail. Return its last seq.

    Notes the kinds of records it holds in ``seg.kinds`` (the older segments' stay unknown until
    retention needs them)."""
    fd = os.open(seg.path, os.O_RDWR | os.O_CLOEXEC)
    kinds: KindRanges = {}
    try:
        scanner = SegmentScanner.open(fd)
        expected = seg.first_seq
        last = seg.first_seq - 1
        while (item := scanner.next()) is not None:
            if isinstance(item, Record):
                if item.seq > expected:
                    stats.corrupt_records_at_open += item.seq - expected
                add_kind(kinds, item.header.kind, item.seq, item.seq)
                last = item.seq
                expected = item.seq + 1
            elif isinstance(item, Tail):
                log.warning(
                    "WAL segment %s: truncating a torn tail of %d bytes at offset %d",
                    seg.path,
                    item.length,
                    item.offset,
                )
                os.ftruncate(fd, item.offset)
                os.fsync(fd)
                stats.torn_tail_bytes_truncated += item.length
                break
            elif isinstance(item, Corrupt):
                log.error("WAL segment %s: %d corrupt bytes at offset %d skipped", seg.path, item.length, item.offset)
        seg.size = os.fstat(fd).st_size
        seg.kinds = kinds
        return last
    finally:
        os.close(fd)
