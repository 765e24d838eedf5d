"""Offline inspection of a WAL directory: ``wal verify`` and ``wal dump``. Never modifies anything.

Verify reads every segment with the same scanner the agent uses and reports what a repair at the
next agent start would do: torn tail bytes (to be truncated) and corrupt records (skipped); and, for each
signal, its cursor and how many of its records are above it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from .cursor import read_cursor
from .floors import read_floors
from .format import DROPS_FILE, QUARANTINE_SUFFIX, SEGMENT_HEADER_SIZE, FormatError, list_segment_files
from .segment import Corrupt, Record, SegmentScanner, Tail, open_segment
from .signals import Signal


@dataclass
class VerifyReport:
    wal_dir: str
    segments: int = 0
    records: int = 0
    items: int = 0
    bytes: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    cursor_seq: int = 0  # every record at or below it is consumed by its own signal
    cursor_damaged: bool = False  # some signal's cursor file is unreadable (then taken as 0)
    cursors: dict[str, int] = field(default_factory=dict)  # each signal's cursor file (missing = 0)
    damaged_cursors: list[str] = field(default_factory=list)
    floors: dict[str, int] = field(default_factory=dict)
    unconsumed_records: int = 0  # records above their own signal's cursor
    unconsumed_by_signal: dict[str, int] = field(default_factory=dict)
    other_kind_records: int = 0  # records of a kind no signal reads
    corrupt_records: int = 0
    corrupt_bytes: int = 0
    torn_tail_bytes: int = 0
    emptied_segments: int = 0  # sealed segments retention cut to their header (no signal needed them)
    bad_segments: list[str] = field(default_factory=list)
    quarantined_segments: list[str] = field(default_factory=list)
    dropped_by_policy_records: int = 0
    missing_records: int = 0  # gaps between segments not explained by the drop ledger

    @property
    def clean(self) -> bool:
        return not (
            self.corrupt_records
            or self.corrupt_bytes
            or self.bad_segments
            or self.quarantined_segments
            or self.cursor_damaged
            or self.missing_records
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["clean"] = self.clean
        return out


def _dropped_ranges(wal_dir: str) -> list[tuple[int, int, int | None]]:
    """Per drops.log line: the sequence numbers it explains and how many records it dropped. A line naming
    its segment explains the segment's whole range (records of other signals in it were consumed); an
    older line explains first_seq..last_seq, each of them a dropped record (None)."""
    ranges: list[tuple[int, int, int | None]] = []
    try:
        with open(os.path.join(wal_dir, DROPS_FILE)) as f:
            for line in f:
                fields = dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)
                if "segment_first_seq" in fields and "segment_last_seq" in fields and "records" in fields:
                    seg_range = int(fields["segment_first_seq"]), int(fields["segment_last_seq"])
                    ranges.append((*seg_range, int(fields["records"])))
                elif "first_seq" in fields and "last_seq" in fields:
                    ranges.append((int(fields["first_seq"]), int(fields["last_seq"]), None))
    except (OSError, ValueError):
        pass
    return ranges


def verify(wal_dir: str) -> VerifyReport:
    report = VerifyReport(os.path.abspath(wal_dir))
    cursors = {s: read_cursor(wal_dir, s) for s in Signal}
    seqs = {s: c.seq for s, c in cursors.items()}
    report.cursors = {str(s): c.seq for s, c in cursors.items()}
    report.damaged_cursors = [str(s) for s, c in cursors.items() if c.damaged]
    report.cursor_damaged = bool(report.damaged_cursors)
    report.floors = {str(s): f for s, f in read_floors(wal_dir).items()}
    unconsumed = dict.fromkeys(Signal, 0)
    oldest_unconsumed: int | None = None
    # A gap at or below the highest cursor may be numbers the writer never handed out again after a crash
    # erased records a consumer had passed (docs/wal.md, "Sequence numbers"): not missing.
    passed = max(seqs.values())
    report.quarantined_segments = sorted(n for n in os.listdir(wal_dir) if n.endswith(QUARANTINE_SUFFIX))
    drops = _dropped_ranges(wal_dir)
    segments = list_segment_files(wal_dir)
    expected: int | None = None
    emptied_from: int | None = None  # the first number of a run of emptied segments before this one
    for index, (first, path) in enumerate(segments):
        newest = index == len(segments) - 1
        report.segments += 1
        report.bytes += os.path.getsize(path)
        try:
            fd, header = open_segment(path)
        except (OSError, FormatError) as exc:
            report.bad_segments.append(f"{os.path.basename(path)}: {exc}")
            expected = None
            continue
        try:
            if expected is not None and first > expected:
                _account_gap(report, expected, first - 1, drops, passed)
            scanner = SegmentScanner(fd, header)
            if not newest and scanner.file_size <= SEGMENT_HEADER_SIZE:
                report.emptied_segments += 1  # its numbers run up to the next segment's: none missing
                emptied_from = first if emptied_from is None else emptied_from
                expected = None
                continue
            if emptied_from is not None:  # segments dropped right after emptied ones: not a gap, but dropped
                report.dropped_by_policy_records += sum(
                    n for a, b, n in drops if n is not None and emptied_from <= a and b < first
                )
                emptied_from = None
            expected = first
            while (item := scanner.next()) is not None:
                if isinstance(item, Record):
                    if item.seq > expected:
                        report.corrupt_records += item.seq - expected
                    report.records += 1
                    report.items += item.header.count
                    if report.first_seq is None:
                        report.first_seq = item.seq
                    report.last_seq = item.seq
                    signal = Signal.of_kind(item.header.kind)
                    if signal is None:
                        report.other_kind_records += 1
                    elif item.seq > seqs[signal]:
                        unconsumed[signal] += 1
                        if oldest_unconsumed is None:
                            oldest_unconsumed = item.seq
                    expected = item.seq + 1
                elif isinstance(item, Corrupt):
                    report.corrupt_bytes += item.length
                elif isinstance(item, Tail):
                    if newest:
                        report.torn_tail_bytes += item.length
                    else:
                        report.corrupt_bytes += item.length
                        nxt = segments[index + 1][0]
                        report.corrupt_records += max(0, nxt - expected)
                        expected = nxt
                    break
        finally:
            os.close(fd)
    report.unconsumed_by_signal = {str(s): n for s, n in unconsumed.items()}
    report.unconsumed_records = sum(unconsumed.values())
    if oldest_unconsumed is not None:
        report.cursor_seq = oldest_unconsumed - 1
    else:
        report.cursor_seq = max(passed, report.last_seq or 0)
    return report


def _account_gap(
    report: VerifyReport, first: int, last: int, drops: list[tuple[int, int, int | None]], passed: int
) -> None:
    """Records first..last are absent: explained by the drop ledger, at or below the highest cursor, or
    missing."""
    lo = max(first, passed + 1)
    unexplained = max(0, last - lo + 1)
    for a, b, records in drops:  # ledger ranges never overlap: each segment is dropped once
        if records is not None and max(a, first) <= min(b, last):
            report.dropped_by_policy_records += records
        x, y = max(a, lo), min(b, last)
        if x <= y:
            unexplained -= y - x + 1
            if records is None:
                report.dropped_by_policy_records += y - x + 1
    report.missing_records += unexplained


def dump(wal_dir: str, *, start_after: int = 0, last_segments: int = 0) -> Iterator[tuple[int, int, bytes]]:
    """Every readable record as (seq, kind, payload), oldest first, skipping damage; only those of the
    newest ``last_segments`` segments when it is not 0."""
    segments = list_segment_files(wal_dir)
    for _first, path in segments[-last_segments:] if last_segments else segments:
        try:
            fd, header = open_segment(path)
        except (OSError, FormatError):
            continue
        try:
            scanner = SegmentScanner(fd, header)
            while (item := scanner.next()) is not None:
                if isinstance(item, Tail):
                    break
                if isinstance(item, Record) and item.seq > start_after:
                    yield item.seq, item.header.kind, item.payload
        finally:
            os.close(fd)
