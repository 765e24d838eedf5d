"""Read-only SQL on the embedded store: through the shipper that holds it, or directly when none does.

chDB allows one process per data directory, and while the agent runs that process is its shipper.
So the shipper serves queries (:class:`QueryServer`, a thread next to the store) on the Unix socket
``<embedded.dir>/query.sock`` (mode 0600: the agent's user, and root), and :func:`run_query`:

1. connects to that socket and asks; if nobody listens (agent stopped, or shipper restarting),
2. takes the store's lock itself and opens it (:class:`~.sink_chdb.EmbeddedStore`), so a shipper
   starting meanwhile waits for the query instead of failing; if a live process holds the lock but
   does not answer yet (a shipper starting up), it retries for up to ``wait_s``.

Queries are **read-only**: they run on a session with ``readonly = 1`` (no INSERT, DDL, SET, SYSTEM,
and no table functions reaching files or the network, which matters because they run inside the
agent's process), bounded by :data:`~.sink_chdb.READER_SETTINGS` (60 s, 1 GiB of memory, 256 MiB of
result). A refused statement gives one line saying so (exit 2). They run concurrently with the
shipper's inserts (a separate chDB session), one query at a time.

Wire format (one connection per query): the client sends one JSON line ``{"v": 1, "sql": "...",
"format": "TabSeparated"}``; the server answers one JSON line, ``{"ok": true, "size": N}`` followed by
exactly N bytes of output, or ``{"ok": false, "error": "...", "code": N|null}``.

With ``sink = "clickhouse"`` :func:`run_query` asks the server over HTTP instead (``readonly = 1``
too), so ``automagik-telemetry query`` and ``make demo`` work the same against either.
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

from . import exitcodes

__all__ = ["SOCKET_NAME", "QueryError", "QueryServer", "query_bytes", "run_query", "socket_path"]

log = logging.getLogger(__name__)

SOCKET_NAME = "query.sock"
MAX_REQUEST = 1024 * 1024
REQUEST_TIMEOUT_S = 10.0  # to read a request line, and per send of the answer
_FORMAT = re.compile(r"[A-Za-z][A-Za-z0-9]{0,63}")
READONLY_CODE = 164
SUN_PATH_MAX = 107  # bytes of an AF_UNIX socket path


class QueryError(Exception):
    """A query that could not be answered; ``str()`` is one line, ``exit_code`` the command's exit code."""

    def __init__(self, message: str, exit_code: int = exitcodes.FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def socket_path(directory: str) -> str:
    return os.path.join(os.path.abspath(directory), SOCKET_NAME)


def _check_format(fmt: str) -> str:
    if not _FORMAT.fullmatch(fmt or ""):
        raise QueryError(
            f"--format {fmt!r} is not a ClickHouse output format name (examples: TabSeparated, "
            "PrettyCompact, JSONEachRow, CSVWithNames)",
            exitcodes.CONFIG,
        )
    return fmt


def _failure(message: str, code: int | None) -> QueryError:
    if code == READONLY_CODE:
        return QueryError(
            f"`automagik-telemetry query` is read-only (SELECT, SHOW, DESCRIBE, EXPLAIN, EXISTS); "
            f"the store refused: {message}",
            exitcodes.CONFIG,
        )
    return QueryError(f"query failed: {message}", exitcodes.FAILURE)


# ------------------------------------------------------------------------------------------ server


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
            raise OSError(
                0,
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
            sql, fmt = request["sql"], _check_format(request.get("format", "TabSeparated"))
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
            from .sink_chdb import classify_chdb_error

            r = classify_chdb_error(exc)
            _send_json(conn, {"ok": False, "error": r.message, "code": r.code})
            return
        _send_json(conn, {"ok": True, "size": len(out)})
        conn.sendall(out)


def _send_json(conn: socket.socket, obj: Mapping[str, Any]) -> None:
    conn.sendall(json.dumps(obj).encode() + b"\n")


# ------------------------------------------------------------------------------------------ client


def _ask(path: str, sql: str, fmt: str, timeout: float) -> bytes | None:
    """The answer of the server on ``path``; None if nobody listens there."""
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        return None  # no server can listen there (QueryServer.start refused it too)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        except PermissionError:
            raise QueryError(
                f"no permission to connect to {path}: run the query as the agent's user (or root)", exitcodes.CONFIG
            ) from None
        sock.sendall(json.dumps({"v": 1, "sql": sql, "format": fmt}).encode() + b"\n")
        reader = sock.makefile("rb")
        try:
            header = reader.readline(MAX_REQUEST)
            if not header:
                raise QueryError(f"the agent closed {path} without answering (its shipper stopped?): try again")
            answer = json.loads(header)
            if not answer.get("ok"):
                raise _failure(str(answer.get("error", "unknown error")), answer.get("code"))
            size = int(answer["size"])
            out = reader.read(size)
        finally:
            reader.close()
        if len(out) != size:
            raise QueryError(f"the agent sent {len(out)} of {size} bytes on {path}: try again")
        return out
    except TimeoutError:
        raise QueryError(
            f"no answer on {path} within {timeout:g}s (the query may still be running in the "
            "agent; it is stopped after 60 s)"
        ) from None
    except (ConnectionResetError, BrokenPipeError):
        raise QueryError(f"the agent's shipper went away while answering on {path} (restarting?): try again") from None
    finally:
        sock.close()


def _direct(directory: str, sql: str, fmt: str) -> bytes:
    """Open the store in this process (read-only session) and run the query; StoreBusy if held."""
    from .sink_chdb import ChdbUnavailable, EmbeddedStore, StoreBusy, classify_chdb_error

    owner = os.stat(directory).st_uid
    if owner != os.geteuid():
        # chDB writes into the directory it opens (status file, temporary parts): files of another user
        # (typically root's) in the agent's store could keep the agent from opening it again.
        try:
            import pwd

            name = pwd.getpwuid(owner).pw_name
        except (ImportError, KeyError):
            name = str(owner)
        raise QueryError(
            f"the embedded store {directory} belongs to user {name}: with the agent stopped, run the "
            f"query as that user (e.g. sudo -u {name} automagik-telemetry query ...)",
            exitcodes.CONFIG,
        )
    store = EmbeddedStore(directory)
    try:
        store.open(reader=True, writer=False)
    except (StoreBusy, QueryError):
        raise
    except ChdbUnavailable as exc:
        raise QueryError(str(exc), exitcodes.UNAVAILABLE) from None
    except OSError as exc:
        raise QueryError(exc.strerror or str(exc), exitcodes.CONFIG) from None
    except Exception as exc:
        raise QueryError(f"cannot open the embedded store {directory}: {classify_chdb_error(exc).message}") from None
    try:
        return store.read(sql, fmt)
    except Exception as exc:
        r = classify_chdb_error(exc)
        raise _failure(r.message, r.code) from None
    finally:
        store.close()


def query_embedded(
    directory: str,
    sql: str,
    fmt: str = "TabSeparated",
    timeout: float = 90.0,
    wait_s: float = 15.0,
    direct: bool = True,
) -> bytes:
    """Answer ``sql`` from the embedded store in ``directory``: via its holder, or directly.

    ``direct=False``: only ask a running holder (a caller polling a live agent must not take the store
    away from a shipper that is starting up).
    """
    from .sink_chdb import StoreBusy

    directory = os.path.abspath(directory)
    _check_format(fmt)
    if not os.path.isdir(directory):
        raise QueryError(
            f"the embedded store {directory} does not exist yet: start the agent with --embedded "
            f'{directory} (or sink = "embedded") first',
            exitcodes.FAILURE,
        )
    path = socket_path(directory)
    deadline = time.monotonic() + wait_s
    while True:
        out = _ask(path, sql, fmt, timeout)
        if out is not None:
            return out
        if not direct:
            raise QueryError(f"nothing answers on {path} (yet): is the agent running with --embedded {directory}?")
        try:
            return _direct(directory, sql, fmt)
        except StoreBusy as busy:
            if time.monotonic() >= deadline:
                raise QueryError(
                    f"{busy}, which does not answer queries on {path}: try again once it is up (or stop it)"
                ) from None
            time.sleep(0.1)


def _query_server(config: Mapping[str, Any], sql: str, fmt: str) -> bytes:
    """``sql`` on the configured ClickHouse server over HTTP, read-only."""
    import requests

    from .clickhouse_errors import ErrorClass, classify_exception, classify_response
    from .config import ConfigError
    from .shipper_cli import sink_from_config
    from .sink_http import InsertResult

    try:
        sink = sink_from_config(config)
    except ConfigError as exc:
        raise QueryError(f"config error: {exc}", exitcodes.CONFIG) from None
    try:
        r = sink.session.post(
            sink.endpoint + "/",
            data=sql.encode(),
            timeout=sink.timeout,  # type: ignore[attr-defined]
            params={"default_format": fmt, "readonly": "1"},
        )
    except (requests.RequestException, OSError) as exc:
        raise QueryError(sink.explain(InsertResult.of(classify_exception(exc)))) from None
    finally:
        sink.close()
    c = classify_response(r.status_code, r.headers, r.content)
    if c.error_class is not ErrorClass.OK:  # also an answer that did not come from ClickHouse
        if c.code == READONLY_CODE:
            raise _failure(c.message, c.code)
        raise QueryError(sink.explain(InsertResult.of(c)))
    return r.content


def query_bytes(config: Mapping[str, Any], sql: str, fmt: str = "TabSeparated", *, direct: bool = True) -> bytes:
    """The raw output of ``sql`` in format ``fmt`` from the configured sink; :class:`QueryError` otherwise.

    ``direct=False``: for the embedded store, only through the running agent (see :func:`query_embedded`).
    """
    _check_format(fmt)
    sink = config["sink"]
    if sink == "embedded":
        return query_embedded(config["embedded.dir"], sql, fmt, direct=direct)
    if sink == "clickhouse":
        return _query_server(config, sql, fmt)
    raise QueryError(
        "sink is 'none': there is no store to query (use --embedded DIR, or --sink clickhouse with "
        "--clickhouse-endpoint)",
        exitcodes.CONFIG,
    )


def run_query(config: Mapping[str, Any], sql: str, fmt: str = "TabSeparated", *, direct: bool = True) -> str:
    """:func:`query_bytes` as text (used by `automagik-telemetry query`, `send-test` and `make demo`)."""
    return query_bytes(config, sql, fmt, direct=direct).decode("utf-8", "replace")
