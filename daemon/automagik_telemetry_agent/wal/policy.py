"""The WAL's two operator choices, as enums: when appends become durable, and what a full disk does."""

from __future__ import annotations

import enum


class FsyncMode(enum.StrEnum):
    ALWAYS = "always"  # fdatasync before every acknowledgement
    INTERVAL = "interval"  # group commit: fdatasync every wal.fsync_interval_ms or wal.fsync_bytes
    OFF = "off"  # never fdatasync: a power loss loses what the OS had not written


class DiskPolicy(enum.StrEnum):
    DROP_OLDEST = "drop_oldest"  # delete the oldest unshipped segment (counted exactly, with a ledger)
    REJECT_NEW = "reject_new"  # refuse new records (clients count the rejections)
