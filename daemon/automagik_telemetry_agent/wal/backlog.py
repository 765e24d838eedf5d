"""How old and how big the unshipped part of the WAL is, cheaply, without a timestamp in every record.

WAL records carry no time (docs/wal.md). The writer instead keeps sparse *marks*: "record ``seq`` starts
at byte ``offset`` of the segment whose first record is ``segment``, and was written at ``time``". It
adds one when a segment starts and after a write at most every second or every MiB, so there are few
(at most ~one per second of writes still in the WAL). Given the oldest record the consumer has not
finished with, the newest mark at or before it bounds that record's age and the bytes from it to the
end of the WAL:

* ``oldest unshipped age`` = now - the mark's time: an over-estimate by at most one mark interval
  (1 s) for records written by this process; for records found at start-up (written before the last
  restart) the mark is the segment's creation time (its header), so the age is an upper bound at
  segment granularity.
* ``unshipped bytes`` = bytes from the mark's offset to the end of the WAL: an over-estimate by at most
  the bytes written in one mark interval (1 MiB), or one segment for records found at start-up.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

MARK_INTERVAL_S = 1.0
MARK_BYTES = 1024 * 1024
MAX_MARKS = 65536  # beyond this (a very long backlog), every other non-segment-start mark is dropped


@dataclass(frozen=True, slots=True)
class Mark:
    seq: int
    time: float  # wall clock, seconds since the epoch
    segment: int  # first seq of the segment the record is in
    offset: int  # byte offset of the record in that segment


class BacklogMarks:
    """Sparse (seq -> time, position) marks; used only from the writer's thread."""

    def __init__(self) -> None:
        self._marks: deque[Mark] = deque()
        self._bytes_since = 0

    def __len__(self) -> int:
        return len(self._marks)

    def mark(self, seq: int, when: float, segment: int, offset: int) -> None:
        """Record that ``seq`` starts at ``offset`` of ``segment`` and was written at ``when``.

        Marks at or after ``seq`` are replaced: after a rolled-back write the same numbers are given
        to new records (at the same offsets, later).
        """
        marks = self._marks
        while marks and marks[-1].seq >= seq:
            marks.pop()
        marks.append(Mark(seq, when, segment, offset))
        self._bytes_since = 0
        if len(marks) > MAX_MARKS:
            self._thin()

    def wrote(self, first_seq: int, segment: int, offset: int, nbytes: int, now: float | None = None) -> None:
        """Records from ``first_seq`` were written at ``offset`` of ``segment``: mark it if a mark is due."""
        self._bytes_since += nbytes
        now = time.time() if now is None else now
        last = self._marks[-1] if self._marks else None
        if last is None or now - last.time >= MARK_INTERVAL_S or self._bytes_since - nbytes >= MARK_BYTES:
            self.mark(first_seq, now, segment, offset)

    def find(self, seq: int) -> Mark | None:
        """The newest mark at or before ``seq``; marks before it are forgotten (``seq`` only grows)."""
        marks = self._marks
        while len(marks) > 1 and marks[1].seq <= seq:
            marks.popleft()
        return marks[0] if marks and marks[0].seq <= seq else None

    def _thin(self) -> None:
        """Halve the marks inside segments, keeping every segment start (so a mark is always in the
        segment of the record asked about) and the newest mark."""
        kept = [m for i, m in enumerate(self._marks) if i % 2 == 0 or m.seq == m.segment or i == len(self._marks) - 1]
        self._marks = deque(kept)
