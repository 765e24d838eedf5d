"""The WAL's on-disk format, version 1: the one place it is defined (described in docs/wal.md).

A WAL directory holds segment files ``<first_seq:020d>.seg``, one consumer cursor per signal (``cursor``,
``cursor.logs``, ``cursor.metrics``: :mod:`.signals`), the retention floors ``floors``, the agent
identity ``agent_id``, the drop ledger ``drops.log`` and the writer lock ``LOCK``.

Segment file = a 40-byte segment header, then records back to back::

    segment header (40 bytes, little-endian)
      0  8  magic       b"ATWAL\\r\\n\\x1a"  (detects text-mode mangling, like PNG's)
      8  2  version     1
      10 2  flags       0
      12 4  salt        random per segment; every record header repeats it
      16 8  first_seq   sequence number of the segment's first record
      24 8  created_ns  wall clock at creation
      32 4  reserved    0
      36 4  header_crc  CRC-32 of bytes 0..35

    record header (32 bytes, little-endian), then `length` payload bytes
      0  4  salt        == the segment's salt: a resync marker and a guard against stale bytes
      4  4  length      payload length
      8  8  seq         sequence number; contiguous within a segment, increasing across segments
      16 1  kind        record kind (protocol RecordKind: 1 = spans, 2 = logs, 3 = metrics)
      17 1  flags       0
      18 2  reserved    0
      20 4  count       number of items (spans) in the payload
      24 4  payload_crc CRC-32 of the payload
      28 4  header_crc  CRC-32 of bytes 0..27

CRC-32 is zlib's (IEEE polynomial), chosen because CPython computes it in C at GB/s.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from dataclasses import dataclass

from ..paths import WAL_LOCK_FILE

SEGMENT_MAGIC = b"ATWAL\r\n\x1a"
FORMAT_VERSION = 1
SEGMENT_HEADER = struct.Struct("<8sHHIQQI")  # + header_crc
SEGMENT_HEADER_SIZE = SEGMENT_HEADER.size + 4  # 40
RECORD_HEADER = struct.Struct("<IIQBBHII")  # + header_crc
RECORD_HEADER_SIZE = RECORD_HEADER.size + 4  # 32
#: Sanity bound on a record payload; a header claiming more is treated as corrupt.
MAX_RECORD_PAYLOAD = 16 * 1024 * 1024

SEGMENT_SUFFIX = ".seg"
QUARANTINE_SUFFIX = ".corrupt"
CURSOR_FILE = "cursor"  # the traces cursor; the other signals' add a suffix (signals.py)
FLOORS_FILE = "floors"
AGENT_ID_FILE = "agent_id"
DROPS_FILE = "drops.log"
LOCK_FILE = WAL_LOCK_FILE  # held (flock) by the one ingest appending

_SEGMENT_NAME = re.compile(r"^(\d{20})\.seg$")


class FormatError(ValueError):
    """Bytes that are not a valid segment header or record header."""


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    salt: int
    first_seq: int
    created_ns: int


@dataclass(frozen=True, slots=True)
class RecordHeader:
    length: int
    seq: int
    kind: int
    count: int
    payload_crc: int


def segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}{SEGMENT_SUFFIX}"


def parse_segment_name(name: str) -> int | None:
    """The first_seq a segment file name encodes, or None if it is not a segment file."""
    match = _SEGMENT_NAME.match(name)
    return int(match.group(1)) if match else None


def list_segment_files(wal_dir: str) -> list[tuple[int, str]]:
    """(first seq, path) of every file in ``wal_dir`` named like a segment, in seq order."""
    found = []
    for name in os.listdir(wal_dir):
        first = parse_segment_name(name)
        if first is not None:
            found.append((first, os.path.join(wal_dir, name)))
    found.sort()
    return found


def new_salt() -> int:
    """A random non-zero 32-bit salt (zero is what a zero-filled torn tail looks like)."""
    while True:
        salt = int.from_bytes(os.urandom(4), "little")
        if salt:
            return salt


def encode_segment_header(salt: int, first_seq: int, created_ns: int) -> bytes:
    body = SEGMENT_HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION, 0, salt, first_seq, created_ns, 0)
    return body + struct.pack("<I", zlib.crc32(body))


def decode_segment_header(data: bytes) -> SegmentHeader:
    if len(data) < SEGMENT_HEADER_SIZE:
        raise FormatError(f"segment header truncated ({len(data)} of {SEGMENT_HEADER_SIZE} bytes)")
    body = data[: SEGMENT_HEADER.size]
    (crc,) = struct.unpack_from("<I", data, SEGMENT_HEADER.size)
    magic, version, _flags, salt, first_seq, created_ns, _reserved = SEGMENT_HEADER.unpack(body)
    if magic != SEGMENT_MAGIC:
        raise FormatError("not a WAL segment (bad magic)")
    if zlib.crc32(body) != crc:
        raise FormatError("segment header checksum mismatch")
    if version != FORMAT_VERSION:
        raise FormatError(f"segment format version {version}; this agent reads version {FORMAT_VERSION}")
    return SegmentHeader(salt, first_seq, created_ns)


def encode_record_header(salt: int, seq: int, kind: int, count: int, payload: bytes | memoryview) -> bytes:
    body = RECORD_HEADER.pack(salt, len(payload), seq, kind, 0, 0, count, zlib.crc32(payload))
    return body + struct.pack("<I", zlib.crc32(body))


def decode_record_header(data: bytes | memoryview, offset: int, salt: int) -> RecordHeader | None:
    """The record header at ``offset`` if it is intact and belongs to this segment, else None."""
    if len(data) - offset < RECORD_HEADER_SIZE:
        return None
    r_salt, length, seq, kind, _flags, _reserved, count, payload_crc = RECORD_HEADER.unpack_from(data, offset)
    if r_salt != salt or length > MAX_RECORD_PAYLOAD:
        return None
    (crc,) = struct.unpack_from("<I", data, offset + RECORD_HEADER.size)
    if zlib.crc32(data[offset : offset + RECORD_HEADER.size]) != crc:
        return None
    return RecordHeader(length, seq, kind, count, payload_crc)


def salt_marker(salt: int) -> bytes:
    """The 4 bytes every record header of a segment starts with: what a resync scan searches for."""
    return struct.pack("<I", salt)
