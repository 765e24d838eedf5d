"""What the running agent says about itself (``automagik-telemetry status``, ``doctor``).

Asks the supervisor over its control socket (``supervisor.control``, ``{"cmd": "status"}``); :func:`render`
gives a few aligned lines: up or down, pid, uptime, each child's state and restarts, spans received,
backlog, oldest unshipped age, last ship, drops, dead letters, last error.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Mapping
from typing import Any

from ..paths import control_socket_path
from ..supervisor.control import request
from ..units import duration_text, size_text

__all__ = ["MAX_ERROR", "fetch_status", "render"]

MAX_ERROR = 240  # characters of the last error shown (`--json` has all of it)


def fetch_status(config: Mapping[str, Any], timeout: float = 5.0) -> dict[str, Any] | None:
    """The agent's status dict, or None when no agent listens on the control socket.

    Raises RuntimeError (one line) when something listens but cannot be asked: permission denied
    (the socket is the agent's user's, mode 0600), no answer in time, or a malformed answer.
    """
    path = control_socket_path(config)
    try:
        answer = request(path, {"cmd": "status"}, timeout=timeout)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR):
            return None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise RuntimeError(
                f"permission denied on the control socket {path}: run this as the agent's user or root"
            ) from None
        raise RuntimeError(str(exc)) from None
    if not answer.get("ok") or not isinstance(answer.get("status"), dict):
        raise RuntimeError(f"the agent refused the status request: {answer.get('error', answer)}")
    status: dict[str, Any] = answer["status"]
    return status


def render(status: Mapping[str, Any], now: float | None = None) -> list[str]:
    """The human lines of ``status`` (label, value), labels padded to one column."""
    now = time.time() if now is None else now
    m = status.get("metrics") or {}
    rows: list[tuple[str, str]] = [
        (
            "agent",
            f"{status.get('state', 'running')}, pid {status.get('pid', '?')}, "
            f"up {duration_text(status.get('uptime_s'))}",
        ),
    ]
    for name, child in sorted((status.get("children") or {}).items()):
        child = child or {}
        pid = f", pid {child['pid']}" if child.get("pid") else ""
        report = child.get("last_report_age_s")
        seen = f", last report {duration_text(report)} ago" if report is not None else ""
        rows.append((name, f"{child.get('state', '?')}{pid}, {child.get('restarts', 0)} restarts{seen}"))
    config = status.get("config") or {}
    if config:
        rows.append(
            (
                "sink",
                f"{config.get('sink', '?')}  (socket {config.get('socket.path', '?')}, "
                f"WAL {config.get('wal.dir', '?')})",
            )
        )
    if "otlp_listen" in status:
        rows.append(("otlp", ", ".join(status["otlp_listen"]) or 'off (otlp.listen = "")'))
    if status.get("metrics_unavailable"):
        rows.append(("counters", f"unavailable: {status['metrics_unavailable']}"))
    if m:
        rows.append(
            (
                "received",
                f"{m.get('spans_received', 0)} spans in {m.get('records_received', 0)} records, "
                f"{m.get('rejected_messages', 0)} messages rejected",
            )
        )
        rows.append(
            (
                "backlog",
                f"{size_text(m.get('wal_unshipped_bytes'))} unshipped of "
                f"{size_text(m.get('wal_bytes'))} WAL, oldest "
                f"{duration_text(m.get('wal_oldest_unshipped_age_s'))}",
            )
        )
        last = m.get("last_ship_time")
        ago = f"{duration_text(now - last)} ago" if last else "never"
        rows.append(
            (
                "last ship",
                f"{ago}, {m.get('rows_shipped', 0)} rows shipped, {m.get('insert_failures', 0)} failed inserts",
            )
        )
        rows.append(
            (
                "drops",
                f"{m.get('wal_dropped_spans', 0)} spans by the WAL disk policy, "
                f"{m.get('client_dropped_spans', 0)} reported by clients",
            )
        )
        rows.append(("dead letters", f"{m.get('dead_lettered_rows', 0)} rows"))
        if m.get("batch_wait_s") is not None:
            rate = m.get("server_inserts_per_s")
            shard = f", shard at {rate:.1f} inserts/s" if rate is not None else ""
            rows.append(("batch wait", f"{m['batch_wait_s']:.2f} s (insert policy{shard})"))
        for signal, s in sorted((m.get("signals") or {}).items()):
            failing = int(s.get("consecutive_failures", 0))
            last = s.get("last_ship_time")
            rows.append(
                (
                    f"signal {signal}",
                    f"{int(s.get('received', 0))} received, {int(s.get('shipped', 0))} shipped, "
                    f"{int(s.get('dead_lettered', 0))} dead-lettered, last ship "
                    f"{duration_text(now - last) + ' ago' if last else 'never'}"
                    + (f", failing ({failing} attempts)" if failing else ""),
                )
            )
        error = " ".join(str(m.get("last_error") or "none").split())
        rows.append(("last error", error if len(error) <= MAX_ERROR else error[: MAX_ERROR - 3] + "..."))
        if m.get("metrics_port"):
            rows.append(("metrics", f"port {m['metrics_port']}"))
    width = max(len(label) for label, _ in rows)
    return [f"{label + ':':<{width + 1}}  {value}" for label, value in rows]
