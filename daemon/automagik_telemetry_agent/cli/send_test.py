"""``automagik-telemetry send-test``: one span through the real path, timed until it is queryable.

Exit 0 when the row was seen, 1 otherwise, 2 for a bad configuration.
"""

from __future__ import annotations

import argparse

from .. import exitcodes
from ..config import ConfigError
from .options import AGENT, Subparsers, add_setting_flags, loader


def run_send_test(args: argparse.Namespace) -> int:
    # The agent extra (orjson, requests, zstandard) is optional: imported when the command runs, so that a
    # client-only install fails here with one line (cli.main) instead of at start-up.
    from ..ops.send_test import make_lookup, send_and_wait

    try:
        config = loader(args)()
        query, close, target = make_lookup(config)
    except ConfigError as exc:
        return exitcodes.die(exitcodes.CONFIG, f"send-test: config error: {exc}")
    try:
        return send_and_wait(config, query, target, args.timeout)
    finally:
        close()


def add_parser(sub: Subparsers) -> None:
    send = sub.add_parser("send-test", help="send one span through the agent and wait until it is queryable")
    add_setting_flags(send, AGENT)
    send.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the span (default 30)")
    send.set_defaults(func=run_send_test)
