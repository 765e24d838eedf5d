"""ClickHouse 26.9 in this process (chDB, the ``embedded`` extra): a data directory held by one process.

chDB's rules, and how this module keeps them:

* **One process per data directory.** chDB opens its directory like a server and a second process
  fails with an unhelpful "Error initializing EmbeddedServer". :class:`EmbeddedStore` takes an
  ``flock`` on ``<dir>/automagik-telemetry.lock`` (holding the holder's pid) before opening, so a
  second opener gets one clear line and ``automagik-telemetry query`` knows to ask the holder
  (:mod:`.query`) instead.
* **One data directory per process.** Opening a second path in the same process raises; reported
  as a configuration error.
* **It reads ``config.xml``/``config.yaml``/``config.yml`` from the current directory**, at
  ``import chdb`` (which opens an in-memory engine) and at every open: a file of that name in
  whatever directory the agent was started from could move the data path or break start-up. Both
  happen with the working directory switched to the store's own directory, under a process-wide
  lock, and a store directory holding such a file is refused.

Errors come back as exceptions whose text starts with (or contains) ``Code: N``; they are
classified by the same table as the server's answers (:mod:`.errors`).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import importlib.util
import logging
import os
import re
import threading
from collections.abc import Iterator
from typing import Any

from .errors import ErrorClass, class_of_code, error_text
from .sink import InsertResult
from .sql import quote

__all__ = [
    "INSTALL_HINT",
    "LOCK_FILE",
    "ChdbUnavailable",
    "EmbeddedStore",
    "StoreBusy",
    "StoreUnusable",
    "chdb_missing",
    "classify_chdb_error",
    "load_chdb",
    "lock_holder",
]

log = logging.getLogger(__name__)

LOCK_FILE = "automagik-telemetry.lock"
#: What to do when chDB is not installed (one line, printed by the agent, the shipper and `query`).
INSTALL_HINT = (
    "the embedded sink needs chDB, which is not installed: install 'automagik-telemetry[embedded]' "
    "(pip install chdb-core), or use --sink clickhouse / --sink none"
)
_CWD_CONFIGS = ("config.xml", "config.yaml", "config.yml")
_CODE_ANYWHERE = re.compile(r"Code:\s*(\d+)")
#: Settings of the read-only session that serves `automagik-telemetry query`: its statements run in
#: the shipper's process, so they are bounded and cannot write, read files or reach the network
#: (readonly = 1 also forbids changing these settings from the query).
READER_SETTINGS = (
    ("max_execution_time", 60),
    ("max_memory_usage", 1024**3),
    ("max_result_bytes", 256 * 1024**2),
)

_OPEN_LOCK = threading.Lock()  # import and open switch the process's working directory


class ChdbUnavailable(Exception):
    """chDB cannot be imported; ``str()`` is the one line to print (exit 69)."""


class StoreUnusable(OSError):
    """The store's directory cannot be used (not creatable, not writable, holds a chDB config file);
    ``str()`` is the one line to print."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(errno, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class StoreBusy(Exception):
    """Another process holds the store's directory; ``pid`` is that process (None if unknown)."""

    def __init__(self, directory: str, pid: int | None) -> None:
        who = f"process {pid}" if pid else "another process"
        super().__init__(
            f"the embedded store {directory} is in use by {who} (chDB allows one process per data directory)"
        )
        self.directory = directory
        self.pid = pid


def chdb_missing() -> str | None:
    """:data:`INSTALL_HINT` if chDB is not importable here, else None (cheap: does not import it)."""
    try:
        spec = importlib.util.find_spec("chdb")
    except (ImportError, ValueError):
        spec = None
    return INSTALL_HINT if spec is None else None


def lock_holder(directory: str) -> int | None:
    """The pid recorded in the store's lock file (the last holder: check the lock before trusting it)."""
    try:
        with open(os.path.join(directory, LOCK_FILE), encoding="ascii") as f:
            text = f.read().strip()
    except (OSError, ValueError):
        return None
    return int(text) if text.isdigit() else None


