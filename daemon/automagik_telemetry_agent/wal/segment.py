"""Streaming scan of one segment file: records, corrupt regions and the end, never the whole file in memory.

The writer's recovery, the consumer (shipper) and ``wal verify`` all read segments through
:class:`SegmentScanner`, so they agree on what is a record, what is corruption and what is a torn tail.

Rules (docs/wal.md, "Reading and repair"):

* A record is valid when its header matches the segment salt and its header CRC, and its payload
  matches the payload CRC.
* At an invalid position the scanner searches forward for the next valid record (the salt is the
  sync marker). If it finds one, the bytes in between are a corrupt region; the number of records
  lost there is the jump in sequence numbers (they are contiguous within a segment).
* If nothing valid follows, the rest of the file is a *tail*: torn by a crash in the newest
  segment (the writer truncates it), corrupt in a sealed one.
* A caller that wants one kind only (a signal's reader) gets the records of other kinds as
  :class:`Skipped`: their header is checked (salt and CRC) and the whole record must be in the file, but
  the payload is neither copied nor checked (it is another signal's to check).
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass

from .format import (
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    FormatError,
    RecordHeader,
    SegmentHeader,
    decode_record_header,
    decode_segment_header,
    salt_marker,
)

_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Record:
    offset: int
    header: RecordHeader
    payload: bytes

    @property
    def seq(self) -> int:
        return self.header.seq

    @property
    def end(self) -> int:
        return self.offset + RECORD_HEADER_SIZE + self.header.length


@dataclass(frozen=True, slots=True)
class Skipped:
    """A record of a kind the caller did not ask for: its header only (the payload was not read)."""

    offset: int
    header: RecordHeader

    @property
    def seq(self) -> int:
        return self.header.seq

    @property
    def end(self) -> int:
        return self.offset + RECORD_HEADER_SIZE + self.header.length


@dataclass(frozen=True, slots=True)
class Corrupt:
    """Bytes [offset, offset + length) hold no valid record; a valid record starts right after."""

    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class Tail:
    """Bytes [offset, file end) hold no valid record: a torn tail (or an append still in progress)."""

    offset: int
    length: int


def read_segment_header(fd: int) -> SegmentHeader:
    data = os.pread(fd, SEGMENT_HEADER_SIZE, 0)
    return decode_segment_header(data)


class _Window:
    """A read-ahead window over a file descriptor, so small records cost no syscall each."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._start = 0
        self._buf = b""

    def get(self, offset: int, size: int, file_size: int) -> bytes | None:
        """``size`` bytes at ``offset``, or None if the file is shorter."""
        if offset + size > file_size:
            return None
        end = self._start + len(self._buf)
        if not (self._start <= offset and offset + size <= end):
            self._buf = os.pread(self._fd, max(size, _CHUNK), offset)
            self._start = offset
            if len(self._buf) < size:
                return None
        rel = offset - self._start
        return self._buf[rel : rel + size]

    def find(self, marker: bytes, offset: int, file_size: int) -> int:
        """Offset of the next ``marker`` at or after ``offset``, or -1."""
        pos = offset
        while pos < file_size:
            chunk = self.get(pos, min(_CHUNK, file_size - pos), file_size)
            if chunk is None:
                return -1
            hit = chunk.find(marker)
            if hit >= 0:
                return pos + hit
            pos += max(1, len(chunk) - len(marker) + 1)
        return -1


