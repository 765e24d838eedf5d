"""The WAL writer: recovery at open, appends, rotation, retention and the disk policy.

One writer per WAL directory (an ``flock`` on ``LOCK`` enforces it). Threading contract: every method
is called from one thread, except :meth:`WalWriter.sync`, which a group-commit thread may call
concurrently (it takes the lock that rotation and close take).

Durability contract: :attr:`durable_seq` is the highest sequence number known to be on stable
storage. Nothing above it may be acknowledged to a client (docs/wal.md, "Durability modes").
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

from ..latency import FSYNC_BOUNDS_S, LatencyHistogram
from .backlog import BacklogMarks
from .cursor import cursor_path, read_cursor
from .durable import append_line_durably, fsync_dir, write_atomic
from .format import (
    AGENT_ID_FILE,
    DROPS_FILE,
    LOCK_FILE,
    QUARANTINE_SUFFIX,
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    FormatError,
    encode_record_header,
    encode_segment_header,
    new_salt,
    parse_segment_name,
    segment_name,
)
from .segment import Corrupt, Record, SegmentScanner, Tail, open_segment

log = logging.getLogger(__name__)

_MAX_IOV = 1000  # writev takes at most IOV_MAX (1024) buffers

#: Errors that mean "the disk cannot take more now": a policy matter, never a crash.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


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
    disk_policy: str = "drop_oldest"  # or "reject_new"
    write_buffer_bytes: int = 256 * 1024

    def validate(self) -> None:
        if self.segment_bytes < 64 * 1024:
            raise ValueError("segment size must be at least 64 KiB")
        if self.max_bytes and self.max_bytes < 2 * self.segment_bytes:
            raise ValueError("the WAL size cap must be at least twice the segment size")
        if self.disk_policy not in ("drop_oldest", "reject_new"):
            raise ValueError("disk policy must be drop_oldest or reject_new")


@dataclass
class WalStats:
    """Counters the agent exports; every one can explain lost or delayed data."""

    appended_records: int = 0
    appended_items: int = 0
    appended_bytes: int = 0
    fsyncs: int = 0
    fsync_seconds: float = 0.0
    fsync_latency: LatencyHistogram = field(default_factory=lambda: LatencyHistogram(FSYNC_BOUNDS_S))
    segments_created: int = 0
    segments_deleted: int = 0
    dropped_records: Counter = field(default_factory=Counter)  # by reason
    dropped_items: Counter = field(default_factory=Counter)  # by reason
    write_errors: int = 0
    corrupt_records_at_open: int = 0
    torn_tail_bytes_truncated: int = 0
    quarantined_segments: int = 0


@dataclass
class _Segment:
    first_seq: int
    path: str
    size: int
    last_seq: int | None = None  # known exactly for segments this writer sealed


class WalWriter:
    def __init__(self, wal_dir: str, options: WalOptions | None = None) -> None:
        self.dir = os.path.abspath(wal_dir)
        self.options = options or WalOptions()
        self.options.validate()
        self.stats = WalStats()
        self.agent_id = ""
        self._lock = threading.Lock()
        self._dir_lock_fd = -1
        self._sealed: list[_Segment] = []
        self._fd = -1
        self._active: _Segment | None = None
        self._salt = 0
        self._offset = 0  # bytes of the active segment that reached the file
        self._chunks: list[bytes | memoryview] = []  # appended, not yet handed to the OS
        self._chunk_bytes = 0
        self._buf_first_seq = 0
        self._next_seq = 1
        self._written_seq = 0  # highest seq handed to the OS
        self.durable_seq = 0  # highest seq on stable storage
        self._cursor_seq = 0
        self._cursor_mtime = -1.0
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
        self._refresh_cursor(force=True)
        last_seq = self._recover_segments()
        self._next_seq = max(last_seq, self._cursor_seq) + 1
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

    def _list_segment_files(self) -> list[tuple[int, str]]:
        found = []
        for name in os.listdir(self.dir):
            first = parse_segment_name(name)
            if first is not None:
                found.append((first, os.path.join(self.dir, name)))
        found.sort()
        return found

    def _quarantine(self, path: str, why: str) -> None:
        log.error("WAL segment %s is unreadable (%s); moved aside as %s%s", path, why, path, QUARANTINE_SUFFIX)
        os.replace(path, path + QUARANTINE_SUFFIX)
        fsync_dir(self.dir)
        self.stats.quarantined_segments += 1

    def _recover_segments(self) -> int:
        """Validate headers, repair the newest segment; return the last valid seq (0 if none)."""
        segments: list[_Segment] = []
        created: dict[int, float] = {}
        for first, path in self._list_segment_files():
            try:
                fd, header = open_segment(path)
                os.close(fd)
            except (OSError, FormatError) as exc:
                if os.path.getsize(path) < SEGMENT_HEADER_SIZE:
                    # A crash while creating it: it never held a record.
                    os.unlink(path)
                    fsync_dir(self.dir)
                    continue
                self._quarantine(path, str(exc))
                continue
            if header.first_seq != first:
                self._quarantine(path, f"header says first seq {header.first_seq}, name says {first}")
                continue
            segments.append(_Segment(first, path, os.path.getsize(path)))
            created[first] = header.created_ns / 1e9
        last_seq = 0
        while segments:
            newest = segments[-1]
            last_seq = self._repair_newest(newest)
            if last_seq >= newest.first_seq:
                break
            # The newest segment holds no record: remove it (a new one gets a fresh salt).
            os.unlink(newest.path)
            fsync_dir(self.dir)
            segments.pop()
            last_seq = newest.first_seq - 1
        for i, seg in enumerate(segments[:-1]):
            seg.last_seq = segments[i + 1].first_seq - 1
        if segments:
            segments[-1].last_seq = last_seq
        for seg in segments:  # records written before this start: their segment's creation time bounds their age
            self._marks.mark(seg.first_seq, created[seg.first_seq], seg.first_seq, SEGMENT_HEADER_SIZE)
        self._sealed = segments
        return last_seq

    def _repair_newest(self, seg: _Segment) -> int:
        """Scan the newest segment, count corrupt records, truncate a torn tail. Return its last seq."""
        fd = os.open(seg.path, os.O_RDWR | os.O_CLOEXEC)
        try:
            scanner = SegmentScanner.open(fd)
            expected = seg.first_seq
            last = seg.first_seq - 1
            while (item := scanner.next()) is not None:
                if isinstance(item, Record):
                    if item.seq > expected:
                        self.stats.corrupt_records_at_open += item.seq - expected
                    last = item.seq
                    expected = item.seq + 1
                elif isinstance(item, Tail):
                    log.warning(
                        "WAL segment %s: truncating a torn tail of %d bytes at offset %d",
                        seg.path,
                        item.length,
                        item.offset,
                    )
                    os.ftruncate(fd, item.offset)
                    os.fsync(fd)
                    self.stats.torn_tail_bytes_truncated += item.length
                    break
                elif isinstance(item, Corrupt):
                    log.error(
                        "WAL segment %s: %d corrupt bytes at offset %d skipped", seg.path, item.length, item.offset
                    )
            seg.size = os.fstat(fd).st_size
            return last
        finally:
            os.close(fd)

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
        self._active = _Segment(first, path, self._offset)
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
        self._offset += total
        self.stats.appended_bytes += total
        self._written_seq = self._next_seq - 1
        self._chunks.clear()
        self._chunk_bytes = 0

    def _rollback(self, exc: OSError) -> None:
        first_failed = self._buf_first_seq
        self.stats.write_errors += 1
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, self._offset)
        self._chunks.clear()
        self._chunk_bytes = 0
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
        return self._cursor_seq

    def _refresh_cursor(self, force: bool = False) -> None:
        path = cursor_path(self.dir)
        try:
            mtime = os.stat(path).st_mtime
        except FileNotFoundError:
            mtime = 0.0
        if force or mtime != self._cursor_mtime:
            self._cursor_mtime = mtime
            state = read_cursor(self.dir)
            if state.damaged:
                log.error("WAL cursor in %s is damaged; consumers restart from the oldest record", self.dir)
            self._cursor_seq = state.seq

    def total_bytes(self) -> int:
        return sum(s.size for s in self._sealed) + self._offset + self._chunk_bytes

    def segment_count(self) -> int:
        return len(self._sealed) + (1 if self._active else 0)

    def oldest_unconsumed_seq(self) -> int | None:
        """The first seq above the cursor still in the WAL, or None if everything is consumed."""
        if self._written_seq <= self._cursor_seq:
            return None
        for seg in self._sealed:
            if seg.last_seq is not None and seg.last_seq > self._cursor_seq:
                return max(seg.first_seq, self._cursor_seq + 1)
        return max(self._active.first_seq if self._active else 1, self._cursor_seq + 1)

    def maintain(self) -> None:
        """Delete consumed segments and apply the disk policy. Call about once a second."""
        self._refresh_cursor()
        while self._sealed and (self._sealed[0].last_seq or 0) <= self._cursor_seq:
            if not self._delete_segment(self._sealed[0], reason=None):
                break
        over = self._over_limits()
        if over and self.options.disk_policy == "drop_oldest":
            for seg in list(self._sealed):
                if not self._over_limits():
                    break
                self._delete_segment(seg, reason=over)
            over = self._over_limits()
        self.accepting = not over
        self._update_backlog()

    def _update_backlog(self) -> None:
        """Recompute :attr:`unshipped_bytes` and :attr:`oldest_unshipped_time` (read by the metrics)."""
        oldest = self.oldest_unconsumed_seq()
        mark = self._marks.find(oldest) if oldest is not None else None
        if mark is None:
            self.unshipped_bytes, self.oldest_unshipped_time = 0, None
            return
        unshipped = 0  # record bytes (headers and payloads) from the mark on
        sizes = [(seg.first_seq, seg.size) for seg in self._sealed]
        if self._active is not None:
            sizes.append((self._active.first_seq, self._offset))
        for first, size in sizes:
            if first >= mark.segment:
                unshipped += max(0, size - (mark.offset if first == mark.segment else SEGMENT_HEADER_SIZE))
        self.unshipped_bytes = unshipped
        self.oldest_unshipped_time = mark.time

    def _over_limits(self) -> str | None:
        opts = self.options
        if opts.max_bytes and self.total_bytes() > opts.max_bytes:
            return "wal_size_cap"
        if opts.min_free_bytes:
            try:
                st = os.statvfs(self.dir)
            except OSError:
                return None
            if st.f_bavail * st.f_frsize < opts.min_free_bytes:
                return "disk_free_watermark"
        return None

    def _delete_segment(self, seg: _Segment, reason: str | None) -> bool:
        """Delete a sealed segment. With a reason, unconsumed records in it are dropped and counted.

        A consumer holds a shared flock on the segments of the batch it is shipping; this takes an
        exclusive one, so a segment is never dropped under a batch in flight and the count is exact.
        """
        try:
            fd = os.open(seg.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self._sealed.remove(seg)
            return True
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            self._refresh_cursor(force=True)
            ledger_line = ""
            if reason is not None:
                records, items, first, last = self._count_unconsumed(fd)
                if records:
                    self.stats.dropped_records[reason] += records
                    self.stats.dropped_items[reason] += items
                    log.error(
                        "WAL disk policy (%s): dropped %d unshipped records (%d items), seq %d..%d",
                        reason,
                        records,
                        items,
                        first,
                        last,
                    )
                    ledger_line = (
                        f"{time.time_ns()} first_seq={first} last_seq={last} records={records} "
                        f"items={items} reason={reason}"
                    )
                    try:
                        append_line_durably(os.path.join(self.dir, DROPS_FILE), ledger_line)
                        ledger_line = ""
                    except OSError as exc:
                        if exc.errno not in DISK_FULL_ERRNOS:
                            raise
                        # The disk is full: the ledger line goes in once the unlink below made room.
            os.unlink(seg.path)
            fsync_dir(self.dir)
        finally:
            os.close(fd)  # the space is freed once the last fd is closed
        self._sealed.remove(seg)
        self.stats.segments_deleted += 1
        if ledger_line:
            append_line_durably(os.path.join(self.dir, DROPS_FILE), ledger_line)
        return True

    def _count_unconsumed(self, fd: int) -> tuple[int, int, int, int]:
        records = items = 0
        first = last = 0
        try:
            scanner = SegmentScanner.open(fd)
        except FormatError:
            return 0, 0, 0, 0
        while (item := scanner.next()) is not None:
            if isinstance(item, Tail):
                break
            if isinstance(item, Record) and item.seq > self._cursor_seq:
                records += 1
                items += item.header.count
                first = first or item.seq
                last = item.seq
        return records, items, first, last

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
