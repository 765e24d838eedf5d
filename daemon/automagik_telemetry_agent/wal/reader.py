"""The WAL reader: a consumer in another process streams records after its durable cursor.

* Streams: it holds at most one read-ahead window and the records of the batch asked for.
* Tails the active segment and moves on when the writer has started a newer one.
* Holds a shared ``flock`` on every segment it has read uncommitted records from, so the writer's
  disk policy never drops a segment under a batch in flight (and counts its drops exactly).
* Counts what it could not deliver: corrupt records skipped, and gaps (records the disk policy
  dropped, or segments moved aside as unreadable).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from dataclasses import dataclass

from .cursor import read_cursor, write_cursor
from .format import FormatError, list_segment_files
from .segment import Corrupt, Record, SegmentScanner, Tail, read_segment_header

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WalEntry:
    seq: int
    kind: int
    count: int
    payload: bytes
    salt: int  # the salt of the segment it was read from (part of a batch's identity)


@dataclass
class ReaderStats:
    records_read: int = 0
    items_read: int = 0
    bytes_read: int = 0
    corrupt_records_skipped: int = 0
    gap_records: int = 0  # missing between segments: dropped by the disk policy or quarantined


class _OpenSegment:
    def __init__(self, first_seq: int, path: str, fd: int, scanner: SegmentScanner) -> None:
        self.first_seq = first_seq
        self.path = path
        self.fd = fd
        self.scanner = scanner
        self.last_read_seq = first_seq - 1

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class WalReader:
    def __init__(self, wal_dir: str, start_after: int | None = None) -> None:
        self.dir = os.path.abspath(wal_dir)
        self.stats = ReaderStats()
        cursor = read_cursor(self.dir)
        self.cursor_damaged = cursor.damaged
        self.committed_seq = cursor.seq if start_after is None else start_after
        self.position = self.committed_seq  # last seq handed out
        self._held: list[_OpenSegment] = []  # oldest first; the last one is being read
        self._tail_was_corrupt = False
        # With a damaged cursor we restart from the oldest record: the jump is not a loss.
        self._uncounted_start = cursor.damaged and start_after is None

    # ------------------------------------------------------------------ segment discovery
    def _segments(self) -> list[tuple[int, str]]:
        try:
            return list_segment_files(self.dir)
        except FileNotFoundError:
            return []

    def _open(self, first_seq: int, path: str) -> _OpenSegment | None:
        """Open and share-lock a segment; None if it vanished or is unreadable."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            if os.fstat(fd).st_nlink == 0:  # dropped between open and lock
                os.close(fd)
                return None
            header = read_segment_header(fd)
        except (OSError, FormatError) as exc:
            log.error("WAL segment %s unreadable, skipped: %s", path, exc)
            os.close(fd)
            return None
        return _OpenSegment(first_seq, path, fd, SegmentScanner(fd, header))

    def _current(self) -> _OpenSegment | None:
        """The segment holding the next record, opening the right one if needed."""
        if self._held:
            return self._held[-1]
        want = self.position + 1
        candidates = self._segments()
        # The last segment whose first_seq <= want, else the first after it (a gap).
        chosen = None
        for first, path in candidates:
            if first <= want:
                chosen = (first, path)
            elif chosen is None:
                chosen = (first, path)
                break
            else:
                break
        for first, path in ([chosen] if chosen else []) + [c for c in candidates if chosen and c[0] > chosen[0]]:
            seg = self._open(first, path)
            if seg is not None:
                self._held.append(seg)
                return seg
        return None

    def _advance_segment(self, seg: _OpenSegment) -> bool:
        """Move past ``seg`` if a newer segment exists (it is then sealed and complete)."""
        newer = [(f, p) for f, p in self._segments() if f > seg.first_seq]
        if not newer:
            return False
        # Sealed: the writer finished it before creating the newer one. Read what is left first.
        seg.scanner.refresh()
        if self._drain_tail_of_sealed(seg):
            return True  # records remain in it; the caller reads them first
        for first, path in newer:
            nxt = self._open(first, path)
            if nxt is not None:
                self._held.append(nxt)
                self._release_passed()
                return True
        return False

    def _drain_tail_of_sealed(self, seg: _OpenSegment) -> bool:
        return seg.scanner.offset < seg.scanner.file_size and not self._at_tail(seg)

    def _at_tail(self, seg: _OpenSegment) -> bool:
        saved = seg.scanner.offset
        item = seg.scanner.next()
        seg.scanner.offset = saved
        if isinstance(item, Tail):
            log.error("WAL segment %s: %d corrupt bytes at its end skipped", seg.path, item.length)
            seg.scanner.offset = seg.scanner.file_size
            self._tail_was_corrupt = True
            return True
        return item is None

    # ------------------------------------------------------------------ reading
    def read(
        self, max_records: int = 1000, max_bytes: int = 16 * 1024 * 1024, max_items: int | None = None
    ) -> list[WalEntry]:
        """The next records after :attr:`position` (possibly none yet). Never blocks."""
        out: list[WalEntry] = []
        size = items = 0
        while len(out) < max_records and size < max_bytes and (max_items is None or items < max_items):
            seg = self._current()
            if seg is None:
                break
            item = seg.scanner.next()
            if item is None or isinstance(item, Tail):
                known = seg.scanner.file_size
                seg.scanner.refresh()
                if seg.scanner.file_size > known:
                    continue  # the writer appended meanwhile
                if not self._advance_segment(seg):
                    break
                continue
            if isinstance(item, Corrupt):
                continue  # counted by the sequence jump at the next record
            assert isinstance(item, Record)
            seq = item.seq
            if seq <= self.position:
                continue  # before our start point
            expected = self.position + 1
            if seq > expected:
                self._account_missing(expected, seq, seg)
            self._tail_was_corrupt = False
            self._uncounted_start = False
            seg.last_read_seq = seq
            self.position = seq
            h = item.header
            out.append(WalEntry(seq, h.kind, h.count, item.payload, seg.scanner.header.salt))
            size += h.length
            items += h.count
        self.stats.records_read += len(out)
        self.stats.items_read += items
        self.stats.bytes_read += size
        return out

    def _account_missing(self, expected: int, seq: int, seg: _OpenSegment) -> None:
        """Records expected..seq-1 are missing: before this segment a gap, inside it corruption."""
        if self._uncounted_start:
            self._uncounted_start = False
            return
        between = max(0, min(seq, seg.first_seq) - expected)
        inside = seq - max(expected, seg.first_seq)
        if between and self._tail_was_corrupt:
            self.stats.corrupt_records_skipped += between
            log.error("WAL: %d record(s) lost in a corrupt segment tail before seq %d", between, seg.first_seq)
        elif between:
            self.stats.gap_records += between
            log.error(
                "WAL: records %d..%d are missing (dropped by the disk policy, or in an unreadable segment)",
                expected,
                expected + between - 1,
            )
        if inside > 0:
            self.stats.corrupt_records_skipped += inside
            log.error("WAL: %d corrupt record(s) before seq %d skipped", inside, seq)

    def rewind(self) -> None:
        """Forget records read but not committed: the next read starts after the committed seq."""
        for seg in self._held:
            seg.close()
        self._held.clear()
        self.position = self.committed_seq

    # ------------------------------------------------------------------ committing
    def commit(self, seq: int) -> None:
        """Durably record that every record <= seq is consumed; release segments passed."""
        if seq <= self.committed_seq:
            return
        if seq > self.position:
            raise ValueError(f"cannot commit seq {seq}: only read up to {self.position}")
        write_cursor(self.dir, seq)
        self.committed_seq = seq
        self._release_passed()

    def _release_passed(self) -> None:
        """Unlock segments all of whose read records are committed, except the one being read."""
        while len(self._held) > 1 and self._held[0].last_read_seq <= self.committed_seq:
            self._held.pop(0).close()

    def close(self) -> None:
        for seg in self._held:
            seg.close()
        self._held.clear()
