"""Offline inspection of a WAL directory: ``wal verify`` and ``wal dump``. Never modifies anything.

Verify reads every segment with the same scanner the agent uses and reports what a repair at the
next agent start would do: torn tail bytes (to be truncated) and corrupt records (skipped).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from .cursor import read_cursor
from .format import DROPS_FILE, QUARANTINE_SUFFIX, FormatError, list_segment_files
from .segment import Corrupt, Record, SegmentScanner, Tail, open_segment


@dataclass
class VerifyReport:
    wal_dir: str
    segments: int = 0
    records: int = 0
    items: int = 0
    bytes: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    cursor_seq: int = 0
    cursor_damaged: bool = False
    unconsumed_records: int = 0
    corrupt_records: int = 0
    corrupt_bytes: int = 0
    torn_tail_bytes: int = 0
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


def _dropped_ranges(wal_dir: str) -> list[tuple[int, int]]:
    ranges = []
    try:
        with open(os.path.join(wal_dir, DROPS_FILE)) as f:
            for line in f:
                fields = dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)
                if "first_seq" in fields and "last_seq" in fields:
                    ranges.append((int(fields["first_seq"]), int(fields["last_seq"])))
    except (OSError, ValueError):
        pass
    return ranges


def verify(wal_dir: str) -> VerifyReport:
    report = VerifyReport(os.path.abspath(wal_dir))
    cursor = read_cursor(wal_dir)
    report.cursor_seq, report.cursor_damaged = cursor.seq, cursor.damaged
    report.quarantined_segments = sorted(n for n in os.listdir(wal_dir) if n.endswith(QUARANTINE_SUFFIX))
    drops = _dropped_ranges(wal_dir)
    segments = list_segment_files(wal_dir)
    expected: int | None = None
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
            # A gap at or below the cursor was consumed before it vanished (e.g. the consumer shipped
            # records a power loss then erased): nothing is missing there.
            gap_from = max(expected, cursor.seq + 1) if expected is not None else None
            if gap_from is not None and first > gap_from:
                _account_gap(report, gap_from, first - 1, drops)
            expected = first
            scanner = SegmentScanner(fd, header)
            while (item := scanner.next()) is not None:
                if isinstance(item, Record):
                    if item.seq > expected:
                        report.corrupt_records += item.seq - expected
                    report.records += 1
                    report.items += item.header.count
                    if report.first_seq is None:
                        report.first_seq = item.seq
                    report.last_seq = item.seq
                    if item.seq > cursor.seq:
                        report.unconsumed_records += 1
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
    return report


def _account_gap(report: VerifyReport, first: int, last: int, drops: list[tuple[int, int]]) -> None:
    """Records first..last are absent: explained by the drop ledger, or missing."""
    explained = 0
    for a, b in drops:  # ledger ranges never overlap: each seq is dropped once
        lo, hi = max(a, first), min(b, last)
        if lo <= hi:
            explained += hi - lo + 1
    report.dropped_by_policy_records += explained
    report.missing_records += (last - first + 1) - explained


def dump(wal_dir: str, *, start_after: int = 0) -> Iterator[tuple[int, int, bytes]]:
    """Every readable record as (seq, kind, payload), oldest first, skipping damage."""
    for _first, path in list_segment_files(wal_dir):
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