class SegmentScanner:
    """Iterates one segment's records from ``offset``; ``file_size`` may grow (``refresh``) while tailing."""

    def __init__(
        self, fd: int, header: SegmentHeader, offset: int = SEGMENT_HEADER_SIZE, file_size: int | None = None
    ) -> None:
        self.fd = fd
        self.header = header
        self.offset = offset
        self.file_size = os.fstat(fd).st_size if file_size is None else file_size
        self._window = _Window(fd)
        self._marker = salt_marker(header.salt)

    @classmethod
    def open(cls, fd: int) -> SegmentScanner:
        """Scanner positioned at the first record; raises FormatError for a bad segment header."""
        return cls(fd, read_segment_header(fd))

    def refresh(self) -> None:
        self.file_size = os.fstat(self.fd).st_size
        self._window = _Window(self.fd)

    def _header_at(self, offset: int) -> RecordHeader | None:
        head = self._window.get(offset, RECORD_HEADER_SIZE, self.file_size)
        if head is None:
            return None
        return decode_record_header(head, 0, self.header.salt)

    def _record_at(self, offset: int) -> Record | None:
        header = self._header_at(offset)
        return None if header is None else self._record_with(offset, header)

    def _record_with(self, offset: int, header: RecordHeader) -> Record | None:
        payload = self._window.get(offset + RECORD_HEADER_SIZE, header.length, self.file_size)
        if payload is None:
            return None
        if zlib.crc32(payload) != header.payload_crc:
            return None
        return Record(offset, header, payload)

    def next(self, kind: int | None = None) -> Record | Skipped | Corrupt | Tail | None:
        """The next item; None at a clean end of the bytes currently in the file.

        With ``kind``, a record of another kind whose header is valid and which lies wholly in the file is
        returned as :class:`Skipped`, its payload unread. A :class:`Tail` does not advance the position:
        it is returned again until the file grows (a tailing reader retries it), so a caller reading a
        finished file stops at it.
        """
        offset = self.offset
        if offset >= self.file_size:
            return None
        header = self._header_at(offset)
        if header is not None:
            end = offset + RECORD_HEADER_SIZE + header.length
            if kind is not None and header.kind != kind and end <= self.file_size:
                self.offset = end
                return Skipped(offset, header)
            record = self._record_with(offset, header)
            if record is not None:
                self.offset = record.end
                return record
        resync = self._resync(self.offset + 1)
        if resync < 0:
            return Tail(self.offset, self.file_size - self.offset)
        bad = Corrupt(self.offset, resync - self.offset)
        self.offset = resync
        return bad

    def _resync(self, start: int) -> int:
        pos = start
        while True:
            hit = self._window.find(self._marker, pos, self.file_size)
            if hit < 0:
                return -1
            if self._record_at(hit) is not None:
                return hit
            pos = hit + 1


def open_segment(path: str) -> tuple[int, SegmentHeader]:
    """Open a segment read-only and decode its header; the caller closes the fd."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return fd, read_segment_header(fd)
    except (OSError, FormatError):
        os.close(fd)
        raise


#: Per record kind in a segment, the (first, last) sequence numbers of its records of that kind.
KindRanges = dict[int, tuple[int, int]]

#: Matches no record kind (the kind field is one byte): every record comes back as Skipped.
NO_KIND = -1


@dataclass
class SegmentFile:
    """A segment file of the WAL directory, as the writer tracks it."""

    first_seq: int
    path: str
    size: int
    last_seq: int | None = None  # known exactly for segments this writer sealed
    #: Which kinds of records it holds, where; None = not known yet (a sealed segment found at start
    #: that was not scanned): then it may hold any kind anywhere in its range.
    kinds: KindRanges | None = None


def add_kind(kinds: KindRanges, kind: int, first: int, last: int) -> None:
    """Note records of ``kind`` from ``first`` to ``last`` (appended after those already noted)."""
    known = kinds.get(kind)
    kinds[kind] = (known[0] if known is not None else first, last)


def scan_kinds(path: str) -> KindRanges | None:
    """The kinds of records a segment holds, from its record headers only; None if it is unreadable.

    A record whose payload is damaged still counts for its kind (a superset is what retention needs);
    records lost in a damaged region count for none (no reader will ever read them)."""
    try:
        fd, header = open_segment(path)
    except (OSError, FormatError):
        return None
    kinds: KindRanges = {}
    try:
        scanner = SegmentScanner(fd, header)
        while (item := scanner.next(NO_KIND)) is not None and not isinstance(item, Tail):
            if isinstance(item, Skipped | Record):
                add_kind(kinds, item.header.kind, item.seq, item.seq)
    finally:
        os.close(fd)
    return kinds
