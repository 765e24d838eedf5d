"""What the supervisor says about itself: the ``status`` answer (control socket), the short ``STATUS=``
line for systemd, and the metrics aggregate both read (``metrics.exposition``).

The aggregate needs prometheus-client: :func:`agent_metrics` builds it, raises :class:`MissingExtra`
(exit 69) when the endpoint is wanted without it, and otherwise lets the agent run without counters
(``status`` then says why: :data:`NO_METRICS`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import AgentConfig
from ..metrics.exposition import AgentMetrics
from ..units import size_text
from .children import Child
from .listener import ListenSocket
from .sdnotify import Notifier
from .states import ALIVE, State

log = logging.getLogger(__name__)

#: Why ``status`` has no counters when the agent runs without prometheus-client (metrics.listen = "").
NO_METRICS = "prometheus-client is not installed (install 'automagik-telemetry[agent]')"


class MissingExtra(RuntimeError):
    """A package of the ``agent`` extra is missing (exit 69); the message says what to install."""


def agent_metrics(listen: str) -> AgentMetrics | None:
    """The metrics aggregate, or None when prometheus-client is missing and no endpoint is wanted
    (:class:`MissingExtra`, exit 69, when it is wanted)."""
    try:
        return AgentMetrics()
    except ImportError:
        if listen:
            raise MissingExtra(
                f"metrics.listen is {listen!r} but prometheus-client is not installed: install "
                "'automagik-telemetry[agent]', or set metrics.listen = \"\""
            ) from None
        log.warning("%s: `status` shows no counters", NO_METRICS)
        return None


@dataclass
class Rate:
    """Spans per second for STATUS=, from two samples of the received counter."""

    at: float = 0.0
    total: int = 0
    per_s: float = 0.0


def metrics_summary(metrics: AgentMetrics | None) -> dict[str, Any]:
    """The aggregate's summary, or {} without one (or when it fails)."""
    if metrics is None:
        return {}
    try:
        return metrics.summary()
    except Exception:  # a metrics bug must not take status or STATUS= down
        log.debug("metrics summary failed", exc_info=True)
        return {}


def render_status(
    state: str,
    started: float,
    children: Mapping[str, Child],
    metrics: AgentMetrics | None,
    config: AgentConfig,
    listener: ListenSocket,
    notifier: Notifier,
    otlp: Sequence[ListenSocket] = (),
) -> dict[str, Any]:
    """The answer to the control socket's ``status`` (``automagik-telemetry status``)."""
    now = time.monotonic()
    return {
        "pid": os.getpid(),
        "uptime_s": round(now - started, 3),
        "state": state,
        "children": {
            name: {
                "state": c.state.value,
                "pid": c.pid if c.state in ALIVE else None,
                "restarts": c.restarts,
                "last_report_age_s": None if c.last_report is None else round(now - c.last_report, 3),
                "loop_age_s": round(c.loop_age, 3),
                **({"error": c.why} if c.why else {}),
            }
            for name, c in children.items()
        },
        "metrics": metrics_summary(metrics),
        **({"metrics_unavailable": NO_METRICS} if metrics is None else {}),
        "config": {
            "socket.path": config["socket.path"],
            "wal.dir": config["wal.dir"],
            "sink": config["sink"],
        },
        "otlp_listen": [("http://" if sock.tcp else "unix:") + sock.path for sock in otlp],
        "socket_activated": listener.activated,
        "systemd_notify": notifier.enabled,
    }


def render_status_line(state: str, children: Mapping[str, Child], metrics: AgentMetrics | None, rate: Rate) -> str:
    """The short live summary of STATUS=: ``ingest 1200 spans/s, backlog 4.0 MiB, last ship 2s ago``
    (``rate`` is updated with this sample)."""
    if state == "starting":
        return "starting: " + ", ".join(f"{c.name} {c.state.value}" for c in children.values())
    now = time.monotonic()
    m = metrics_summary(metrics)
    total = int(m.get("spans_received", 0))
    if rate.at and now > rate.at:
        rate.per_s = max(0.0, (total - rate.total) / (now - rate.at))
    rate.at, rate.total = now, total
    parts = [f"ingest {rate.per_s:.0f} spans/s", f"backlog {size_text(m.get('wal_unshipped_bytes', 0))}"]
    if "shipper" in children:
        last = m.get("last_ship_time")
        parts.append(f"last ship {max(0.0, time.time() - last):.0f}s ago" if last else "nothing shipped yet")
    troubles = [
        f"{c.name} {c.state.value} ({c.restarts} restarts)" for c in children.values() if c.state is not State.RUNNING
    ]
    return ", ".join(parts) + (f"; {', '.join(troubles)}" if troubles else "")
