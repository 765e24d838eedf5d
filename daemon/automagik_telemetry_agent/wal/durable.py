"""Crash-atomic file operations: the only way WAL metadata reaches disk.

``write_atomic`` = write a temp file, fsync it, rename it over the target, fsync the directory.
After a crash the target holds either the old or the new content, never a mix.
"""

from __future__ import annotations

import contextlib
import os


def fsync_dir(path: str) -> None:
    """Make a directory's entries (creates, renames, deletes) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes) -> None:
    directory = os.path.dirname(path) or "."
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(directory)


def append_line_durably(path: str, line: str) -> None:
    """Append one line to a small ledger file and fsync it (used for rare events only)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        view = memoryview(line.encode() + b"\n")
        try:
            while view:
                view = view[os.write(fd, view) :]  # a nearly full disk can take part of a line
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)  # all of the line or none of it, never a torn line
            raise
        os.fsync(fd)
    finally:
        os.close(fd)
