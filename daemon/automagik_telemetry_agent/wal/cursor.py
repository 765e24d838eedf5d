"""The consumer cursors: per signal, the highest sequence number its consumer (shipper) has finished with.

One file per signal (:attr:`.signals.Signal.cursor_file`: ``cursor`` for traces, as before signals
existed, ``cursor.logs``, ``cursor.metrics``). Each is owned by its signal's consumer; the writer only
reads them (to delete segments no signal still needs, and to never reuse a sequence number at or below
any of them). "Finished with" counts only the signal's own records: a cursor may pass records of other
kinds, which that consumer never reads. Stored as 20 bytes::

    0  8  magic   b"ATCUR\\x00\\x01\\x00"
    8  8  seq     little-endian u64
    16 4  crc     CRC-32 of bytes 0..15

Written crash-atomically (see :func:`write_cursor`). A missing cursor means 0 (``CursorState.missing``).
An unreadable one also means 0, reported through ``CursorState.damaged``: re-reading from the start
re-ships data (the sink's deduplication absorbs it) rather than skipping any.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from .durable import fsync_dir, write_atomic
from .signals import Signal

CURSOR_MAGIC = b"ATCUR\x00\x01\x00"
_BODY = struct.Struct("<8sQ")


@dataclass(frozen=True, slots=True)
class CursorState:
    seq: int
    damaged: bool = False
    missing: bool = False  # no cursor file: this signal's consumer never committed


def cursor_path(wal_dir: str, signal: Signal = Signal.TRACES) -> str:
    return os.path.join(wal_dir, signal.cursor_file)


def encode_cursor(seq: int) -> bytes:
    body = _BODY.pack(CURSOR_MAGIC, seq)
    return body + struct.pack("<I", zlib.crc32(body))


def read_cursor(wal_dir: str, signal: Signal = Signal.TRACES) -> CursorState:
    try:
        with open(cursor_path(wal_dir, signal), "rb") as f:
            data = f.read(64)
    except FileNotFoundError:
        return CursorState(0, missing=True)
    except OSError:
        return CursorState(0, damaged=True)
    if len(data) != _BODY.size + 4:
        return CursorState(0, damaged=True)
    magic, seq = _BODY.unpack_from(data)
    (crc,) = struct.unpack_from("<I", data, _BODY.size)
    if magic != CURSOR_MAGIC or zlib.crc32(data[: _BODY.size]) != crc:
        return CursorState(0, damaged=True)
    return CursorState(seq)


def write_cursor(wal_dir: str, seq: int, signal: Signal = Signal.TRACES) -> None:
    """Durably record that every record of ``signal`` with sequence number <= seq is consumed.

    A full disk must never stop the consumer from committing (the writer frees space only behind the
    cursor). So after the first commit, commits allocate nothing: the new value overwrites a spare file
    of the same size in place, is fsynced, and is swapped with the cursor atomically
    (``renameat2(RENAME_EXCHANGE)``), then the directory is fsynced. The spare then holds the previous
    value. Where the exchange is unavailable it falls back to temp + fsync + rename + directory fsync.
    """
    write_swapped(cursor_path(wal_dir, signal), encode_cursor(seq))


def write_swapped(path: str, data: bytes) -> None:
    """Replace the fixed-size file ``path`` with ``data`` crash-atomically, allocating nothing once
    ``path`` and its spare (``path + ".spare"``) exist (see :func:`write_cursor`)."""
    wal_dir = os.path.dirname(path) or "."
    spare = path + ".spare"
    if _exchange_available() and os.path.exists(path) and _overwrite_in_place(spare, data):
        try:
            _exchange(spare, path)
        except OSError:  # e.g. a filesystem without RENAME_EXCHANGE: the portable way below
            pass
        else:
            fsync_dir(wal_dir)
            return
    write_atomic(path, data)
    with contextlib.suppress(OSError):  # best effort: the next commit then needs no allocation
        write_atomic(spare, data)


def _overwrite_in_place(path: str, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if os.fstat(fd).st_size != len(data) or os.pwrite(fd, data, 0) != len(data):
            return False
        os.fsync(fd)
        return True
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        func = libc.renameat2
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return func


def _exchange_available() -> bool:
    return _renameat2() is not None


def _exchange(a: str, b: str) -> None:
    func = _renameat2()
    assert func is not None
    if func(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"renameat2(RENAME_EXCHANGE) failed: {os.strerror(err)}", a)
