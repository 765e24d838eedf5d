"""The ``shipper`` and ``schema apply`` subcommands (registered by :mod:`.cli`)."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Mapping
from typing import Any

from . import exitcodes
from .config import ConfigError, load_config


def _die(code: int, message: str) -> int:
    print(f"automagik-telemetry: {message}", file=sys.stderr)
    return code


def read_password(config: Mapping[str, Any]) -> str:
    """``clickhouse.password_file``'s first line if set, else ``clickhouse.password``."""
    path = config["clickhouse.password_file"]
    if not path:
        return config["clickhouse.password"]
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"--password-file {path}: {exc.strerror}") from None


def sink_from_config(config: Mapping[str, Any]):  # -> ClickHouseHttpSink
    from .sink_http import ClickHouseHttpSink

    try:
        return ClickHouseHttpSink(
            endpoint=config["clickhouse.endpoint"], database=config["clickhouse.database"],
            table=config["clickhouse.table"], username=config["clickhouse.username"],
            password=read_password(config), ca_bundle=config["clickhouse.ca_bundle"] or None,
            verify_tls=config["clickhouse.verify_tls"], connect_timeout=config["clickhouse.connect_timeout"],
            read_timeout=config["clickhouse.read_timeout"], compression=config["clickhouse.compression"])
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def cmd_shipper(args: argparse.Namespace, flags: dict[str, object]) -> int:
    from .logs import setup_logging
    from .shipper import Shipper, ShipperOptions

    try:
        config = load_config(args.config, flags)
        sink = sink_from_config(config)
    except ConfigError as exc:
        return _die(exitcodes.CONFIG, f"config error: {exc}")
    setup_logging(config["log.level"], "shipper")
    options = ShipperOptions(
        batch_rows=config["shipper.batch_size"], batch_bytes=config["shipper.batch_bytes"],
        batch_wait_s=config["shipper.batch_wait"], backoff_base_s=config["shipper.retry_base"],
        backoff_cap_s=config["shipper.retry_max"], config_retry_s=config["shipper.config_retry"],
        drain_rows_per_s=config["shipper.max_rows_per_second"],
        dead_letter_dir=config["shipper.dead_letter_dir"] or None)
    shipper = Shipper(config["wal.dir"], sink, options)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: shipper.request_stop())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # no live reload yet
    print("ready", file=sys.stderr, flush=True)
    try:
        shipper.run()
    finally:
        sink.close()
    return exitcodes.OK


def cmd_schema_apply(args: argparse.Namespace, flags: dict[str, object]) -> int:
    from .schema import SchemaError, apply, pick_profile
    from .sink_http import SinkError

    try:
        config = load_config(args.config, flags)
        sink = sink_from_config(config)
    except ConfigError as exc:
        return _die(exitcodes.CONFIG, f"config error: {exc}")
    try:
        version = sink.query("SELECT version()").strip()
        profile = pick_profile(version)
        applied = apply(sink.query, profile, sink.database, sink.table, args.ttl_days)
    except SinkError as exc:
        return _die(exitcodes.CONFIG if exc.result.error_class.value == "config" else exitcodes.FAILURE, str(exc))
    except (SchemaError, ValueError) as exc:
        return _die(exitcodes.FAILURE, f"schema apply failed: {exc}")
    finally:
        sink.close()
    done = ", ".join(map(str, applied)) if applied else "none (already up to date)"
    print(f"{sink.target} on ClickHouse {version} ({profile.value} profile): applied migrations {done}")
    return exitcodes.OK


def add_parsers(sub: Any, add_setting_flags: Callable[[argparse.ArgumentParser], None],
                flags: Callable[[argparse.Namespace], dict[str, object]]) -> None:
    shipper = sub.add_parser("shipper", help="ship the WAL to ClickHouse in the foreground")
    add_setting_flags(shipper)
    shipper.set_defaults(func=lambda a: cmd_shipper(a, flags(a)))

    schema = sub.add_parser("schema", help="ClickHouse schema tools")
    schema_sub = schema.add_subparsers(dest="schema_command", required=True)
    apply = schema_sub.add_parser("apply", help="create or migrate the traces table (needs CREATE rights)")
    add_setting_flags(apply)
    apply.add_argument("--ttl-days", type=int, default=0, help="drop rows older than this (modern servers; "
                       "0 = keep forever)")
    apply.set_defaults(func=lambda a: cmd_schema_apply(a, flags(a)))
