"""The ``automagik-telemetry`` command line: one module per command, each parsing its arguments and calling in.

Every failure the operator can fix ends with one line saying what to fix and a named exit code
(``exitcodes``), never a traceback.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .. import exitcodes
from . import agent, config, dead_letter, doctor, query, schema, send_test, shipper, status, wal
from .packages import AGENT_EXTRA, missing_agent_extras

__all__ = ["build_parser", "main"]

#: The commands in the order ``--help`` lists them (``ingest``, registered by :mod:`.agent`, is internal).
COMMANDS = (agent, shipper, schema, wal, config, query, status, doctor, send_test, dead_letter)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="automagik-telemetry", description="Host-local telemetry agent.")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    sub.metavar = "{" + ",".join(name for name in sub.choices if name != "ingest") + "}"
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as exc:  # `pip install automagik-telemetry` without the agent extra
        if exc.name not in AGENT_EXTRA:
            raise
        missing = [name.replace("_", "-") for name in missing_agent_extras(AGENT_EXTRA) or [exc.name]]
        return exitcodes.die(
            exitcodes.UNAVAILABLE,
            f"`automagik-telemetry {args.command}` needs {', '.join(missing)} (not installed): install "
            "'automagik-telemetry[agent]'",
        )
