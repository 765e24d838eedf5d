"""The WAL reader: a consumer in another process streams one signal's records after its durable cursor.

* One signal per reader (:mod:`.signals`; traces by default): it returns that signal's records only and
  commits to that signal's cursor. Records of other kinds are passed over by their headers, their
  payloads neither copied nor checked; :attr:`WalReader.position` moves over them, and
  :meth:`WalReader.commit_idle` lets a consumer with nothing of its own to ship move its cursor too.
* Streams: it holds at most one read-ahead window and the records of the batch asked for.
* Tails the active segment and moves on when the writer has started a newer one.
* Holds a shared ``flock`` on the segment it reads and on every segment it has read uncommitted records
  of its signal from, so the writer's disk policy never drops a segment under a batch in flight (and
  counts its drops exactly).
* Counts what it could not deliver: corrupt records skipped, and gaps (records the disk policy
  dropped, or segments moved aside as unreadable); not the sequence numbers at or below its signal's
  retention floor (:mod:`.floors`), nor those of a segment retention emptied: no signal needed them.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from dataclasses import dataclass

from .cursor import read_cursor, write_cursor
from .floors import read_floors
from .format import SEGMENT_HEADER_SIZE, FormatError, list_segment_files
from .segment import Corrupt, SegmentScanner, Skipped, Tail, read_segment_header
from .signals import Signal

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
    other_records_skipped: int = 0  # records of other signals passed over


class _OpenSegment:
    def __init__(self, first_seq: int, path: str, fd: int, scanner: SegmentScanner) -> None:
        self.first_seq = first_seq
        self.path = path
        self.fd = fd
        self.scanner = scanner
        self.last_read_seq = 0  # of the reader's signal: none yet (nothing to commit, no lock needed)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class WalReader:
    def __init__(self, wal_dir: str, start_after: int | None = None, *, signal: Signal = Signal.TRACES) -> None:
        self.dir = os.path.abspath(wal_dir)
        self.signal = signal
        self._kind = int(signal.kind)
        self.stats = ReaderStats()
        cursor = read_cursor(self.dir, signal)
        self.cursor_damaged = cursor.damaged
        self.committed_seq = cursor.seq if start_after is None else start_after  # this signal's cursor
        self.position = self.committed_seq  # the last seq read past (of any kind)
        self._last_own_seq = self.committed_seq  # the last seq of this signal handed out
        self.at_end = False  # the last read() found nothing more in the WAL (see read())
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

    def _open(self, first_seq: int, path: str, newest: bool = False) -> _OpenSegment | None:
        """Open and share-lock a segment; None if it vanished or is unreadable.

        ``newest``: the last segment of the directory, which the writer may be creating right now
        (``O_CREAT`` comes before the header's write): shorter than a header, it is not ready yet (None,
        quietly: the next read looks again), not damaged."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            st = os.fstat(fd)
            # Dropped between open and lock, or (the newest) not given its header yet.
            if st.st_nlink == 0 or (newest and st.st_size < SEGMENT_HEADER_SIZE):
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
        for _ in range(3):
            candidates = self._segments()
            # The last segment whose first_seq <= want, else the first after it (a gap).
            chosen = 0
            while chosen + 1 < len(candidates) and candidates[chosen + 1][0] <= want:
                chosen += 1
            for first, path in candidates[chosen:]:
                seg = self._open(first, path, newest=first == candidates[-1][0])
                if seg is not None:
                    self._held.append(seg)
                    return seg
                if not os.path.exists(path):
                    break  # deleted meanwhile (its numbers may now belong to the one before): look again
        return None

    def _advance_segment(self, seg: _OpenSegment) -> bool:
        """Move past ``seg`` if a newer segment exists (it is then sealed and complete)."""
        if os.fstat(seg.fd).st_nlink == 0:
            # Deleted under us, though we hold it: only the writer's recovery does that, to an empty newest
            # segment, and it may then start one of the same name. Look again from the position.
            self._held.remove(seg)
            seg.close()
            return True
        newer = [(f, p) for f, p in self._segments() if f > seg.first_seq]
        if not newer:
            return False
        # Sealed: the writer finished it before creating the newer one. Read what is left first.
        seg.scanner.refresh()
        if self._drain_tail_of_sealed(seg):
            return True  # records remain in it; the caller reads them first
        if seg.scanner.file_size <= SEGMENT_HEADER_SIZE:
            self._pass_emptied(seg, newer[0][0] - 1)
        for first, path in newer:
            nxt = self._open(first, path, newest=first == newer[-1][0])
            if nxt is not None:
                self._held.append(nxt)
                self._release_passed()
                return True
        return False

    def _pass_emptied(self, seg: _OpenSegment, last_seq: int) -> None:
        """A sealed segment with nothing but its header was emptied by retention: no signal needed any of
        its records (retention.empty_segment). Move over its numbers, counting only a gap before it."""
        if self.position + 1 < seg.first_seq:
            self._account_missing(self.position + 1, seg.first_seq, seg)
        if last_seq > self.position:
            self.position = last_seq
            self._uncounted_start = self._tail_was_corrupt = False

    def _drain_tail_of_sealed(self, seg: _OpenSegment) -> bool:
        return seg.scanner.offset < seg.scanner.file_size and not self._at_tail(seg)

    def _at_tail(self, seg: _OpenSegment) -> bool:
        saved = seg.scanner.offset
        item = seg.scanner.next(self._kind)
        seg.scanner.offset = saved
        if isinstance(item, Tail):
            log.error("WAL segment %s: %d corrupt bytes at its end skipped", seg.path, item.length)
            seg.scanner.offset = seg.scanner.file_size
            self._tail_was_corrupt = True
            return True
        return item is None

    # ------------------------------------------------------------------ reading
    def read(
        self,
        max_records: int = 1000,
        max_bytes: int = 16 * 1024 * 1024,
        max_items: int | None = None,
        up_to: int | None = None,
        max_skipped: int = 100_000,
    ) -> list[WalEntry]:
        """The next records of this signal after :attr:`position` (possibly none yet). Never blocks.

        ``up_to``: return no record with a higher seq (the position stops at or below it). ``max_skipped``:
        return after passing that many records of other signals (about a quarter of a second's work).
        :attr:`at_end` then says whether it stopped because the WAL holds nothing more for now (the
        position is past every record in it, of any kind) or at a limit (call again)."""
        out: list[WalEntry] = []
        size = items = skipped = 0
        kind = self._kind
        self.at_end = False
        while len(out) < max_records and size < max_bytes and (max_items is None or items < max_items):
            seg = self._current()
            if seg is None:
                self.at_end = True
                break
            item = seg.scanner.next(kind)
            if item is None or isinstance(item, Tail):
                known = seg.scanner.file_size
                seg.scanner.refresh()
                if seg.scanner.file_size > known:
                    continue  # the writer appended meanwhile
                if not self._advance_segment(seg):
                    self.at_end = True
                    break
                continue
            if isinstance(item, Corrupt):
                continue  # counted by the sequence jump at the next record
            seq = item.seq
            if seq <= self.position:
                continue  # before our start point
            if up_to is not None and seq > up_to:
                seg.scanner.offset = item.offset  # read again by the next call
                break
            expected = self.position + 1
            if seq > expected:
                self._account_missing(expected, seq, seg)
            self._tail_was_corrupt = False
            self._uncounted_start = False
            self.position = seq
            if isinstance(item, Skipped):
                skipped += 1  # another signal's
                if skipped >= max_skipped:
                    break
                continue
            seg.last_read_seq = self._last_own_seq = seq
            h = item.header
            out.append(WalEntry(seq, h.kind, h.count, item.payload, seg.scanner.header.salt))
            size += h.length
            items += h.count
        self.stats.records_read += len(out)
        self.stats.items_read += items
        self.stats.bytes_read += size
        self.stats.other_records_skipped += skipped
        return out

    def _account_missing(self, expected: int, seq: int, seg: _OpenSegment) -> None:
        """Records expected..seq-1 are missing: before this segment a gap, inside it corruption. Those at or
        below the signal's floor are none of its records (retention deleted them: :mod:`.floors`)."""
        if self._uncounted_start:
            self._uncounted_start = False
            return
        expected = max(expected, read_floors(self.dir)[self.signal] + 1)
        if expected >= seq:
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
        self.position = self._last_own_seq = self.committed_seq

    # ------------------------------------------------------------------ committing
    def commit(self, seq: int) -> None:
        """Durably record that every record of this signal <= seq is consumed; release segments passed."""
        if seq <= self.committed_seq:
            return
        if seq > self.position:
            raise ValueError(f"cannot commit seq {seq}: only read up to {self.position}")
        write_cursor(self.dir, seq, self.signal)
        self.committed_seq = seq
        self._release_passed()

    @property
    def in_flight(self) -> bool:
        """Records of this signal were read and not committed yet."""
        return self._last_own_seq > self.committed_seq

    def commit_idle(self) -> int:
        """Commit :attr:`position` if no record of this signal is in flight: move this signal's cursor over
        the other signals' records read past. What a consumer calls when :meth:`read` found nothing of its
        signal, so that its cursor keeps up with the WAL (a restart then starts near the end, not at the
        oldest record). A no-op while a batch is read but not committed, or if the position did not move.
        Costs what a commit costs (fsyncs): call it at most about once a second. Returns the cursor."""
        if not self.in_flight and self.position > self.committed_seq:
            self.commit(self.position)
        return self.committed_seq

    def _release_passed(self) -> None:
        """Unlock segments all of whose read records of this signal are committed, except the one being read
        (segments that held none of them are unlocked even behind one that holds a batch in flight)."""
        if not self._held:
            return
        *passed, reading = self._held
        kept = []
        for seg in passed:
            if seg.last_read_seq > self.committed_seq:
                kept.append(seg)
            else:
                seg.close()
        self._held = [*kept, reading]

    def close(self) -> None:
        for seg in self._held:
            seg.close()
        self._held.clear()
