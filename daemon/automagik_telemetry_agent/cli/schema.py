"""``automagik-telemetry schema apply``: create or migrate the tables (needs CREATE rights)."""

from __future__ import annotations

import argparse

from .. import exitcodes
from ..config import ConfigError
from .options import SINK, Subparsers, add_setting_flags, load


def run_apply(args: argparse.Namespace) -> int:
    # The agent extra (orjson, requests, zstandard) is optional: imported when the command runs, so that a
    # client-only install fails here with one line (cli.main) instead of at start-up.
    from ..clickhouse.chdb import ChdbUnavailable
    from ..clickhouse.errors import ErrorClass
    from ..clickhouse.factory import sink_from_config
    from ..clickhouse.schema import SchemaError, apply, pick_profile
    from ..clickhouse.sink import SinkError

    config = load(args)
    if isinstance(config, int):
        return config
    try:
        sink = sink_from_config(config)
    except ConfigError as exc:
        return exitcodes.die(exitcodes.CONFIG, f"config error: {exc}")
    except ChdbUnavailable as exc:
        return exitcodes.die(exitcodes.UNAVAILABLE, str(exc))
    try:
        version = sink.query("SELECT version()").strip()
        profile = pick_profile(version)
        applied = apply(
            sink.query,
            profile,
            sink.database,
            sink.table,
            args.ttl_days,
            logs_table=config["clickhouse.logs_table"],
            metrics_table=config["clickhouse.metrics_table"],
        )
    except SinkError as exc:
        code = exitcodes.CONFIG if exc.result.error_class is ErrorClass.CONFIG else exitcodes.FAILURE
        return exitcodes.die(code, str(exc))
    except (SchemaError, ValueError) as exc:
        return exitcodes.die(exitcodes.FAILURE, f"schema apply failed: {exc}")
    finally:
        sink.close()
    done = ", ".join(map(str, applied)) if applied else "none (already up to date)"
    print(f"{sink.target} on ClickHouse {version} ({profile.value} profile): applied migrations {done}")
    return exitcodes.OK


def add_parser(sub: Subparsers) -> None:
    schema = sub.add_parser("schema", help="ClickHouse schema tools")
    schema_sub = schema.add_subparsers(dest="schema_command", required=True)
    apply_cmd = schema_sub.add_parser(
        "apply", help="create or migrate the traces, logs and metrics tables (needs CREATE rights)"
    )
    add_setting_flags(apply_cmd, SINK)
    apply_cmd.add_argument(
        "--ttl-days", type=int, default=0, help="drop rows older than this (modern servers; 0 = keep forever)"
    )
    apply_cmd.set_defaults(func=run_apply)
