"""``automagik-telemetry status [--json]``: what the running agent says about itself.

Exit 0 when the agent answers, 3 when it is not running (the code ``systemctl status`` uses for "not
running"), 1 when it cannot be asked (permission denied, no answer), 2 for a bad configuration.
"""

from __future__ import annotations

import argparse
import json

from .. import exitcodes
from ..ops.status import fetch_status, render
from ..paths import control_socket_path
from .options import AGENT, Subparsers, add_setting_flags, load

NOT_RUNNING = 3  # like `systemctl status`: the unit is not active


def run_status(args: argparse.Namespace) -> int:
    config = load(args)
    if isinstance(config, int):
        return config
    try:
        status = fetch_status(config, timeout=args.timeout)
    except RuntimeError as exc:
        return exitcodes.die(exitcodes.FAILURE, str(exc))
    if status is None:
        return exitcodes.die(
            NOT_RUNNING, f"the agent is not running (nothing answers on {control_socket_path(config)})"
        )
    if args.json:
        print(json.dumps(status))
    else:
        print("\n".join(render(status)))
    return exitcodes.OK


def add_parser(sub: Subparsers) -> None:
    status = sub.add_parser("status", help="ask the running agent how it is doing (exit 3: not running)")
    add_setting_flags(status, AGENT)
    status.add_argument("--json", action="store_true", help="print the agent's status dict as JSON")
    status.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the agent's answer")
    status.set_defaults(func=run_status)
