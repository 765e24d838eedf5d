"""The ``otlp`` child's metrics dict (:mod:`...metrics.samples`); each name is in the catalogue and docs/metrics.md."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...metrics.catalogue import OTLP_REFUSALS, OTLP_SIGNALS, OTLP_STATUSES, P
from ...metrics.samples import MetricsDict, empty, sample

if TYPE_CHECKING:
    from .dedup import DurableParts
    from .http import HttpServer
    from .receiver import Receiver


def collect_otlp(server: HttpServer, receiver: Receiver, durable: DurableParts) -> MetricsDict:
    """Read in the reporter thread while the event loop runs: copies of the counters first (a dict that
    changes size under iteration raises; the copy is retried)."""
    for _ in range(5):
        try:
            return _collect(server, receiver, durable)
        except RuntimeError:
            continue
    return _collect(server, receiver, durable)


def _collect(server: HttpServer, receiver: Receiver, durable: DurableParts) -> MetricsDict:
    out = empty()
    c, g = out["counters"], out["gauges"]
    http, rs = server.stats, receiver.stats
    responses = dict(http.responses)
    for signal in OTLP_SIGNALS:  # the series alerts and dashboards use exist from the start
        for status in OTLP_STATUSES:
            responses.setdefault((signal, status), 0)
    for (path, status), n in responses.items():
        c[sample(P + "otlp_requests_total", signal=path, status=str(status))] = n
    c[P + "otlp_received_bytes_total"] = http.bytes_received
    for signal in OTLP_SIGNALS:
        c[sample(P + "otlp_items_accepted_total", signal=signal)] = rs.items_accepted.get(signal, 0)
        c[sample(P + "otlp_items_unavailable_total", signal=signal)] = rs.items_unavailable.get(signal, 0)
        for reason in OTLP_REFUSALS:
            c[sample(P + "otlp_items_refused_total", signal=signal, reason=reason)] = rs.items_refused.get(
                (signal, reason), 0
            )
    for encoding in ("protobuf", "json"):
        c[sample(P + "otlp_decode_errors_total", encoding=encoding)] = rs.decode_errors.get(encoding, 0)
    c[P + "otlp_requests_deduplicated_total"] = rs.requests_deduplicated
    c[P + "otlp_connections_accepted_total"] = http.connections_accepted
    c[P + "otlp_connections_refused_total"] = http.connections_refused
    for phase, n in dict(http.connections_timed_out).items():
        if phase in ("idle", "headers", "body"):
            c[sample(P + "otlp_connections_timed_out_total", phase=phase)] = n
    g[P + "otlp_connections_open"] = len(server.connections)
    g[P + "otlp_buffered_bytes"] = server.buffered
    g[P + "otlp_dedup_requests"] = len(durable)
    out["histograms"][P + "otlp_request_duration_seconds"] = http.latency.to_dict()
    return out
