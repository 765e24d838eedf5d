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
from .config import SETTINGS, AgentConfig, ConfigError, load_config

_die = exitcodes.die


# ---------------------------------------------------------------------------- agent
def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config file (default /etc/automagik-telemetry/agent.toml if present)")
    for setting in SETTINGS:
        parser.add_argument(
            setting.flag_name,
            dest="setting:" + setting.key,
            default=None,
            metavar="VALUE",
            help=f"{setting.help} [env {setting.env_name}]",
        )


def _flags(args: argparse.Namespace) -> dict[str, object]:
    return {k.split(":", 1)[1]: v for k, v in vars(args).items() if k.startswith("setting:")}


#: Import names of the ``agent`` extra's packages (pip names use "-" for "_").
AGENT_EXTRA = ("orjson", "requests", "zstandard", "prometheus_client")


def missing_agent_extras(names: Sequence[str] = ("orjson", "requests", "zstandard")) -> list[str]:
    """Packages of the ``agent`` extra (by default those the shipper needs) not importable here."""
    import importlib.util

    return [name for name in names if importlib.util.find_spec(name) is None]


def cmd_agent(args: argparse.Namespace) -> int:
    """The supervisor (supervisor.py): validate everything it can before any child starts, then supervise."""
    from . import preflight
    from .listen_socket import create, from_systemd
    from .logs import setup_logging
    from .sdnotify import Notifier, listen_fds
    from .supervisor import Supervisor

    fds = listen_fds()  # before anything else: the variables are removed so that no child inherits them
    try:
        config = load_config(args.config, _flags(args))
        preflight.check(config, socket_activated=bool(fds))
    except ConfigError as exc:
        return _die(exitcodes.CONFIG, f"config error: {exc}")
    setup_logging(config["log.level"], "supervisor")
    if config["sink"] in ("clickhouse", "embedded"):
        missing = missing_agent_extras()
        if missing:
            return _die(
                exitcodes.UNAVAILABLE,
                f"the shipper needs {', '.join(missing)}: install "
                "'automagik-telemetry[agent]', or run ingest only with --sink none",
            )
        if config["sink"] == "embedded":
            from .sink_chdb import chdb_missing

            if chdb_missing():
                return _die(exitcodes.UNAVAILABLE, str(chdb_missing()))
    try:
        listener = (
            from_systemd(fds, config["socket.path"]) if fds else create(config["socket.path"], config["socket.mode"])
        )
    except ConfigError as exc:
        return _die(exitcodes.CONFIG, f"config error: {exc}")
    flags = _flags(args)
    supervisor = Supervisor(
        config,
        lambda: load_config(args.config, flags),
        listener,
        Notifier(),
        control_path=preflight.control_socket_path(config),
    )
    return supervisor.run()


