"""Retention floors: per signal, the sequence number at or below which a missing record is no loss of it.

Retention deletes a segment once no signal still needs a record in it (docs/wal.md, "Rotation and
retention"). A signal whose cursor has not passed the segment does not hold it back when the segment
holds none of that signal's records above its cursor. When that signal's consumer reads on from its
cursor later, the segment's sequence numbers are gone: a jump it must not count as lost records. So
before deleting such a segment the writer raises that signal's floor to the segment's last sequence
number, durably, and a reader counts no gap at or below its signal's floor.

Floors change only what readers *count* as missing, never what anyone reads or deletes.

The ``floors`` file is owned by the writer (readers only read it) and is 36 bytes, written like the
cursors (:func:`.cursor.write_swapped`: no allocation once it and its spare exist)::

    0  8  magic    b"ATFLR\\x00\\x01\\x00"
    8  8  traces   little-endian u64
    16 8  logs
    24 8  metrics
    32 4  crc      CRC-32 of bytes 0..31

A missing or unreadable file means: traces 0, logs and metrics the traces cursor. A WAL written before
there were signals holds no logs or metrics, and its retention deleted segments only up to the traces
cursor; the writer stores these defaults at its first start on such a WAL (:func:`ensure_floors`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import struct
import zlib
from collections.abc import Mapping

from .cursor import read_cursor, write_swapped
from .format import FLOORS_FILE
from .signals import Signal

log = logging.getLogger(__name__)

FLOORS_MAGIC = b"ATFLR\x00\x01\x00"
_ORDER = (Signal.TRACES, Signal.LOGS, Signal.METRICS)  # the file's field order
_BODY = struct.Struct("<8s" + "Q" * len(_ORDER))
FLOORS_SIZE = _BODY.size + 4


def floors_path(wal_dir: str) -> str:
    return os.path.join(wal_dir, FLOORS_FILE)


def encode_floors(floors: Mapping[Signal, int]) -> bytes:
    body = _BODY.pack(FLOORS_MAGIC, *(floors.get(s, 0) for s in _ORDER))
    return body + struct.pack("<I", zlib.crc32(body))


def _decode(data: bytes) -> dict[Signal, int] | None:
    if len(data) != FLOORS_SIZE:
        return None
    magic, *values = _BODY.unpack_from(data)
    (crc,) = struct.unpack_from("<I", data, _BODY.size)
    if magic != FLOORS_MAGIC or zlib.crc32(data[: _BODY.size]) != crc:
        return None
    return dict(zip(_ORDER, values, strict=True))


def stored_floors(wal_dir: str) -> dict[Signal, int] | None:
    """The floors the file holds; None if it is missing or unreadable."""
    try:
        with open(floors_path(wal_dir), "rb") as f:
            return _decode(f.read(64))
    except OSError:
        return None


def default_floors(wal_dir: str) -> dict[Signal, int]:
    """The floors of a WAL without a (readable) floors file: see the module docstring."""
    traces = read_cursor(wal_dir, Signal.TRACES).seq
    return {s: (0 if s is Signal.TRACES else traces) for s in Signal}


def read_floors(wal_dir: str) -> dict[Signal, int]:
    stored = stored_floors(wal_dir)
    return stored if stored is not None else default_floors(wal_dir)


def write_floors(wal_dir: str, floors: Mapping[Signal, int]) -> None:
    write_swapped(floors_path(wal_dir), encode_floors(floors))


def ensure_floors(wal_dir: str) -> dict[Signal, int]:
    """The floors, stored first if the file is missing or unreadable (at the writer's start), so that the
    defaults are fixed at what they mean then. On a full disk they stay defaults until a later write."""
    stored = stored_floors(wal_dir)
    if stored is not None:
        return stored
    floors = default_floors(wal_dir)
    if os.path.exists(floors_path(wal_dir)):
        log.error("WAL floors file in %s is damaged; rewritten with its defaults", wal_dir)
    try:
        write_floors(wal_dir, floors)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        with contextlib.suppress(OSError):
            os.unlink(floors_path(wal_dir) + ".tmp")
    return floors
