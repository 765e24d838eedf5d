"""The dead-letter file: spans that can never be shipped, kept for a human, never silently dropped.

Append-only JSON lines in ``<dir>/dead-letter.jsonl``, one object per span::

    {"time": "2025-01-01T00:00:00.123Z", "reason": "transform", "error_code": null,
     "error": "invalid traceId: not 32 hex characters", "wal_seq": 17, "raw": "<the span line>"}

``reason`` is ``transform`` (the span could not become a row) or ``rejected`` (ClickHouse refused
the row on its own after bisection; ``row`` then holds the row exactly as sent). A batch of entries
is written with one ``write`` per entry and one ``fsync``, before the shipper commits the WAL cursor
past them: a crash in between can repeat entries in this file, never lose them.

Every access takes an ``flock`` on the directory (not the file: ``dead-letter replay`` replaces the
file by a rename, and a lock on the old inode would let an append land in the replaced file):
exclusive to append or rewrite, shared to read. So a replay running next to the shipper never
loses an entry the shipper appends meanwhile, and a reader never sees half a line.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from ..paths import DEAD_LETTER_FILE
from ..wal.durable import fsync_dir

__all__ = ["DeadLetter", "DeadLetterEntry", "DeadLetterReason"]

MAX_RAW = 64 * 1024  # a raw line longer than this is kept truncated (with its length)


class DeadLetterReason(enum.StrEnum):
    """Why a span is in the dead-letter file (the ``reason`` of its line)."""

    TRANSFORM = "transform"  # the span could not become a row
    REJECTED = "rejected"  # ClickHouse refused the row on its own, after bisection
    UNSUPPORTED = "unsupported"  # a record kind the shipper does not ship


@dataclass(frozen=True, slots=True)
class DeadLetterEntry:
    reason: DeadLetterReason
    error: str
    wal_seq: int
    raw: bytes | None = None  # the WAL line (transform failures)
    row: bytes | None = None  # the encoded JSON row as sent (server rejections)
    error_code: int | None = None
    #: The signal the line or row belongs to (``traces``, ``logs``, ``metrics``): which table a replay uses.
    signal: str = "traces"

    def to_json(self, now: float) -> bytes:
        obj: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z",
            "reason": str(self.reason),
            "error_code": self.error_code,
            "error": self.error,
            "wal_seq": self.wal_seq,
            "signal": self.signal,
        }
        if self.row is not None:
            try:
                obj["row"] = orjson.loads(self.row)
            except orjson.JSONDecodeError:
                obj["row_raw"] = self.row.decode("utf-8", "replace")
        if self.raw is not None:
            text = self.raw.decode("utf-8", "replace")
            if len(text) > MAX_RAW:
                obj["raw_length"] = len(text)
                text = text[:MAX_RAW]
            obj["raw"] = text
        return orjson.dumps(obj) + b"\n"


class DeadLetter:
    def __init__(self, directory: str) -> None:
        self.dir = os.path.abspath(directory)
        self.path = os.path.join(self.dir, DEAD_LETTER_FILE)
        self.count = 0  # entries written by this process
        self._lock = threading.Lock()

    def write(self, entries: list[DeadLetterEntry]) -> None:
        """Append ``entries`` and fsync; raises OSError (the caller keeps the data in the WAL)."""
        if not entries:
            return
        now = time.time()
        data = b"".join(e.to_json(now) for e in entries)
        with self._lock:
            os.makedirs(self.dir, mode=0o750, exist_ok=True)
            with self.locked():
                self._append(data)
            self.count += len(entries)

    def _append(self, data: bytes) -> None:
        """Append ``data`` to the file and fsync it; the caller holds the directory lock."""
        created = not os.path.exists(self.path)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        try:
            start = os.lseek(fd, 0, os.SEEK_END)
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(fd, view) :]
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)  # never leave a torn line
                raise
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_dir(self.dir)

    @contextlib.contextmanager
    def locked(self, shared: bool = False) -> Iterator[None]:
        """Hold the directory's flock (exclusive unless ``shared``); blocks while another process holds it.

        Yields without a lock when the directory does not exist (nothing to protect yet).
        """
        try:
            fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def read_lines(self) -> list[bytes]:
        """The file's non-empty lines as stored (newline stripped); call with :meth:`locked` held."""
        try:
            with open(self.path, "rb") as f:
                return [line.rstrip(b"\n") for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def read(self) -> list[dict[str, Any]]:
        """Every entry in the file (for tests and tools)."""
        with self.locked(shared=True):
            return [orjson.loads(line) for line in self.read_lines()]

    def rewrite(self, lines: list[bytes]) -> None:
        """Replace the file by ``lines`` (stored lines, as :meth:`read_lines` returns), crash-atomically.

        Writes a temp file, fsyncs it, renames it over the file and fsyncs the directory: a crash
        leaves either the old file or the new one. Call with :meth:`locked` held (exclusive).
        """
        tmp = f"{self.path}.tmp-{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        try:
            view = memoryview(b"".join(line + b"\n" for line in lines))
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.close(fd)
        os.replace(tmp, self.path)
        fsync_dir(self.dir)
