"""The ``shipper`` and ``schema apply`` subcommands (registered by :mod:`.cli`)."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from . import exitcodes
from .config import ConfigError, load_config

if TYPE_CHECKING:
    from .shipper import ShipperOptions
    from .sink import Sink


_die = exitcodes.die


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


def sink_from_config(config: Mapping[str, Any], serve_queries: bool = False) -> Sink:
    """The sink ``config`` names: the embedded chDB store for ``sink = "embedded"``, else ClickHouse over HTTP
    (also for ``sink = "none"``: a shipper started on its own next to an ingest-only agent ships to a server).

    Raises ConfigError for a bad setting and :class:`~.sink_chdb.ChdbUnavailable` (exit 69) when the
    embedded sink is chosen but chDB is not installed. ``serve_queries``: the embedded store answers
    `automagik-telemetry query` while this process holds it (the shipper's sink does).
    """
    if config["sink"] == "embedded":
        from .sink_chdb import ChdbUnavailable, EmbeddedSink, chdb_missing, load_chdb

        missing = chdb_missing()
        if missing:
            raise ChdbUnavailable(missing)
        try:
            sink = EmbeddedSink(
                config["embedded.dir"],
                config["clickhouse.database"],
                config["clickhouse.table"],
                serve_queries=serve_queries,
            )
            load_chdb(sink.directory)  # fail now, with one line, rather than retrying forever
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        except OSError as exc:
            raise ConfigError(f"embedded.dir: {exc.strerror or exc}") from None
        return sink
    from .sink_http import ClickHouseHttpSink

    try:
        return ClickHouseHttpSink(
            endpoint=config["clickhouse.endpoint"],
            database=config["clickhouse.database"],
            table=config["clickhouse.table"],
            username=config["clickhouse.username"],
            password=read_password(config),
            ca_bundle=config["clickhouse.ca_bundle"] or None,
            verify_tls=config["clickhouse.verify_tls"],
            connect_timeout=config["clickhouse.connect_timeout"],
            read_timeout=config["clickhouse.read_timeout"],
            compression=config["clickhouse.compression"],
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


#: Live settings of the shipper (applied on reload) -> the ShipperOptions field each one sets.
LIVE_OPTIONS = {
    "shipper.batch_size": "batch_rows",
    "shipper.batch_bytes": "batch_bytes",
    "shipper.batch_wait": "batch_wait_s",
    "shipper.max_rows_per_second": "drain_rows_per_s",
}
ABANDON_GRACE_S = 0.5  # after agent.stop_timeout, the shipper process exits even if a send is still blocked


def shipper_options(config: Mapping[str, Any]) -> ShipperOptions:
    """The shipper's options from a configuration (the live ones change later through apply_options)."""
    from .shipper import ShipperOptions

    return ShipperOptions(
        batch_rows=config["shipper.batch_size"],
        batch_bytes=config["shipper.batch_bytes"],
        batch_wait_s=config["shipper.batch_wait"],
        backoff_base_s=config["shipper.retry_base"],
        backoff_cap_s=config["shipper.retry_max"],
        config_retry_s=config["shipper.config_retry"],
        drain_rows_per_s=config["shipper.max_rows_per_second"],
        stop_deadline_s=config["agent.stop_timeout"],
        dead_letter_dir=config["shipper.dead_letter_dir"] or None,
    )


def cmd_shipper(args: argparse.Namespace, flags: dict[str, object]) -> int:
    """Ship the WAL until SIGTERM/SIGINT. Under the supervisor: configuration and reloads come through the
    report channel (report.py), progress goes back in heartbeats; on its own: its own file and flags, and
    SIGHUP re-reads them. Either way only the live settings (LIVE_OPTIONS, log.level) change while it runs."""
    import logging
    import os
    import threading

    from .config import changed_settings
    from .logs import set_level, setup_logging
    from .report import ChildStart, Liveness, SupervisorGone
    from .shipper import Shipper
    from .sink_chdb import ChdbUnavailable

    try:
        start = ChildStart("shipper")
    except SupervisorGone:
        return exitcodes.FAILURE
    link, fail = start.link, start.fail
    try:
        config = start.config(lambda: load_config(args.config, flags))
        sink = sink_from_config(config, serve_queries=True)
    except ConfigError as exc:
        return fail(exitcodes.CONFIG, f"config error: {exc}")
    except ChdbUnavailable as exc:
        return fail(exitcodes.UNAVAILABLE, str(exc))
    setup_logging(config["log.level"], "shipper")
    log = logging.getLogger("automagik_telemetry_agent.shipper_cli")
    # Heartbeat: an HTTP call may take up to connect + read timeout (detect() makes up to three).
    liveness = Liveness()
    call = config["clickhouse.connect_timeout"] + config["clickhouse.read_timeout"]
    watched = liveness.watch(sink, {"insert": call, "query": call, "count_present": call, "detect": 3 * call})
    shipper = Shipper(config["wal.dir"], watched, shipper_options(config))  # type: ignore[arg-type]
    shipper.declare_waits(liveness)
    applied = dict(config.items())

    def apply(new: Mapping[str, Any]) -> None:
        changes = {LIVE_OPTIONS[k]: new[k] for k in LIVE_OPTIONS if new[k] != applied[k]}
        if new["log.level"] != applied["log.level"]:
            set_level(new["log.level"])
        if changes:
            shipper.apply_options(**changes)
        done = [f"{k} = {new[k]!r}" for k in (*LIVE_OPTIONS, "log.level") if new[k] != applied[k]]
        applied.update({k: new[k] for k in (*LIVE_OPTIONS, "log.level")})
        if done:
            log.info("applied %s", ", ".join(done))

    stop_requested = threading.Event()
    reload_requested = threading.Event()

    def abandon_at_deadline() -> None:
        """A send blocked in the network cannot see the stop: past the deadline, exit anyway (the batch
        was never committed, so it stays in the WAL and is sent again by the next shipper)."""
        stop_requested.wait()
        time.sleep(config["agent.stop_timeout"] + ABANDON_GRACE_S)
        log.warning(
            "still sending %.1f s after the stop request: abandoning the batch in flight (it stays in the WAL)",
            config["agent.stop_timeout"] + ABANDON_GRACE_S,
        )
        logging.shutdown()
        os._exit(exitcodes.OK)

    def reload_from_file() -> None:  # standalone only: under the supervisor reloads come through the channel
        while True:
            reload_requested.wait()
            reload_requested.clear()
            try:
                new = load_config(args.config, flags)
            except ConfigError as exc:
                log.error("configuration reload failed, keeping the running configuration: %s", exc)
                continue
            for s in changed_settings(applied, new):
                if s.key not in LIVE_OPTIONS and not s.live:
                    log.warning("%s changed: needs a restart of the shipper", s.key)
            apply(new)

    def on_stop(*_: object) -> None:
        shipper.request_stop(config["agent.stop_timeout"])
        stop_requested.set()

    threading.Thread(target=abandon_at_deadline, name="stop-deadline", daemon=True).start()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_stop)
    if link is not None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the supervisor sends reloads through the channel
        link.start_reporting(
            loop_age=liveness.age,
            collect=lambda: _collect_shipper(shipper),
            on_config=apply,
            is_ready=lambda: shipper.reader is not None,
        )
    else:
        threading.Thread(target=reload_from_file, name="reload", daemon=True).start()
        signal.signal(signal.SIGHUP, lambda *_: reload_requested.set())
        print("ready", file=sys.stderr, flush=True)
    try:
        shipper.run()
    except Exception as exc:
        if link is not None:
            link.fail(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        sink.close()
    return exitcodes.OK


def _collect_shipper(shipper: Any) -> dict:
    from .metrics import collect_shipper

    return collect_shipper(shipper)


def cmd_schema_apply(args: argparse.Namespace, flags: dict[str, object]) -> int:
    from .schema import SchemaError, apply, pick_profile
    from .sink_chdb import ChdbUnavailable
    from .sink_http import SinkError

    try:
        config = load_config(args.config, flags)
        sink = sink_from_config(config)
    except ConfigError as exc:
        return _die(exitcodes.CONFIG, f"config error: {exc}")
    except ChdbUnavailable as exc:
        return _die(exitcodes.UNAVAILABLE, str(exc))
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


def add_parsers(
    sub: Any,
    add_setting_flags: Callable[[argparse.ArgumentParser], None],
    flags: Callable[[argparse.Namespace], dict[str, object]],
) -> None:
    shipper = sub.add_parser("shipper", help="ship the WAL to ClickHouse in the foreground")
    add_setting_flags(shipper)
    shipper.set_defaults(func=lambda a: cmd_shipper(a, flags(a)))

    schema = sub.add_parser("schema", help="ClickHouse schema tools")
    schema_sub = schema.add_subparsers(dest="schema_command", required=True)
    apply = schema_sub.add_parser("apply", help="create or migrate the traces table (needs CREATE rights)")
    add_setting_flags(apply)
    apply.add_argument(
        "--ttl-days", type=int, default=0, help="drop rows older than this (modern servers; 0 = keep forever)"
    )
    apply.set_defaults(func=lambda a: cmd_schema_apply(a, flags(a)))
