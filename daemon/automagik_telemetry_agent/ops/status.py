"""``automagik-telemetry status [--json]``: what the running agent says about itself.

Asks the supervisor over its control socket (:mod:`.control`, ``{"cmd": "status"}``) and prints a
few aligned lines: up or down, pid, uptime, each child's state and restarts, spans received,
backlog, oldest unshipped age, last ship, drops, dead letters, last error. ``--json`` prints the
status dict as the agent sent it. Exit 0 when the agent answers, 3 when it is not running (the code
``systemctl status`` uses for "not running"), 1 when it cannot be asked (permission denied, no
answer), 2 for a bad configuration.
"""

from __future__ import annotations

import argparse
import errno
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from . import exitcodes
from .config import ConfigError, load_config

NOT_RUNNING = 3  # like `systemctl status`: the unit is not active
MAX_ERROR = 240  # characters of the last error shown (`--json` has all of it)


_die = exitcodes.die


def fetch_status(config: Mapping[str, Any], timeout: float = 5.0) -> dict[str, Any] | None:
    """The agent's status dict, or None when no agent listens on the control socket.

    Raises RuntimeError (one line) when something listens but cannot be asked: permission denied
    (the socket is the agent's user's, mode 0600), no answer in time, or a malformed answer.
    """
    from .control import request
    from .preflight import control_socket_path

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
    return answer["status"]


def duration_text(seconds: float | None) -> str:
    """``3d 4h``, ``2h 5m``, ``4m 10s``, ``12.3s``: two units at most, for humans."""
    if seconds is None:
        return "-"
    s = float(seconds)
    if s < 60:
        return f"{s:.1f}s"
    parts = [(int(s // 86400), "d"), (int(s % 86400 // 3600), "h"), (int(s % 3600 // 60), "m"), (int(s % 60), "s")]
    first = next(i for i, (n, _) in enumerate(parts) if n)
    return " ".join(f"{n}{unit}" for n, unit in parts[first : first + 2])


def size_text(n: float | None) -> str:
    if not n:
        return "0 B"
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{int(n)} B"


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
        error = " ".join(str(m.get("last_error") or "none").split())
        rows.append(("last error", error if len(error) <= MAX_ERROR else error[: MAX_ERROR - 3] + "..."))
        if m.get("metrics_port"):
            rows.append(("metrics", f"port {m['metrics_port']}"))
    width = max(len(label) for label, _ in rows)
    return [f"{label + ':':<{width + 1}}  {value}" for label, value in rows]


def cmd_status(args: argparse.Namespace, flags: dict[str, object]) -> int:
    try:
        config = load_config(args.config, flags)
    except ConfigError as exc:
        return _die(exitcodes.CONFIG, f"config error: {exc}")
    from .preflight import control_socket_path

    try:
        status = fetch_status(config, timeout=args.timeout)
    except RuntimeError as exc:
        return _die(exitcodes.FAILURE, str(exc))
    if status is None:
        return _die(NOT_RUNNING, f"the agent is not running (nothing answers on {control_socket_path(config)})")
    if args.json:
        print(json.dumps(status))
    else:
        print("\n".join(render(status)))
    return exitcodes.OK


def add_parser(
    sub: Any,
    add_setting_flags: Callable[[argparse.ArgumentParser], None],
    flags: Callable[[argparse.Namespace], dict[str, object]],
) -> None:
    status = sub.add_parser("status", help="ask the running agent how it is doing (exit 3: not running)")
    add_setting_flags(status)
    status.add_argument("--json", action="store_true", help="print the agent's status dict as JSON")
    status.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the agent's answer")
    status.set_defaults(func=lambda a: cmd_status(a, flags(a)))