@contextlib.contextmanager
def _in_directory(directory: str) -> Iterator[None]:
    """Run with the working directory switched to ``directory`` (chDB reads ./config.xml)."""
    with _OPEN_LOCK:
        try:
            previous: str | None = os.getcwd()
        except OSError:  # the working directory was deleted: nothing there to read anyway
            previous = None
        os.chdir(directory)
        try:
            yield
        finally:
            if previous is not None:
                with contextlib.suppress(OSError):
                    os.chdir(previous)


def _import_session_module(directory: str) -> Any:
    """``chdb.session``, imported with ``directory`` as the working directory; ChdbUnavailable if missing."""
    if chdb_missing():
        raise ChdbUnavailable(INSTALL_HINT)
    try:
        with _in_directory(directory):
            return importlib.import_module("chdb.session")
    except ImportError as exc:
        raise ChdbUnavailable(
            f"chDB is installed but cannot be loaded ({exc}): reinstall 'automagik-telemetry[embedded]'"
        ) from None


def load_chdb(directory: str) -> None:
    """Create the store's directory and import chDB now (guarded), so that a process about to use the
    store fails at start with one line: OSError (directory unusable) or :class:`ChdbUnavailable`."""
    directory = os.path.abspath(directory)
    try:
        os.makedirs(directory, mode=0o750, exist_ok=True)
    except OSError as exc:
        raise StoreUnusable(
            f"cannot create the embedded store directory {directory}: {exc.strerror}", exc.errno
        ) from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise StoreUnusable(f"the embedded store directory {directory} is not writable by this user")
    _import_session_module(directory)


def error_code(exc: BaseException) -> int | None:
    """The ClickHouse error code in a chDB exception's text."""
    m = _CODE_ANYWHERE.search(str(exc))
    return int(m.group(1)) if m else None


def classify_chdb_error(exc: BaseException) -> InsertResult:
    """A chDB exception as a failed :class:`InsertResult` (class from its ``Code: N``, unknown = TRANSIENT)."""
    code = error_code(exc)
    text = str(exc)
    # chDB prefixes "Streaming insert finish failed: " etc.; keep the server's text from "Code:" on.
    at = text.find("Code:")
    message = error_text(text[at:] if at >= 0 else text)
    error_class = class_of_code(code, message) if code is not None else ErrorClass.TRANSIENT
    return InsertResult(False, error_class, code, message)


