"""The WAL writer's options, and the errors it reports (:mod:`.writer`)."""

from __future__ import annotations

from dataclasses import dataclass

from .policy import DiskPolicy
from .retention import DISK_FULL_ERRNOS


class WalError(Exception):
    """Base class of WAL errors the agent reports to the operator."""


class WalLockedError(WalError):
    """Another process holds the WAL directory."""


class WalWriteError(WalError):
    """Buffered records from ``first_failed_seq`` on did not reach the file; they were rolled back."""

    def __init__(self, first_failed_seq: int, err: OSError) -> None:
        super().__init__(f"WAL write failed from seq {first_failed_seq}: {err.strerror}")
        self.first_failed_seq = first_failed_seq
        self.errno = err.errno
        self.disk_full = err.errno in DISK_FULL_ERRNOS


@dataclass
class WalOptions:
    segment_bytes: int = 64 * 1024 * 1024
    max_bytes: int = 4 * 1024 * 1024 * 1024  # total size cap of all segments; 0 = no cap
    min_free_bytes: int = 256 * 1024 * 1024  # free-disk watermark; 0 = none
    disk_policy: DiskPolicy = DiskPolicy.DROP_OLDEST
    write_buffer_bytes: int = 256 * 1024

    def validate(self) -> None:
        if self.segment_bytes < 64 * 1024:
            raise ValueError("segment size must be at least 64 KiB")
        if self.max_bytes and self.max_bytes < 2 * self.segment_bytes:
            raise ValueError("the WAL size cap must be at least twice the segment size")
        try:
            self.disk_policy = DiskPolicy(self.disk_policy)
        except ValueError:
            raise ValueError("disk policy must be drop_oldest or reject_new") from None
