"""What ``automagik-telemetry send-test`` does: one span through the real path, timed until it is queryable.

The span is recorded with the real client library (``automagik_telemetry``) to ``socket.path``,
flushed (the agent's ACK means it is durable in the WAL), then looked up by its trace and span id in
the sink (ClickHouse over HTTP, or the embedded store through ``clickhouse.query``) until the row
is visible or ``--timeout`` runs out. The last line says where it got stuck: the agent is not
reachable, did not acknowledge, or the span did not reach the table (then the shipper is the place
to look). Exit 0 when the row was seen, 1 otherwise, 2 for a bad configuration.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from automagik_telemetry import AutomagikTelemetry, TelemetryConfig, __version__

from .. import exitcodes
from ..clickhouse.factory import sink_from_config
from ..clickhouse.query import run_query
from ..config import ConfigError

__all__ = ["make_lookup", "send_and_wait"]

SERVICE = "automagik-telemetry"
SPAN_NAME = "automagik-telemetry.send-test"
POLL_INTERVAL_S = 0.2


def _die(code: int, message: str) -> int:
    return exitcodes.die(code, f"send-test: {message}")


def _reachable(path: str) -> str | None:
    """None if the agent accepts a connection on ``path``, else why not."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    probe.settimeout(2.0)
    try:
        probe.connect(path)
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        probe.close()
    return None


def _lookup_sql(database: str, table: str, trace_id: str, span_id: str) -> str:
    return (
        f"SELECT count() FROM {database}.{table} WHERE service_name = '{SERVICE}' AND span_name = '{SPAN_NAME}' "
        f"AND trace_id = '{trace_id}' AND span_id = '{span_id}'"
    )


def make_lookup(config: Mapping[str, Any]) -> tuple[Callable[[str], str], Callable[[], None], str]:
    """(run one SELECT -> text, close, description of the target) for the configured sink.

    Raises :class:`ConfigError` when the sink cannot be queried from here.
    """
    if config["sink"] == "embedded":
        return (
            (lambda sql: run_query(config, sql, "TabSeparated")),
            (lambda: None),
            f"the embedded store in {config['embedded.dir']}",
        )
    if config["sink"] == "none":
        raise ConfigError(
            "sink is none: the agent does not ship, so the span can never reach a table; "
            "set --sink clickhouse (or embedded)"
        )
    sink = sink_from_config(config)
    return (
        (lambda sql: sink.query(sql + " FORMAT TabSeparated")),
        sink.close,
        f"{sink.target} on ClickHouse at {sink.endpoint}",
    )


def send_and_wait(config: Mapping[str, Any], query: Callable[[str], str], target: str, timeout: float) -> int:
    path = config["socket.path"]
    why = _reachable(path)
    if why is not None:
        return _die(
            exitcodes.FAILURE,
            f"the agent is not reachable on {path} ({why}): is it running? check `automagik-telemetry status`",
        )
    client = AutomagikTelemetry(
        config=TelemetryConfig(
            project_name=SERVICE,
            version=__version__,
            environment="send-test",
            service_name=SERVICE,
            socket_path=path,
            exit_flush_timeout=0.5,
        )
    )
    try:
        started = time.monotonic()
        with client.span(SPAN_NAME, {"send_test.id": uuid.uuid4().hex}) as span:
            trace_id, span_id = span.trace_id, span.span_id
        if not client.flush(timeout=min(timeout, 10.0)):
            stats = client.stats()
            return _die(
                exitcodes.FAILURE,
                f"the agent on {path} did not acknowledge the span within "
                f"{min(timeout, 10.0):g}s (client: {stats.get('rejected_records', 0)} rejected "
                f"{stats.get('reject_reasons') or ''}, {stats.get('unconfirmed_records', 0)} unconfirmed): "
                "check `automagik-telemetry status` and the agent's log",
            )
        acked = time.monotonic()
    finally:
        client.shutdown(0.5)
    print(f"span {trace_id}/{span_id} acknowledged by the agent after {(acked - started) * 1000:.1f} ms")
    sql = _lookup_sql(config["clickhouse.database"], config["clickhouse.table"], trace_id, span_id)
    last_error = ""
    deadline = started + timeout
    while True:
        try:
            if int(query(sql).strip() or 0) > 0:
                break
            last_error = ""
        except Exception as exc:  # SinkError, or the embedded store's error: keep polling, report the last
            last_error = " ".join(str(exc).split())
        if time.monotonic() >= deadline:
            error = f" (last query error: {last_error})" if last_error else ""
            return _die(
                exitcodes.FAILURE,
                f"the span was acknowledged but is not in {target} after {timeout:g}s"
                f"{error}: check `automagik-telemetry status` and the shipper's log",
            )
        time.sleep(POLL_INTERVAL_S)
    visible = time.monotonic()
    print(f"span visible in {target} {visible - started:.2f}s after it was sent")
    return exitcodes.OK
