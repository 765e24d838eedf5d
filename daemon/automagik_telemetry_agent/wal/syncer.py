"""Group commit: one fsync covers every record written since the last one.

Mode ``interval`` (the default): a background thread fsyncs a write at once if the last fsync began at
least ``interval`` ago, else ``interval`` after that one -- at most one fsync per ``interval`` however
busy, and none held back after a quiet spell -- or as soon as ``max_bytes`` are unsynced; then it calls
``on_durable``. With nothing written it sleeps without a timeout: an idle agent does not wake 20 times
a second for nothing, and a trickle of messages is acknowledged after one fsync, not at a timer.
Mode ``always``: the caller syncs inline after each batch of appends (see ingest).
Mode ``off``: never fsync; records count as durable once handed to the OS (lost on power loss).

An fsync error is not retried: after a failed fsync the kernel may have dropped the dirty pages,
and a later fsync can succeed without them ("fsyncgate"). The error is kept in :attr:`error` and
the agent stops acknowledging and exits, so recovery re-reads what really is on disk.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .writer import WalWriter


class GroupCommitter:
    def __init__(self, writer: WalWriter, interval_s: float, max_bytes: int, on_durable: Callable[[int], None]) -> None:
        self._writer = writer
        self._interval = interval_s
        self._max_bytes = max_bytes
        self._on_durable = on_durable
        self._unsynced_bytes = 0
        self._wake = threading.Event()  # max_bytes reached, or stop: sync now
        self._pending = threading.Event()  # something was written since the last sync started
        self._last_sync = -float("inf")  # monotonic time the last fsync began
        self._stop = False
        self.error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="wal-group-commit", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def unsynced_bytes(self) -> int:
        return self._unsynced_bytes

    def written(self, nbytes: int) -> None:
        """Called by the appending thread after bytes reached the OS."""
        self._unsynced_bytes += nbytes
        if not self._pending.is_set():
            self._pending.set()
        if self._unsynced_bytes >= self._max_bytes:
            self._wake.set()

    def _until_due(self) -> float:
        """Seconds until an fsync may begin: ``interval`` after the last one began (0: now)."""
        return max(0.0, self._last_sync + self._interval - time.monotonic())

    def _run(self) -> None:
        while not self._stop:
            self._pending.wait()  # idle: no timeout, written() or stop() wakes us
            if self._stop:
                break
            delay = self._until_due()
            if delay > 0:
                self._wake.wait(delay)  # writes keep coming: group them (max_bytes or stop cut it short)
            # Cleared before the sync reads written_seq: a write after this point sets them again and
            # is synced now or in the next round, never left waiting.
            self._wake.clear()
            self._pending.clear()
            if self._writer.written_seq <= self._writer.durable_seq:
                continue
            self._unsynced_bytes = 0
            self._last_sync = time.monotonic()
            try:
                seq = self._writer.sync()
            except OSError as exc:
                self.error = exc
                self._on_durable(-1)
                return
            self._on_durable(seq)

    def stop(self) -> None:
        """Stop the thread; the caller does the final sync itself."""
        self._stop = True
        self._pending.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
