"""The shipper process (``automagik-telemetry shipper``, and the supervisor's ``shipper`` child).

It ships the WAL until SIGTERM/SIGINT. Under the supervisor its configuration and reloads come through
the channel (``lifecycle``) and its progress goes back in reports; on its own it reads its own file and
flags, and SIGHUP re-reads them. Either way only the live settings (:data:`LIVE_OPTIONS`, ``log.level``)
change while it runs.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from .. import exitcodes
from ..clickhouse.chdb import ChdbUnavailable
from ..clickhouse.factory import insert_table, sink_from_config
from ..clickhouse.failover import FailoverSink
from ..clickhouse.http import PROBE_TIMEOUT_S
from ..clickhouse.load import LOAD_TIMEOUT_S, LoadSample, sample_load
from ..clickhouse.sink import Sink
from ..config import AgentConfig, ConfigError, changed_settings, split_urls
from ..lifecycle.liveness import Liveness
from ..lifecycle.run import ChildContext, run_child
from ..logs import set_level
from ..paths import shipper_state_dir
from ..wal.signals import Signal
from .group import ShipperGroup
from .insert_policy import STATE_FILE, InsertPolicy, PolicyMode, PolicySettings, load_wait, save_wait
from .metrics import collect_shipper
from .options import ShipperOptions
from .signals import SHIPMENTS

__all__ = ["LIVE_OPTIONS", "POLICY_SETTINGS", "policy_settings", "run", "shipper_options"]

log = logging.getLogger(__name__)

#: Live settings of the shipper (applied on reload) -> the ShipperOptions field each one sets.
LIVE_OPTIONS = {
    "shipper.batch_size": "batch_rows",
    "shipper.batch_bytes": "batch_bytes",
    "shipper.batch_wait": "batch_wait_s",
    "shipper.max_rows_per_second": "drain_rows_per_s",
}
#: Live settings of the insert policy (applied on reload: policy_settings).
POLICY_SETTINGS = (
    "shipper.insert_policy",
    "shipper.batch_wait",
    "shipper.batch_wait_max",
    "shipper.target_inserts_per_second",
)
ABANDON_GRACE_S = 0.5  # after agent.stop_timeout, the shipper process exits even if a send is still blocked


def shipper_options(config: Mapping[str, Any]) -> ShipperOptions:
    """The shipper's options from a configuration (the live ones change later through apply_options)."""
    return ShipperOptions(
        batch_rows=config["shipper.batch_size"],
        batch_bytes=config["shipper.batch_bytes"],
        batch_wait_s=config["shipper.batch_wait"],
        backoff_base_s=config["shipper.retry_base"],
        backoff_cap_s=config["shipper.retry_max"],
        probe_interval_s=config["shipper.probe_interval"],
        config_retry_s=config["shipper.config_retry"],
        drain_rows_per_s=config["shipper.max_rows_per_second"],
        stop_deadline_s=config["agent.stop_timeout"],
        dead_letter_dir=config["shipper.dead_letter_dir"] or None,
    )


def policy_settings(config: Mapping[str, Any]) -> PolicySettings:
    """The insert policy's settings from a configuration (the embedded store has no fleet: always fixed)."""
    mode = PolicyMode(config["shipper.insert_policy"]) if config["sink"] != "embedded" else PolicyMode.FIXED
    return PolicySettings(
        mode=mode,
        batch_wait_s=config["shipper.batch_wait"],
        batch_wait_max_s=config["shipper.batch_wait_max"],
        target_inserts_per_s=config["shipper.target_inserts_per_second"],
    )


class LoadSampler:
    """The insert policy's reading of the servers the traces sink writes to (a declared wait of the shipper)."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    def sample(self) -> LoadSample | None:
        return sample_load(self._sink)


def run(load: Callable[[], AgentConfig]) -> int:
    """The shipper process's main; ``load`` reads the configuration when no supervisor hands one over."""
    return run_child("shipper", load, lambda context: _ship(context, load))


def _ship(context: ChildContext, load: Callable[[], AgentConfig]) -> int:
    config, link = context.config, context.link
    try:
        sink = sink_from_config(config, serve_queries=True)
    except ConfigError as exc:
        return context.fail(exitcodes.CONFIG, f"config error: {exc}")
    except ChdbUnavailable as exc:
        return context.fail(exitcodes.UNAVAILABLE, str(exc))
    sinks: dict[Signal, Sink] = {Signal.TRACES: sink}
    for other in (Signal.LOGS, Signal.METRICS):
        shipment = SHIPMENTS[other]
        sinks[other] = sink.for_table(insert_table(config, config[shipment.table_setting]), shipment.row_keys)
    # Heartbeat: an HTTP call may take up to connect + read timeout (detect() makes up to three).
    liveness = Liveness()
    # With several endpoints an insert, a query or a probe may try each of them in turn, each with a ping, a
    # detection (three queries) and the request itself.
    n = len(split_urls(config["clickhouse.endpoint"])) if config["sink"] != "embedded" else 1
    one = config["clickhouse.connect_timeout"] + config["clickhouse.read_timeout"]
    call = one if n == 1 else n * (4 * one + 2 * PROBE_TIMEOUT_S)
    bounds = {
        "insert": call,
        "query": call,
        "count_present": call,
        "count_rows": call,
        "detect": 3 * call,
        "probe": n * (PROBE_TIMEOUT_S + 1.0),
    }
    watched = {kind: liveness.watch(s, bounds) for kind, s in sinks.items()}
    sampler = liveness.watch(LoadSampler(sink), {"sample": n * (LOAD_TIMEOUT_S + config["clickhouse.connect_timeout"])})
    kept = os.path.join(shipper_state_dir(os.path.abspath(config["wal.dir"])), STATE_FILE)
    policy = InsertPolicy(
        policy_settings(config),
        sampler.sample,
        initial_wait_s=load_wait(kept),
        on_change=lambda wait: save_wait(kept, wait),
    )
    shipper = ShipperGroup(config["wal.dir"], watched, shipper_options(config), policy)
    shipper.declare_waits(liveness)
    applied = dict(config.items())

    def apply(new: Mapping[str, Any]) -> None:
        changes = {LIVE_OPTIONS[k]: new[k] for k in LIVE_OPTIONS if new[k] != applied[k]}
        if new["log.level"] != applied["log.level"]:
            set_level(new["log.level"])
        if changes:
            shipper.apply_options(**changes)
        if any(new[k] != applied[k] for k in POLICY_SETTINGS):
            policy.update(policy_settings(new))
        live = (*LIVE_OPTIONS, *POLICY_SETTINGS, "log.level")
        done = [f"{k} = {new[k]!r}" for k in live if new[k] != applied[k]]
        applied.update({k: new[k] for k in live})
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
                new = load()
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
        link.start_reporting(
            loop_age=liveness.age,
            collect=lambda: collect_shipper(shipper, sink if isinstance(sink, FailoverSink) else None),
            on_config=apply,
            is_ready=lambda: shipper.ready,
        )
    else:
        threading.Thread(target=reload_from_file, name="reload", daemon=True).start()
        signal.signal(signal.SIGHUP, lambda *_: reload_requested.set())
        context.ready()
    try:
        shipper.run()
    except Exception as exc:
        if link is not None:
            link.fail(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        for s in reversed(list(sinks.values())):  # the tables' sinks before the one that owns the carrier
            s.close()
    return exitcodes.OK
