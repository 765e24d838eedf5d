"""The write-ahead log: durable, append-only segment files between ingest and the shipper.

Format: :mod:`.format` (and docs/wal.md). Writer: :mod:`.writer`, with :mod:`.recovery` at open and
:mod:`.retention` (the disk policy) while it runs. Consumer: :mod:`.reader`.
Cursor: :mod:`.cursor`. Offline inspection: :mod:`.inspect`.
"""

from .cursor import read_cursor, write_cursor
from .policy import DiskPolicy, FsyncMode
from .reader import ReaderStats, WalEntry, WalReader
from .stats import WalStats
from .writer import WalError, WalLockedError, WalOptions, WalWriteError, WalWriter

__all__ = [
    "DiskPolicy",
    "FsyncMode",
    "ReaderStats",
    "WalEntry",
    "WalError",
    "WalLockedError",
    "WalOptions",
    "WalReader",
    "WalStats",
    "WalWriteError",
    "WalWriter",
    "read_cursor",
    "write_cursor",
]
