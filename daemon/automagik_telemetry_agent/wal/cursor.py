"""The consumer cursor: the highest sequence number the consumer (shipper) has finished with.

Owned by the consumer process; the writer only reads it (to delete segments the cursor has passed
and to never reuse a sequence number at or below it). Stored as 20 bytes::

    0  8  magic   b"ATCUR\\x00\\x01\\x00"
    8  8  seq     little-endian u64
    16 4  crc     CRC-32 of bytes 0..15

Written crash-atomically (temp + fsync + rename + directory fsync). A missing cursor means 0.
An unreadable one also means 0, reported through ``CursorState.damaged``: re-reading from the start
re-ships data (the sink's deduplication absorbs it) rather than skipping any.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass

from .durable import write_atomic
from .format import CURSOR_FILE

CURSOR_MAGIC = b"ATCUR\x00\x01\x00"
_BODY = struct.Struct("<8sQ")


@dataclass(frozen=True, slots=True)
class CursorState:
    seq: int
    damaged: bool = False


def cursor_path(wal_dir: str) -> str:
    return os.path.join(wal_dir, CURSOR_FILE)


def encode_cursor(seq: int) -> bytes:
    body = _BODY.pack(CURSOR_MAGIC, seq)
    return body + struct.pack("<I", zlib.crc32(body))


def read_cursor(wal_dir: str) -> CursorState:
    try:
        with open(cursor_path(wal_dir), "rb") as f:
            data = f.read(64)
    except FileNotFoundError:
        return CursorState(0)
    except OSError:
        return CursorState(0, damaged=True)
    if len(data) != _BODY.size + 4:
        return CursorState(0, damaged=True)
    magic, seq = _BODY.unpack_from(data)
    (crc,) = struct.unpack_from("<I", data, _BODY.size)
    if magic != CURSOR_MAGIC or zlib.crc32(data[: _BODY.size]) != crc:
        return CursorState(0, damaged=True)
    return CursorState(seq)


def write_cursor(wal_dir: str, seq: int) -> None:
    """Durably record that every record with sequence number <= seq is consumed."""
    write_atomic(cursor_path(wal_dir), encode_cursor(seq))