class EmbeddedStore:
    """A chDB data directory held by this process: the lock, a writer session and a read-only session.

    ``open()`` takes the lock without waiting (:class:`StoreBusy` if another process has it), then
    opens the sessions. The writer session is for the shipper (schema, inserts); the reader session
    (``readonly = 1`` and :data:`READER_SETTINGS`) serves ad-hoc queries, concurrently with inserts.
    """

    def __init__(self, directory: str) -> None:
        self.directory = os.path.abspath(directory)
        self._lock_fd: int | None = None
        self._ready = False
        self._writer: Any = None
        self._reader: Any = None
        self._writer_lock = threading.Lock()  # a chDB connection runs one statement (or insert stream) at a time
        self._reader_lock = threading.Lock()
        self._open_lock = threading.Lock()  # the sinks of several tables share one store

    @property
    def is_open(self) -> bool:
        """The directory is held and the sessions are open (not while :meth:`open` is still opening them)."""
        return self._ready

    def open(self, reader: bool = True, writer: bool = True) -> EmbeddedStore:
        """Take the directory and open the sessions asked for; idempotent (and safe from several threads)."""
        with self._open_lock:
            return self._open(reader, writer)

    def _open(self, reader: bool, writer: bool) -> EmbeddedStore:
        if self._ready:
            return self
        try:
            os.makedirs(self.directory, mode=0o750, exist_ok=True)
        except OSError as exc:
            raise StoreUnusable(
                f"cannot create the embedded store directory {self.directory}: {exc.strerror}", exc.errno
            ) from None
        for name in _CWD_CONFIGS:
            if os.path.exists(os.path.join(self.directory, name)):
                raise StoreUnusable(
                    f"the embedded store directory {self.directory} holds a {name}, which chDB "
                    "would read as its server configuration: move it away"
                )
        session_module = _import_session_module(self.directory)
        self._take_lock()
        try:
            with _in_directory(self.directory):
                if writer:
                    self._writer = session_module.Session(self.directory)
                if reader:
                    self._reader = session_module.Session(self.directory)
            if self._reader is not None:
                for name, value in READER_SETTINGS:
                    self._reader.query(f"SET {name} = {value}")
                self._reader.query("SET readonly = 1")
        except BaseException:
            self.close()
            raise
        self._ready = True
        return self

    def _take_lock(self) -> None:
        path = os.path.join(self.directory, LOCK_FILE)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreBusy(self.directory, lock_holder(self.directory)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def close(self, wait_s: float = 5.0) -> None:
        """Close the sessions and release the directory. A session still running a statement after
        ``wait_s`` (an abandoned insert, a long query) is left open rather than closed under it: the
        process is exiting, and chDB's own files are crash-safe."""
        self._ready = False
        left_open = False
        for attr, lock in (("_reader", self._reader_lock), ("_writer", self._writer_lock)):
            session = getattr(self, attr)
            if session is None:
                continue
            if not lock.acquire(timeout=wait_s):
                log.warning(
                    "embedded store %s: a statement is still running; leaving it (and the directory's "
                    "lock) to the end of this process",
                    self.directory,
                )
                left_open = True
                continue
            try:
                setattr(self, attr, None)
                with contextlib.suppress(Exception):
                    session.close()
            finally:
                lock.release()
        if self._lock_fd is not None and not left_open:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    # ------------------------------------------------------------------ statements
    def execute(self, sql: str, fmt: str = "TabSeparated") -> bytes:
        """Run ``sql`` on the writer session; its output bytes (a FORMAT clause in ``sql`` wins)."""
        with self._writer_lock:
            return bytes(self._session("_writer").query(sql, fmt).bytes())

    def read(self, sql: str, fmt: str = "TabSeparated") -> bytes:
        """Run ``sql`` on the read-only session (for `automagik-telemetry query`)."""
        with self._reader_lock:
            return bytes(self._session("_reader").query(sql, fmt).bytes())

    def insert(self, target: str, body: bytes, token: str | None, skip_unknown: bool = False) -> None:
        """One INSERT of a JSONEachRow ``body``, deduplicated by ``token``; raises chDB's error.
        ``skip_unknown``: keys the table has no column for are left out (a traces table before migration 4)."""
        # Synchronous, said explicitly: ClickHouse 26.3+ defaults to async_insert, and the shipper batches.
        chosen = ["async_insert = 0"]
        if token is not None:
            chosen.append(f"insert_deduplication_token = {quote(token)}")
        if skip_unknown:
            chosen.append("input_format_skip_unknown_fields = 1")
        settings = f" SETTINGS {', '.join(chosen)}"
        # One query with the rows inline, not chDB's streaming inserter (send_insert/append/finish), which
        # is about twice as fast but loses errors raised while the block is written: chdb-core 26.9's
        # finish() reported rows_written for a block the table refused (Code 252, too many partitions),
        # and the rows were gone. The body is orjson output, so valid UTF-8.
        sql = f"INSERT INTO {target}{settings} FORMAT JSONEachRow\n" + body.decode("utf-8")
        with self._writer_lock:
            self._session("_writer").query(sql)

    def _session(self, attr: str) -> Any:
        session = getattr(self, attr)
        if session is None:
            raise RuntimeError(f"the embedded store {self.directory} is closed")
        return session
