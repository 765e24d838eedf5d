"""The ``automagik-telemetry`` command line: one function per subcommand, nothing else.

Every failure the operator can fix ends with one line saying what to fix and a named exit code
(:mod:`.exitcodes`), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence

from . import exitcodes
from .config import SETTINGS, SETTINGS_BY_KEY, ConfigError, load_config


def _die(code: int, message: str) -> int:
    print(f"automagik-telemetry: {message}", file=sys.stderr)
    return code


# ---------------------------------------------------------------------------- agent
def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config file (default /etc/automagik-telemetry/agent.toml if present)")
    for setting in SETTINGS:
        parser.add_argument(setting.flag_name, dest="setting:" + setting.key, default=None, metavar="VALUE",
                            help=f"{setting.help} [env {setting.env_name}]")


def _flags(args: argparse.Namespace) -> dict[str, object]:
    return {k.split(":", 1)[1]: v for k, v in vars(args).items() if k.startswith("setting:")}


def missing_agent_extras() -> list[str]:
    """Packages of the ``agent`` extra the shipper needs that are not importable here."""
    import importlib.util

    return [name for name in ("orjson", "requests", "zstandard") if importlib.util.find_spec(name) is None]


def _setting_argv(args: argparse.Namespace) -> list[str]:
    """The config file and setting flags this command got, for a child process that takes the same."""
    argv = ["--config", args.config] if args.config else []
    for key, value in _flags(args).items():
        if value is not None:
            argv += [SETTINGS_BY_KEY[key].flag_name, str(value)]
    return argv


def cmd_agent(args: argparse.Namespace) -> int:
    from .ingest import IngestOptions, IngestServer, IngestSetupError
    from .logs import setup_logging
    from .wal import WalError, WalOptions, WalWriter

    try:
        config = load_config(args.config, _flags(args))
    except ConfigError as exc:
        return _die(exitcodes.CONFIG, f"config error: {exc}")
    setup_logging(config["log.level"], "ingest")
    wal_options = WalOptions(segment_bytes=config["wal.segment_size"], max_bytes=config["wal.max_size"],
                             min_free_bytes=config["wal.min_free"], disk_policy=config["wal.disk_policy"])
    try:
        writer = WalWriter(config["wal.dir"], wal_options).open()
    except WalError as exc:
        return _die(exitcodes.CONFIG, str(exc))
    except OSError as exc:
        return _die(exitcodes.CONFIG, f"cannot use WAL directory {config['wal.dir']}: {exc.strerror}")
    options = IngestOptions(
        socket_path=config["socket.path"], socket_mode=config["socket.mode"],
        max_connections=config["socket.max_connections"], fsync=config["wal.fsync"],
        fsync_interval_s=config["wal.fsync_interval_ms"] / 1000, fsync_bytes=config["wal.fsync_bytes"])
    server = IngestServer(options, writer)
    try:
        server.listen()
    except IngestSetupError as exc:
        writer.close()
        return _die(exitcodes.CONFIG, str(exc))
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: server.request_stop())
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file size limit is an EFBIG error, not a kill
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # no live reload yet: a stray SIGHUP must not kill the agent
    shipper = None
    if config["sink"] == "clickhouse":
        from .child import ChildProcess

        missing = missing_agent_extras()
        if missing:
            server.close()
            writer.close()
            return _die(exitcodes.UNAVAILABLE, f"the shipper needs {', '.join(missing)}: install "
                        "'automagik-telemetry[agent]', or run ingest only with --sink none")

        argv = [sys.executable, "-m", "automagik_telemetry_agent", "shipper", *_setting_argv(args)]
        shipper = ChildProcess("shipper", argv)

    def ready() -> None:
        print("ready", file=sys.stderr, flush=True)
        if shipper is not None:
            shipper.start()

    try:
        server.serve_forever(on_ready=ready)
    except OSError as exc:
        import logging

        logging.getLogger(__name__).critical("WAL storage failed, stopping: %s", exc)
        return exitcodes.IO_ERROR
    finally:
        writer.close()
        if shipper is not None:
            shipper.stop()
    return exitcodes.OK


# ---------------------------------------------------------------------------- wal
def cmd_wal_verify(args: argparse.Namespace) -> int:
    from .wal.inspect import verify

    try:
        report = verify(args.dir)
    except FileNotFoundError:
        return _die(exitcodes.CONFIG, f"WAL directory {args.dir} does not exist")
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        for key, value in report.to_dict().items():
            print(f"{key}: {value}")
    return exitcodes.OK if report.clean else exitcodes.FAILURE


def cmd_wal_dump(args: argparse.Namespace) -> int:
    from .wal.inspect import dump

    try:
        for seq, kind, payload in dump(args.dir, start_after=args.after):
            # Strip only the final newline: an empty record line is a record (the shipper dead-letters it).
            resource, *records = (payload[:-1] if payload.endswith(b"\n") else payload).split(b"\n")
            for index, record in enumerate(records):
                line = {"seq": seq, "index": index, "kind": kind}
                try:
                    line["record"] = json.loads(record)
                    line["resource"] = json.loads(resource)
                except ValueError:
                    line["raw"] = record.decode("utf-8", "replace")
                sys.stdout.write(json.dumps(line, separators=(",", ":")) + "\n")
    except FileNotFoundError:
        return _die(exitcodes.CONFIG, f"WAL directory {args.dir} does not exist")
    except BrokenPipeError:
        return exitcodes.OK
    return exitcodes.OK


# ---------------------------------------------------------------------------- config
def cmd_config_check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, _flags(args))
    except ConfigError as exc:
        return _die(exitcodes.CONFIG, f"config error: {exc}")
    for key, value in config.items():
        shown = "<redacted>" if key == "clickhouse.password" and value else value
        print(f"{key} = {shown!r}  ({config.sources[key]})")
    return exitcodes.OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="automagik-telemetry", description="Host-local telemetry agent.")
    sub = parser.add_subparsers(dest="command", required=True)

    agent = sub.add_parser("agent", help="run the agent in the foreground")
    _add_setting_flags(agent)
    agent.set_defaults(func=cmd_agent)

    wal = sub.add_parser("wal", help="inspect a write-ahead log directory (read-only)")
    wal_sub = wal.add_subparsers(dest="wal_command", required=True)
    verify = wal_sub.add_parser("verify", help="check every segment; exit 1 if corruption is found")
    verify.add_argument("dir")
    verify.add_argument("--json", action="store_true", help="print one JSON object")
    verify.set_defaults(func=cmd_wal_verify)
    dump = wal_sub.add_parser("dump", help="print every record as a JSON line")
    dump.add_argument("dir")
    dump.add_argument("--after", type=int, default=0, help="only records with a sequence number above this")
    dump.set_defaults(func=cmd_wal_dump)

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate the configuration without starting")
    _add_setting_flags(check)
    check.set_defaults(func=cmd_config_check)

    from .shipper_cli import add_parsers as add_shipper_parsers

    add_shipper_parsers(sub, _add_setting_flags, _flags)  # `shipper`, `schema apply`
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
