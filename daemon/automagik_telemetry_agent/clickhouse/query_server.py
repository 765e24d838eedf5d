"""The query socket of a process holding the embedded store: ``<embedded.dir>/query.sock`` (mode 0600).

Wire format (one connection per query): the client sends one JSON line ``{"v": 1, "sql": "...",
"format": "TabSeparated"}``; the server answers one JSON line, ``{"ok": true, "size": N}`` followed by
exactly N bytes of output, or ``{"ok": false, "error": "...", "code": N|null}``. The client is
:mod:`.query`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from .. import exitcodes
from ..config import SUN_PATH_MAX
from .chdb import classify_chdb_error

__all__ = [
    "MAX_REQUEST",
    "SOCKET_NAME",
    "QueryError",
    "QueryServer",
    "QueryServerUnavailable",
    "check_format",
    "socket_path",
]

log = logging.getLogger(__name__)

SOCKET_NAME = "query.sock"
MAX_REQUEST = 1024 * 1024
REQUEST_TIMEOUT_S = 10.0  # to read a request line, and per send of the answer
_FORMAT = re.compile(r"[A-Za-z][A-Za-z0-9]{0,63}")


class QueryError(Exception):
    """A query that could not be answered; ``str()`` is one line, ``exit_code`` the command's exit code."""

    def __init__(self, message: str, exit_code: int = exitcodes.FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class QueryServerUnavailable(OSError):
    """The query socket cannot be served (its path is too long); shipping goes on without it."""

    def __init__(self, message: str) -> None:
        super().__init__(None, message)


def socket_path(directory: str) -> str:
    return os.path.join(os.path.abspath(directory), SOCKET_NAME)


def check_format(fmt: str) -> str:
    """``fmt`` if it is a ClickHouse output format name, else :class:`QueryError` (exit 2)."""
    if not _FORMAT.fullmatch(fmt or ""):
        raise QueryError(
            f"--format {fmt!r} is not a ClickHouse output format name (examples: TabSeparated, "
            "PrettyCompact, JSONEachRow, CSVWithNames)",
            exitcodes.CONFIG,
        )
    return fmt


class QueryServer:
    """Answers queries on ``<directory>/query.sock`` with ``read(sql, fmt) -> bytes``, in one thread.

    Start it only while holding the store's lock: it replaces a stale socket file left by a killed
    holder.
    """

    def __init__(self, directory: str, read: Callable[[str, str], bytes]) -> None:
        self.path = socket_path(directory)
        self.read = read
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._inode: int | None = None

    def start(self) -> QueryServer:
        if len(os.fsencode(self.path)) > SUN_PATH_MAX:
            raise QueryServerUnavailable(
                f"{self.path} is longer than a Unix socket path may be ({SUN_PATH_MAX} bytes): "
                "choose a shorter embedded.dir to query the store while the agent runs",
            )
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)  # left by a killed holder (we hold the store's lock now)
            sock.bind(self.path)
            os.chmod(self.path, 0o600)
            sock.listen(16)
            self._inode = os.stat(self.path).st_ino
        except OSError:
            sock.close()
            raise
        sock.settimeout(0.5)  # accept() wakes up to notice close()
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="embedded-query", daemon=True)
        self._thread.start()
        log.info("answering `automagik-telemetry query` on %s", self.path)
        return self

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)  # a query still running is bounded by max_execution_time
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == self._inode:
                    os.unlink(self.path)

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._closed.is_set():
                    return
                log.warning("query socket %s: %s", self.path, exc)
                time.sleep(0.5)
                continue
            with conn:
                try:
                    self._handle(conn)
                except OSError as exc:  # the client went away
                    log.debug("query client on %s: %s", self.path, exc)
                except Exception:  # a query must never take the shipper down
                    log.exception("answering a query on %s failed", self.path)

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(REQUEST_TIMEOUT_S)
        data = b""
        while b"\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
            if len(data) > MAX_REQUEST:
                _send_json(conn, {"ok": False, "error": f"request larger than {MAX_REQUEST} bytes", "code": None})
                return
        try:
            request = json.loads(data.split(b"\n", 1)[0])
            sql, fmt = request["sql"], check_format(request.get("format", "TabSeparated"))
            if not isinstance(sql, str):
                raise TypeError("sql must be a string")
        except QueryError as exc:
            _send_json(conn, {"ok": False, "error": str(exc), "code": None})
            return
        except (ValueError, KeyError, TypeError) as exc:
            _send_json(conn, {"ok": False, "error": f"bad request: {exc}", "code": None})
            return
        try:
            out = self.read(sql, fmt)
        except Exception as exc:
            r = classify_chdb_error(exc)
            _send_json(conn, {"ok": False, "error": r.message, "code": r.code})
            return
        _send_json(conn, {"ok": True, "size": len(out)})
        conn.sendall(out)


def _send_json(conn: socket.socket, obj: Mapping[str, Any]) -> None:
    conn.sendall(json.dumps(obj).encode() + b"\n")