def cmd_ingest(args: argparse.Namespace) -> int:
    """Internal: the ingest process the supervisor starts (WAL writer + epoll loop on the lent socket).

    Run by hand (no supervisor) it reads its own config and binds ``socket.path`` itself.
    """
    import logging
    import time

    from .ingest import IngestOptions, IngestServer, IngestSetupError
    from .logs import set_level, setup_logging
    from .report import ChildStart, SupervisorGone
    from .wal import WalError, WalOptions, WalWriter

    try:
        start = ChildStart("ingest")
    except SupervisorGone:
        return exitcodes.FAILURE
    link, fail = start.link, start.fail
    try:
        config = start.config(lambda: load_config(args.config, _flags(args)))
    except ConfigError as exc:
        return fail(exitcodes.CONFIG, f"config error: {exc}")
    setup_logging(config["log.level"], "ingest")
    servers: list[IngestServer] = []
    if link is not None:
        from .metrics import collect_ingest

        link.start_reporting(
            loop_age=lambda: time.monotonic() - servers[0].last_turn if servers else 0.0,
            collect=lambda: collect_ingest(servers[0]) if servers else {},
            on_config=lambda new: set_level(new["log.level"]),
        )
    wal_options = WalOptions(
        segment_bytes=config["wal.segment_size"],
        max_bytes=config["wal.max_size"],
        min_free_bytes=config["wal.min_free"],
        disk_policy=config["wal.disk_policy"],
    )
    try:
        writer = WalWriter(config["wal.dir"], wal_options).open()
    except WalError as exc:
        return fail(exitcodes.CONFIG, str(exc))
    except OSError as exc:
        return fail(exitcodes.CONFIG, f"cannot use WAL directory {config['wal.dir']}: {exc.strerror}")
    options = IngestOptions(
        socket_path=config["socket.path"],
        socket_mode=config["socket.mode"],
        max_connections=config["socket.max_connections"],
        fsync=config["wal.fsync"],
        fsync_interval_s=config["wal.fsync_interval_ms"] / 1000,
        fsync_bytes=config["wal.fsync_bytes"],
        listen_fd=args.listen_fd,
    )
    server = IngestServer(options, writer)
    try:
        server.listen()
    except IngestSetupError as exc:
        writer.close()
        return fail(exitcodes.CONFIG, str(exc))
    servers.append(server)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: server.request_stop())
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file size limit is an EFBIG error, not a kill
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reloads come from the supervisor, through the channel

    def ready() -> None:
        if link is not None:
            link.ready()
        else:
            print("ready", file=sys.stderr, flush=True)

    try:
        server.serve_forever(on_ready=ready)
    except OSError as exc:
        logging.getLogger(__name__).critical("WAL storage failed, stopping: %s", exc)
        if link is not None:
            link.fail(f"WAL storage failed: {exc}")
        return exitcodes.IO_ERROR
    finally:
        writer.close()
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
def _agent_running_this(config: AgentConfig) -> int | None:
    """The pid of a running agent whose socket and WAL are this config's (the agent it configures)."""
    import os

    from .control import ControlError, request
    from .preflight import control_socket_path

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
    """Validate values, then (unless --no-runtime) the host facts they point at (:mod:`.preflight`).

    Checking the file of the agent that is running (same socket and WAL) is the normal step before a
    reload or restart: that agent holding its own socket and WAL is then not an error.
    """
    from .preflight import problems

    try:
        config = load_config(args.config, _flags(args))
    except ConfigError as exc:
        return _die(exitcodes.CONFIG, f"config error: {exc}")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="automagik-telemetry", description="Host-local telemetry agent.")
    sub = parser.add_subparsers(dest="command", required=True)

    agent = sub.add_parser("agent", help="run the agent in the foreground")
    _add_setting_flags(agent)
    agent.set_defaults(func=cmd_agent)

    # Internal (started by `agent`; no help= keeps it out of the command list).
    ingest = sub.add_parser("ingest", description="Internal: the ingest process `agent` starts.")
    _add_setting_flags(ingest)
    ingest.add_argument("--listen-fd", type=int, default=None, help="the listening socket, inherited")
    ingest.set_defaults(func=cmd_ingest)

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
    check.add_argument(
        "--no-runtime",
        action="store_true",
        help="check the values only, not this host (WAL "
        "directory, socket, files): for a config meant for another host or a running agent",
    )
    check.set_defaults(func=cmd_config_check)

    from .shipper_cli import add_parsers as add_shipper_parsers

    add_shipper_parsers(sub, _add_setting_flags, _flags)  # `shipper`, `schema apply`
    from .query_cli import add_parser as add_query_parser

    add_query_parser(sub, _add_setting_flags, _flags)  # `query`
    from . import dead_letter_cli, doctor, send_test, status_cli  # operator commands (docs/operations.md)

    status_cli.add_parser(sub, _add_setting_flags, _flags)  # `status`
    doctor.add_parser(sub, _add_setting_flags, _flags)  # `doctor`
    send_test.add_parser(sub, _add_setting_flags, _flags)  # `send-test`
    dead_letter_cli.add_parser(sub, _add_setting_flags, _flags)  # `dead-letter list|replay`
    sub.metavar = "{" + ",".join(name for name in sub.choices if name != "ingest") + "}"  # `ingest` is internal
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
        return _die(
            exitcodes.UNAVAILABLE,
            f"`automagik-telemetry {args.command}` needs {', '.join(missing)} "
            "(not installed): install 'automagik-telemetry[agent]'",
        )
