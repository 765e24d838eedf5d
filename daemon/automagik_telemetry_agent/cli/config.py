"""``automagik-telemetry config check``: validate a configuration without starting anything."""

from __future__ import annotations

import argparse
import os
import sys

from .. import exitcodes
from ..config import AgentConfig
from ..paths import control_socket_path
from ..preflight import problems
from ..supervisor.control import ControlError, request
from .options import ALL, Subparsers, add_setting_flags, load

_die = exitcodes.die


def _agent_running_this(config: AgentConfig) -> int | None:
    """The pid of a running agent whose socket and WAL are this config's (the agent it configures)."""
    try:
        answer = request(control_socket_path(config), {"cmd": "status"}, timeout=2.0)
    except (ControlError, OSError, ValueError):
        return None
    status = answer.get("status") or {}
    running = status.get("config") or {}
    same = os.path.abspath(str(running.get("socket.path"))) == os.path.abspath(
        config["socket.path"]
    ) and os.path.abspath(str(running.get("wal.dir"))) == os.path.abspath(config["wal.dir"])
    return int(status.get("pid", 0)) or None if same else None


def cmd_config_check(args: argparse.Namespace) -> int:
    """Validate values, then (unless --no-runtime) the host facts they point at (``preflight``).

    Checking the file of the agent that is running (same socket and WAL) is the normal step before a
    reload or restart: that agent holding its own socket and WAL is then not an error.
    """
    config = load(args)
    if isinstance(config, int):
        return config
    if not args.no_runtime:
        found = problems(config)
        running = _agent_running_this(config) if found else None
        if running is not None:
            found = problems(config, allow_running=True)
        if found:
            return _die(exitcodes.CONFIG, f"config error: {found[0].message}")
        if running is not None:
            print(
                f"note: the agent running as pid {running} uses this socket and WAL; live settings apply on "
                "SIGHUP (systemctl reload automagik-telemetry), the others on a restart",
                file=sys.stderr,
            )
    try:
        for key, value in config.items():
            shown = "<redacted>" if key == "clickhouse.password" and value else value
            print(f"{key} = {shown!r}  ({config.sources[key]})")
    except BrokenPipeError:  # `config check | head`
        pass
    return exitcodes.OK


def add_parser(sub: Subparsers) -> None:
    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate the configuration without starting")
    add_setting_flags(check, ALL)
    check.add_argument(
        "--no-runtime",
        action="store_true",
        help="check the values only, not this host (WAL directory, socket, files): for a config meant for another "
        "host or a running agent",
    )
    check.set_defaults(func=cmd_config_check)
