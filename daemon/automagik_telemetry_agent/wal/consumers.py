"""The writer's view of the consumers: each signal's cursor and floor, and which segments a signal needs.

The retention rule (docs/wal.md, "Rotation and retention"): a signal *needs* a segment while the
segment holds a record of that signal's kind above that signal's cursor. Retention deletes sealed
segments, oldest first, once no signal needs them. So a signal with nothing in a segment never holds it
back, whether its consumer runs or not and whether its cursor file exists or not; a signal with records
there holds it until its consumer commits past them (or the disk policy drops them, counted).

What a segment holds comes from :attr:`.segment.SegmentFile.kinds`: exact for the segments this writer
wrote and for the newest one recovery scanned; unknown for older segments found at start, which then
count as holding every kind in their whole range until retention scans their headers (only when that
decides a deletion, within a byte budget per round).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from .cursor import cursor_path, read_cursor
from .floors import ensure_floors, write_floors
from .segment import SegmentFile, scan_kinds
from .signals import Signal

log = logging.getLogger(__name__)


def first_unconsumed(seg: SegmentFile, signal: Signal, cursor: int) -> int | None:
    """A lower bound of the first record of ``signal`` above ``cursor`` in ``seg``; None if it holds none."""
    if seg.kinds is None:  # not known: as if it held this signal's records in its whole range
        if seg.last_seq is not None and seg.last_seq <= cursor:
            return None
        return max(seg.first_seq, cursor + 1)
    span = seg.kinds.get(signal.kind)
    if span is None or span[1] <= cursor:
        return None
    return max(span[0], cursor + 1)


class Consumers:
    """Each signal's durable cursor (re-read when its file changes) and retention floor, for the writer."""

    def __init__(self, wal_dir: str) -> None:
        self.dir = wal_dir
        self.cursors: dict[Signal, int] = dict.fromkeys(Signal, 0)
        self.damaged: set[Signal] = set()
        self.floors: dict[Signal, int] = dict.fromkeys(Signal, 0)
        self._seen: dict[Signal, tuple[int, int] | None] = dict.fromkeys(Signal)

    def open(self) -> None:
        """At the writer's start: read every cursor, and the floors (stored if they were missing)."""
        self.refresh(force=True)
        self.floors = ensure_floors(self.dir)

    def refresh(self, force: bool = False) -> None:
        """Re-read the cursors whose file changed (all of them with ``force``)."""
        for signal in Signal:
            try:
                st = os.stat(cursor_path(self.dir, signal))
                seen: tuple[int, int] | None = (st.st_ino, st.st_mtime_ns)
            except FileNotFoundError:
                seen = (0, 0)
            if not force and seen == self._seen[signal]:
                continue
            self._seen[signal] = seen
            state = read_cursor(self.dir, signal)
            if state.damaged and signal not in self.damaged:
                log.error(
                    "WAL cursor %s in %s is damaged; its consumer restarts from the oldest record",
                    signal.cursor_file,
                    self.dir,
                )
            if state.damaged:
                self.damaged.add(signal)
            else:
                self.damaged.discard(signal)
            self.cursors[signal] = state.seq

    def current(self) -> dict[Signal, int]:
        """Every cursor as it is on disk now (for counting drops exactly, under a segment's lock)."""
        self.refresh(force=True)
        return dict(self.cursors)

    def highest(self) -> int:
        """The highest number any cursor or floor has reached: the writer never hands it out again."""
        return max(*self.cursors.values(), *self.floors.values())

    def needed_by(self, seg: SegmentFile) -> list[Signal]:
        """The signals that still need a record in ``seg``."""
        return [s for s in Signal if first_unconsumed(seg, s, self.cursors[s]) is not None]

    def unneeded(self, sealed: Sequence[SegmentFile], scan_budget: int) -> tuple[list[SegmentFile], list[SegmentFile]]:
        """The sealed segments no signal needs: those before the first needed one (to delete), and the
        others (to empty). A segment whose kinds are unknown is scanned when that decides, within
        ``scan_budget`` bytes (at least one segment)."""
        oldest: list[SegmentFile] = []
        later: list[SegmentFile] = []
        blocked = False
        for seg in sealed:
            needed = self.needed_by(seg)
            if needed and seg.kinds is None and scan_budget > 0:
                scan_budget -= seg.size
                seg.kinds = scan_kinds(seg.path)
                needed = self.needed_by(seg)
            if needed:
                blocked = True
            elif not blocked:
                oldest.append(seg)
            else:
                later.append(seg)
        return oldest, later

    def oldest_unconsumed(self, segments: Sequence[SegmentFile]) -> int | None:
        """The first seq some signal still needs (a lower bound where a segment's kinds are unknown)."""
        oldest: int | None = None
        for signal in Signal:
            cursor = self.cursors[signal]
            for seg in segments:
                if oldest is not None and seg.first_seq >= oldest:
                    break
                first = first_unconsumed(seg, signal, cursor)
                if first is not None:
                    oldest = first if oldest is None else min(oldest, first)
                    break
        return oldest

    def raise_floors(self, last_seq: int, disk_full_errnos: frozenset[int]) -> None:
        """Before retention deletes segments up to ``last_seq`` that no signal needs: raise the floor of every
        signal whose cursor has not passed them to ``last_seq``, durably (floors.py says why). On a full
        disk the floors stay as they were and the deletion goes ahead: floors only serve the readers'
        gap counting, and freeing space matters more."""
        raised = {s: last_seq for s in Signal if self.cursors[s] < last_seq and self.floors[s] < last_seq}
        if not raised:
            return
        floors = {**self.floors, **raised}
        try:
            write_floors(self.dir, floors)
        except OSError as exc:
            if exc.errno not in disk_full_errnos:
                raise
            log.warning(
                "WAL floors in %s not stored (%s): a consumer of %s behind the deleted segments may count "
                "their records as missing",
                self.dir,
                exc.strerror,
                ", ".join(sorted(raised)),
            )
            return
        self.floors = floors
