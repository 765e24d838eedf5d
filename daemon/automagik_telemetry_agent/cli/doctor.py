"""``automagik-telemetry doctor``: one line per check of the host's setup; exit 1 if a check fails."""

from __future__ import annotations

import argparse

from .. import exitcodes
from ..config import ConfigError
from .options import ALL, Subparsers, add_setting_flags, loader


def run_doctor(args: argparse.Namespace) -> int:
    # The agent extra (orjson, requests, zstandard) is optional: imported when the command runs, so that a
    # client-only install fails here with one line (cli.main) instead of at start-up.
    from ..ops.doctor import FAIL, OK, WARN, Check, Doctor

    def emit(check: Check) -> None:
        print("\n".join(check.lines()), flush=True)

    try:
        config = loader(args)()
    except ConfigError as exc:
        emit(Check(FAIL, "config", str(exc), "fix that setting; `automagik-telemetry config check` re-checks"))
        return exitcodes.FAILURE
    sources = sorted({s for s in config.sources.values() if s != "default"}) or ["defaults only"]
    emit(Check(OK, "config", f"valid (from {', '.join(sources)}), sink {config['sink']}"))
    doctor = Doctor(config, emit)
    doctor.run()
    failed = sum(c.status is FAIL for c in doctor.checks)
    warned = sum(c.status is WARN for c in doctor.checks)
    print(f"{failed} failed, {warned} warnings" if failed or warned else "all checks passed")
    return exitcodes.FAILURE if failed else exitcodes.OK


def add_parser(sub: Subparsers) -> None:
    doctor = sub.add_parser("doctor", help="check the setup (agent, socket, WAL, ClickHouse); exit 1 if a check fails")
    add_setting_flags(doctor, ALL)
    doctor.set_defaults(func=run_doctor)
