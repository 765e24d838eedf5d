"""The write-ahead log: durable, append-only segment files between ingest and the shipper.

Format: :mod:`.format` (and docs/wal.md). Writer: :mod:`.writer`. Consumer: :mod:`.reader`.
Cursor: :mod:`.cursor`. Offline inspection: :mod:`.inspect`.
"""

from .cursor import read_cursor, write_cursor
from .reader import ReaderStats, WalEntry, WalReader
from .writer import WalError, WalLockedError, WalOptions, WalStats, WalWriteError, WalWriter

__all__ = [
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
