"""Read-only SQL on the embedded store: through the shipper that holds it, or directly when none does.

chDB allows one process per data directory, and while the agent runs that process is its shipper.
So the shipper serves queries (:class:`~.query_server.QueryServer`, a thread next to the store) on the Unix socket
``<embedded.dir>/query.sock`` (mode 0600: the agent's user, and root), and :func:`run_query`:

1. connects to that socket and asks; if nobody listens (agent stopped, or shipper restarting),
2. takes the store's lock itself and opens it (:class:`~.chdb.EmbeddedStore`), so a shipper
   starting meanwhile waits for the query instead of failing; if a live process holds the lock but
   does not answer yet (a shipper starting up), it retries for up to ``wait_s``.

Queries are **read-only**: they run on a session with ``readonly = 1`` (no INSERT, DDL, SET, SYSTEM,
and no table functions reaching files or the network, which matters because they run inside the
agent's process), bounded by :data:`~.chdb.READER_SETTINGS` (60 s, 1 GiB of memory, 256 MiB of
result). A refused statement gives one line saying so (exit 2). They run concurrently with the
shipper's inserts (a separate chDB session), one query at a time.

The socket's wire format is in :mod:`.query_server`.

With ``sink = "clickhouse"`` :func:`run_query` asks the server over HTTP instead (``readonly = 1``
too), so ``automagik-telemetry query`` and ``make demo`` work the same against either.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

from .. import exitcodes
from ..config import SUN_PATH_MAX, ConfigError
from .chdb import ChdbUnavailable, EmbeddedStore, StoreBusy, classify_chdb_error
from .factory import sink_from_config
from .query_server import MAX_REQUEST, QueryError, check_format, socket_path
from .sink import SinkError

__all__ = ["QueryError", "query_bytes", "query_embedded", "run_query"]

READONLY_CODE = 164


def _failure(message: str, code: int | None) -> QueryError:
    if code == READONLY_CODE:
        return QueryError(
            f"`automagik-telemetry query` is read-only (SELECT, SHOW, DESCRIBE, EXPLAIN, EXISTS); "
            f"the store refused: {message}",
            exitcodes.CONFIG,
        )
    return QueryError(f"query failed: {message}", exitcodes.FAILURE)


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
    directory = os.path.abspath(directory)
    check_format(fmt)
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
    try:
        sink = sink_from_config(config)
    except ConfigError as exc:
        raise QueryError(f"config error: {exc}", exitcodes.CONFIG) from None
    try:
        return sink.read(sql, fmt)
    except SinkError as exc:
        if exc.result.code == READONLY_CODE:
            raise _failure(exc.result.message, exc.result.code) from None
        raise QueryError(str(exc)) from None
    finally:
        sink.close()


def query_bytes(config: Mapping[str, Any], sql: str, fmt: str = "TabSeparated", *, direct: bool = True) -> bytes:
    """The raw output of ``sql`` in format ``fmt`` from the configured sink; :class:`QueryError` otherwise.

    ``direct=False``: for the embedded store, only through the running agent (see :func:`query_embedded`).
    """
    check_format(fmt)
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
