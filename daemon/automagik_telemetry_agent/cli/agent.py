"""``automagik-telemetry agent``: validate everything that can be validated before any child starts, then
run the supervisor; and the internal ``ingest`` command the supervisor starts."""

from __future__ import annotations

import argparse

from .. import exitcodes, preflight
from ..config import ConfigError
from ..ingest.main import run as ingest_main
from ..logs import setup_logging
from ..paths import control_socket_path
from ..supervisor.listener import ListenSocket, create, create_otlp, from_systemd
from ..supervisor.sdnotify import Notifier, listen_fds
from ..supervisor.supervisor import Supervisor
from .options import AGENT, ALL, Subparsers, add_setting_flags, loader
from .packages import OTLP_NEEDS, missing_agent_extras


def run_agent(args: argparse.Namespace) -> int:
    fds = listen_fds()  # before anything else: the variables are removed so that no child inherits them
    load = loader(args)
    try:
        config = load()
        preflight.check(config, socket_activated=bool(fds))
    except ConfigError as exc:
        return exitcodes.die(exitcodes.CONFIG, f"config error: {exc}")
    setup_logging(config["log.level"], "supervisor")
    if config["sink"] in ("clickhouse", "embedded"):
        missing = missing_agent_extras()
        if missing:
            return exitcodes.die(
                exitcodes.UNAVAILABLE,
                f"the shipper needs {', '.join(missing)}: install 'automagik-telemetry[agent]', or run ingest only "
                "with --sink none",
            )
        if config["sink"] == "embedded":
            from ..clickhouse.chdb import chdb_missing  # needs the agent extra, checked just above

            if chdb_missing():
                return exitcodes.die(exitcodes.UNAVAILABLE, str(chdb_missing()))
    try:
        listener = (
            from_systemd(fds, config["socket.path"]) if fds else create(config["socket.path"], config["socket.mode"])
        )
    except ConfigError as exc:
        return exitcodes.die(exitcodes.CONFIG, f"config error: {exc}")
    try:
        otlp = create_otlp(config) if config["otlp.listen"] or config["otlp.unix_path"] else []
    except ConfigError as exc:
        listener.close()
        return exitcodes.die(exitcodes.CONFIG, f"config error: {exc}")
    if otlp:
        missing = missing_agent_extras(OTLP_NEEDS)
        if missing:
            _close(listener, *otlp)
            return exitcodes.die(
                exitcodes.UNAVAILABLE,
                f"the OTLP receiver needs {', '.join(missing)}: install 'automagik-telemetry[agent]', or turn it "
                'off with --otlp-listen ""',
            )
        from ..ingest.otlp.main import check_files  # needs the agent extra, checked just above

        problem = check_files(config)
        if problem:  # before any child starts: a bad token or certificate must not cost ingest its start
            _close(listener, *otlp)
            return exitcodes.die(exitcodes.CONFIG, f"config error: {problem}")
    supervisor = Supervisor(config, load, listener, Notifier(), control_path=control_socket_path(config), otlp=otlp)
    return supervisor.run()


def _close(*sockets: ListenSocket) -> None:
    for sock in sockets:
        sock.close()


def run_ingest(args: argparse.Namespace) -> int:
    return ingest_main(loader(args), args.listen_fd)


def run_otlp(args: argparse.Namespace) -> int:
    from ..ingest.otlp.main import run  # needs the agent extra (h11, opentelemetry-proto)

    return run(loader(args), args.listen_fd)


def add_parser(sub: Subparsers) -> None:
    agent = sub.add_parser("agent", help="run the agent in the foreground")
    add_setting_flags(agent, ALL)
    agent.set_defaults(func=run_agent)
    # Internal (started by `agent`; no help= keeps it out of the command list).
    internal = sub.add_parser("ingest", description="Internal: the ingest process `agent` starts.")
    add_setting_flags(internal, AGENT)
    internal.add_argument("--listen-fd", type=int, default=None, help="the listening socket, inherited")
    internal.set_defaults(func=run_ingest)
    otlp = sub.add_parser("otlp", description="Internal: the OTLP/HTTP receiver process `agent` starts.")
    add_setting_flags(otlp, AGENT)
    otlp.add_argument("--listen-fd", type=int, action="append", default=[], help="a listening socket, inherited")
    otlp.set_defaults(func=run_otlp)
