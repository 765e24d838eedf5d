"""Wake-ups for the WAL's readers: an inotify watch on the WAL directory, so a reader that has read
everything waits for the writer's next write instead of looking again every few milliseconds.

The writer (the ingest process) appends to segment files and creates new ones; every such change is
an ``IN_MODIFY`` or ``IN_CREATE`` event on the directory. :class:`WalWatch` turns the events on
segment files into a **generation**, a counter that only grows: a reader takes
``seen = watch.changes()`` *before* it reads, and after a read that found nothing it waits only while
``watch.changes() == seen`` and the watch's fd stays unreadable. An event that arrives between the
read and the wait is already queued on the fd, so no write is missed; a spurious wake-up costs one
empty read. Events on other files of the directory (the shipper's own cursors, locks) do not count.

One watch serves every reader thread of a process (inotify instances are few: 128 per user by
default). It is Linux only (``ctypes`` on libc); where it cannot be opened, :meth:`WalWatch.open`
returns None and the readers poll as before. The kernel coalesces identical unread events and
overflows into one ``IN_Q_OVERFLOW``, which counts as a change, so its memory is bounded.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import struct
import threading

from .format import parse_segment_name

__all__ = ["WalWatch"]

log = logging.getLogger(__name__)

IN_MODIFY = 0x0000_0002
IN_MOVED_TO = 0x0000_0080
IN_CREATE = 0x0000_0100
IN_Q_OVERFLOW = 0x0000_4000
IN_NONBLOCK = 0o0004000
IN_CLOEXEC = 0o2000000
_MASK = IN_MODIFY | IN_CREATE | IN_MOVED_TO
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name
_READ_SIZE = 64 * 1024


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6", use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    except (OSError, AttributeError):
        return None
    return libc


class WalWatch:
    """The generation of a WAL directory's segment files; see the module docstring."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self._generation = 0
        self.overflows = 0

    @classmethod
    def open(cls, wal_dir: str) -> WalWatch | None:
        """Watch ``wal_dir`` (which must exist); None, with one log line, where inotify is unavailable."""
        libc = _libc()
        if libc is None:
            log.info("no inotify here: the shipper polls the WAL")
            return None
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            log.warning(
                "cannot watch the WAL (inotify_init1: %s%s); the shipper polls it instead",
                os.strerror(err),
                ", raise fs.inotify.max_user_instances" if err == errno.EMFILE else "",
            )
            return None
        if libc.inotify_add_watch(fd, os.fsencode(wal_dir), _MASK) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            log.warning("cannot watch %s (%s); the shipper polls it instead", wal_dir, os.strerror(err))
            return None
        return cls(fd)

    def fileno(self) -> int:
        """Readable while events wait to be taken by :meth:`changes`."""
        return self._fd

    def changes(self) -> int:
        """Take the queued events; the generation after them (it grew if a segment file changed)."""
        with self._lock:
            if self._fd < 0:
                return self._generation
            while True:
                try:
                    data = os.read(self._fd, _READ_SIZE)
                except BlockingIOError:
                    break
                except OSError as exc:
                    log.warning("the WAL watch failed (%s); the shipper polls the WAL from now on", exc)
                    self._close_locked()
                    self._generation += 1
                    break
                if self._counts(data):
                    self._generation += 1
            return self._generation

    def _counts(self, data: bytes) -> bool:
        """Does this read's events include a change to a segment file (or a queue overflow)?"""
        offset, changed = 0, False
        while offset + _EVENT.size <= len(data):
            _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            name = data[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0")
            offset += _EVENT.size + length
            if mask & IN_Q_OVERFLOW:
                self.overflows += 1
                changed = True
            elif name and parse_segment_name(os.fsdecode(name)) is not None:
                changed = True
        return changed

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
