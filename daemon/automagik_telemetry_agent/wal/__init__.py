"""The write-ahead log: durable, append-only segment files between ingest and the shipper.

Format: :mod:`.format` (docs/wal.md). Writer: :mod:`.writer`. Consumers: :mod:`.reader`, one per
signal (:mod:`.signals`). Cursors: :mod:`.cursor`. Offline inspection: :mod:`.inspect`.
"""

from .cursor import read_cursor, write_cursor
from .options import WalError, WalLockedError, WalOptions, WalWriteError
from .policy import DiskPolicy, FsyncMode
from .reader import ReaderStats, WalEntry, WalReader
from .signals import Signal
from .stats import WalStats
from .writer import WalWriter

__all__ = [
    "DiskPolicy",
    "FsyncMode",
    "ReaderStats",
    "Signal",
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
