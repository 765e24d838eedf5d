"""The WAL writer: appends, rotation, and the calls into recovery (:mod:`.recovery`, at open) and retention
and the disk policy (:mod:`.retention`, in :meth:`WalWriter.maintain`).

One writer per WAL directory (an ``flock`` on ``LOCK`` enforces it). Threading contract: every method
is called from one thread, except :meth:`WalWriter.sync`, which a group-commit thread may call
concurrently (it takes the lock that rotation and close take).

Durability contract: :attr:`durable_seq` is the highest sequence number known to be on stable
storage. Nothing above it may be acknowledged to a client (docs/wal.md, "Durability modes").
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
import uuid

from .backlog import BacklogMarks
from .consumers import Consumers
from .durable import fsync_dir, write_atomic
from .format import (
    AGENT_ID_FILE,
    LOCK_FILE,
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    encode_record_header,
    encode_segment_header,
    new_salt,
    segment_name,
)
from .options import WalLockedError, WalOptions, WalWriteError
from .policy import DiskPolicy
from .recovery import recover_segments
from .retention import DISK_FULL_ERRNOS, DropReason, delete_segment, over_limits, retain, unshipped_backlog
from .segment import KindRanges, SegmentFile, add_kind
from .signals import Signal
from .stats import WalStats

log = logging.getLogger(__name__)

_MAX_IOV = 1000  # writev takes at most IOV_MAX (1024) buffers
#: Bytes of segments found at start whose record kinds one maintain() may scan (at least one segment).
KINDS_SCAN_BUDGET = 64 * 1024 * 1024


class WalWriter:
    def __init__(self, wal_dir: str, options: WalOptions | None = None) -> None:
        self.dir = os.path.abspath(wal_dir)
        self.options = options or WalOptions()
        self.options.validate()
        self.stats = WalStats()
        self.agent_id = ""
        self._lock = threading.Lock()
        self._dir_lock_fd = -1
        self._sealed: list[SegmentFile] = []
        self._fd = -1
        self._active: SegmentFile | None = None
        self._salt = 0
        self._offset = 0  # bytes of the active segment that reached the file
        self._chunks: list[bytes | memoryview] = []  # appended, not yet handed to the OS
        self._chunk_bytes = 0
        self._buf_first_seq = 0
        self._buf_kinds: dict[int, list[int]] = {}  # kind -> [first, last] seq of the buffered records
        self._next_seq = 1
        self._written_seq = 0  # highest seq handed to the OS
        self.durable_seq = 0  # highest seq on stable storage
        self._consumers = Consumers(self.dir)  # every signal's cursor, and the retention floors
        self.accepting = True  # False while the disk policy refuses new records
        self._rotate_pending = False
        # The unshipped backlog, as of the last maintain() (wal/backlog.py says how exact it is).
        self._marks = BacklogMarks()
        self.unshipped_bytes = 0
        self.oldest_unshipped_time: float | None = None  # write time (epoch s) of the oldest unshipped record

    # ------------------------------------------------------------------ open and recovery
    def open(self) -> WalWriter:
        os.makedirs(self.dir, mode=0o750, exist_ok=True)
        self._lock_dir()
        self.agent_id = self._load_agent_id()
        self._consumers.open()
        recovered = recover_segments(self.dir, self.stats, self._marks)
        self._sealed, last_seq = recovered.segments, recovered.last_seq
        # Never a number at or below any signal's cursor or floor (docs/wal.md, "Sequence numbers").
        self._next_seq = max(last_seq, self._consumers.highest()) + 1
        self._written_seq = self.durable_seq = self._next_seq - 1
        try:
            self._start_segment()
        except OSError as exc:
            if exc.errno not in DISK_FULL_ERRNOS:
                raise
            # Start anyway on a full disk: appends are refused (disk_full) and retried after maintain()
            # finds room (or the disk policy makes some), instead of leaving clients without a socket.
            log.error(
                "WAL directory %s: cannot create a segment (%s); refusing records until there is room",
                self.dir,
                exc.strerror,
            )
            self.stats.write_errors += 1
            self._rotate_pending = True
            self.accepting = False
        return self

    def _lock_dir(self) -> None:
        fd = os.open(os.path.join(self.dir, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise WalLockedError(f"WAL directory {self.dir} is in use by another agent process") from None
        self._dir_lock_fd = fd

    def _load_agent_id(self) -> str:
        path = os.path.join(self.dir, AGENT_ID_FILE)
        with contextlib.suppress(OSError), open(path) as f:
            value = f.read().strip()
            if len(value) == 32 and all(c in "0123456789abcdef" for c in value):
                return value
        value = uuid.uuid4().hex
        write_atomic(path, value.encode() + b"\n")
        return value

    # ------------------------------------------------------------------ segments
    def _start_segment(self) -> None:
        first = self._next_seq
        path = os.path.join(self.dir, segment_name(first))
        salt = new_salt()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o640)
        created_ns = time.time_ns()
        try:
            header = encode_segment_header(salt, first, created_ns)
            os.write(fd, header)
            os.fdatasync(fd)
            fsync_dir(self.dir)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        self._fd = fd
        self._salt = salt
        self._offset = len(header)
        self._active = SegmentFile(first, path, self._offset, kinds={})
        self.stats.segments_created += 1
        self._marks.mark(first, created_ns / 1e9, first, self._offset)

    def _rotate(self) -> None:
        """Seal the active segment (synced) and start the next one.

        If the new segment cannot be created (disk full), the writer stays without an active
        segment and every append raises WalWriteError until a later rotation succeeds.
        """
        self.flush()
        with self._lock:
            active = self._active
            if active is not None:
                self._sync_locked()
                os.close(self._fd)
                self._fd = -1
                self._active = None
                active.size = self._offset
                self._offset = 0  # no active segment until _start_segment succeeds (total_bytes)
                active.last_seq = self._next_seq - 1
                if active.last_seq >= active.first_seq:
                    self._sealed.append(active)
                else:
                    os.unlink(active.path)
                    fsync_dir(self.dir)
            try:
                self._start_segment()
            except OSError as exc:
                self._rotate_pending = True
                self.stats.write_errors += 1
                if exc.errno in DISK_FULL_ERRNOS:
                    self.accepting = False
                raise WalWriteError(self._next_seq, exc) from exc
        self._rotate_pending = False

    # ------------------------------------------------------------------ appends
    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def active_salt(self) -> int:
        """Salt of the active segment, which the last append went to. (seq, salt) identifies a record."""
        return self._salt

    @property
    def written_seq(self) -> int:
        return self._written_seq

    def append(self, payload: bytes | memoryview, count: int, kind: int = 1) -> int:
        """Buffer one record; return its sequence number. It reaches the file at :meth:`flush`."""
        if self._rotate_pending or self._fd < 0:
            self._rotate()
        seq = self._next_seq
        if not self._chunks:
            self._buf_first_seq = seq
        span = self._buf_kinds.get(kind)
        if span is None:
            self._buf_kinds[kind] = [seq, seq]
        else:
            span[1] = seq
        self._chunks.append(encode_record_header(self._salt, seq, kind, count, payload))
        self._chunks.append(payload)
        self._chunk_bytes += RECORD_HEADER_SIZE + len(payload)
        self._next_seq = seq + 1
        self.stats.appended_records += 1
        self.stats.appended_items += count
        if self._chunk_bytes >= self.options.write_buffer_bytes or len(self._chunks) >= _MAX_IOV:
            self.flush()
        if self._offset + self._chunk_bytes >= self.options.segment_bytes:
            self._rotate_pending = True
        return seq

    def flush(self) -> None:
        """Hand buffered records to the OS (one writev). On failure, roll them back and raise WalWriteError."""
        if not self._chunks:
            return
        total = self._chunk_bytes
        try:
            written = os.writev(self._fd, self._chunks)
            if written < total:  # short write (a signal, a size limit): finish with plain writes
                rest = memoryview(b"".join(self._chunks))[written:]
                while rest:
                    n = os.write(self._fd, rest)
                    rest = rest[n:]
        except OSError as exc:
            self._rollback(exc)
        if self._active is not None:
            self._marks.wrote(self._buf_first_seq, self._active.first_seq, self._offset, total)
            self._note_kinds(self._active.kinds)
        self._buf_kinds.clear()
        self._offset += total
        self.stats.appended_bytes += total
        self._written_seq = self._next_seq - 1
        self._chunks.clear()
        self._chunk_bytes = 0

    def _note_kinds(self, kinds: KindRanges | None) -> None:
        """What the segment holds: the kinds of the records just written (before ``written_seq`` moves)."""
        if kinds is not None:
            for kind, (first, last) in self._buf_kinds.items():
                add_kind(kinds, kind, first, last)

    def _rollback(self, exc: OSError) -> None:
        first_failed = self._buf_first_seq
        self.stats.write_errors += 1
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, self._offset)
        self._chunks.clear()
        self._chunk_bytes = 0
        self._buf_kinds.clear()
        self._next_seq = first_failed
        if exc.errno in DISK_FULL_ERRNOS:
            self.accepting = False
            # A per-file limit (EFBIG) is cured by a new segment; ENOSPC by the disk policy.
            self._rotate_pending = self._offset > SEGMENT_HEADER_SIZE
        raise WalWriteError(first_failed, exc) from exc

    def sync(self, fsync: bool = True) -> int:
        """Make everything handed to the OS durable; return :attr:`durable_seq`. Thread-safe."""
        with self._lock:
            return self._sync_locked(fsync)

    def _sync_locked(self, fsync: bool = True) -> int:
        target = self._written_seq
        if target <= self.durable_seq or self._fd < 0:
            return self.durable_seq
        if fsync:
            started = time.perf_counter()
            os.fdatasync(self._fd)
            elapsed = time.perf_counter() - started
            self.stats.fsyncs += 1
            self.stats.fsync_seconds += elapsed
            self.stats.fsync_latency.observe(elapsed)
        self.durable_seq = target
        return target

    # ------------------------------------------------------------------ retention and disk policy
    @property
    def cursor_seq(self) -> int:
        """Every record at or below it is consumed by its own signal (the oldest any signal still needs,
        minus one; with nothing unconsumed, the highest cursor or the last written seq)."""
        oldest = self.oldest_unconsumed_seq()
        if oldest is not None:
            return oldest - 1
        return max(self._written_seq, *self._consumers.cursors.values())

    def cursor_seqs(self) -> dict[Signal, int]:
        """Each signal's durable cursor, as of the last maintain()."""
        return dict(self._consumers.cursors)

    def total_bytes(self) -> int:
        return sum(s.size for s in self._sealed) + self._offset + self._chunk_bytes

    def segment_count(self) -> int:
        return len(self._sealed) + (1 if self._active else 0)

    def oldest_unconsumed_seq(self) -> int | None:
        """The first seq some signal still needs (above its own cursor) in the WAL, or None if every signal
        has consumed all of its records. Exact, except in segments found at start whose kinds retention has
        not scanned: there, a lower bound."""
        segments = [*self._sealed, self._active] if self._active is not None else self._sealed
        return self._consumers.oldest_unconsumed(segments)

    def maintain(self) -> None:
        """Delete segments no signal needs and apply the disk policy (:mod:`.retention`). Call about once a
        second."""
        self._consumers.refresh()
        retain(self.dir, self._sealed, self._consumers, self.stats, KINDS_SCAN_BUDGET)
        over = self._over_limits()
        if over and self.options.disk_policy is DiskPolicy.DROP_OLDEST:
            for seg in list(self._sealed):
                if not self._over_limits():
                    break
                if seg.size > SEGMENT_HEADER_SIZE:  # an emptied one frees nothing and holds a place
                    self._delete_segment(seg, reason=over)
            over = self._over_limits()
        self.accepting = not over
        self.unshipped_bytes, self.oldest_unshipped_time = unshipped_backlog(
            self._marks, self.oldest_unconsumed_seq(), self._segment_sizes()
        )

    def _segment_sizes(self) -> list[tuple[int, int]]:
        """(first seq, bytes in the file) of every segment, the active one last."""
        sizes = [(seg.first_seq, seg.size) for seg in self._sealed]
        if self._active is not None:
            sizes.append((self._active.first_seq, self._offset))
        return sizes

    def _over_limits(self) -> DropReason | None:
        return over_limits(self.dir, self.options.max_bytes, self.options.min_free_bytes, self.total_bytes())

    def _delete_segment(self, seg: SegmentFile, reason: DropReason | None) -> bool:
        """Delete a sealed segment (with a reason: dropping and counting its unconsumed records)."""
        deleted = delete_segment(self.dir, seg, reason, self._consumers.current, self.stats)
        if deleted:
            self._sealed.remove(seg)
        return deleted

    # ------------------------------------------------------------------ close
    def close(self) -> None:
        """Flush, fsync and release the directory. Safe to call twice."""
        if self._fd >= 0:
            with contextlib.suppress(WalWriteError):
                self.flush()
            with self._lock:
                with contextlib.suppress(OSError):
                    self._sync_locked()
                os.close(self._fd)
                self._fd = -1
        if self._dir_lock_fd >= 0:
            os.close(self._dir_lock_fd)
            self._dir_lock_fd = -1

    def abandon(self) -> None:
        """Release every fd without flushing or syncing: what the process dying does (crash tests)."""
        self._chunks.clear()
        self._chunk_bytes = 0
        for fd in (self._fd, self._dir_lock_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = self._dir_lock_fd = -1
