"""``automagik-telemetry shipper``: ship the WAL to the configured sink in the foreground."""

from __future__ import annotations

import argparse

from .options import AGENT, Subparsers, add_setting_flags, loader


def run_shipper(args: argparse.Namespace) -> int:
    # The agent extra (orjson, requests, zstandard) is optional: imported when the command runs, so that a
    # client-only install fails here with one line (cli.main) instead of at start-up.
    from ..shipper.main import run

    return run(loader(args))


def add_parser(sub: Subparsers) -> None:
    shipper = sub.add_parser("shipper", help="ship the WAL to ClickHouse in the foreground")
    add_setting_flags(shipper, AGENT)
    shipper.set_defaults(func=run_shipper)
