"""The shipper child's metrics dict (:mod:`..metrics.samples`), read from its shippers' stats and WAL readers.

The ``shipper_*`` metrics are totals over the three signals' shippers (their meaning from before there
were signals: every row shipped, every failure); ``shipper_consecutive_failures`` is the worst shipper's
and ``shipper_last_success_timestamp_seconds`` the latest. The ``shipper_signal_*`` metrics show each
signal on its own, so a table that holds up one signal is visible while the others ship.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..clickhouse.failover import FailoverSink, Health
from ..metrics.catalogue import FAILURE_CLASSES, POLICY_ADJUSTMENTS, P
from ..metrics.exposition import merge_histograms
from ..metrics.samples import MetricsDict, empty, sample
from .loop import Shipper

if TYPE_CHECKING:
    from .group import ShipperGroup


def _add(out: dict[str, float], key: str, value: float) -> None:
    out[key] = out.get(key, 0) + value


def _policy_metrics(out: MetricsDict, group: ShipperGroup | Shipper) -> None:
    """The insert policy's batch_wait, its last reading of the shard and its adjustments by reason."""
    c, g = out["counters"], out["gauges"]
    policy = group.policy
    if isinstance(group, Shipper):
        g[P + "shipper_batch_wait_seconds"] = group.batch_wait()
    elif group.shippers:
        g[P + "shipper_batch_wait_seconds"] = next(iter(group.shippers.values())).batch_wait()
    for reason in POLICY_ADJUSTMENTS:
        c[sample(P + "shipper_policy_adjustments_total", reason=reason)] = 0
    if policy is None:
        return
    for why, count in policy.adjustments.items():
        c[sample(P + "shipper_policy_adjustments_total", reason=why.value)] = count
    if policy.server_inserts_per_s is not None:
        g[P + "shipper_server_inserts_per_second"] = policy.server_inserts_per_s
        g[P + "shipper_server_active_parts"] = policy.max_parts


def _endpoint_metrics(out: MetricsDict, endpoints: FailoverSink) -> None:
    """Each endpoint's health, and the failovers and stalled inserts of the traces sink."""
    out["counters"][P + "shipper_failovers_total"] = endpoints.failovers
    out["counters"][P + "shipper_stalled_inserts_total"] = endpoints.stalls
    for endpoint, health in endpoints.health().items():
        if health is not Health.UNKNOWN:
            out["gauges"][sample(P + "shipper_endpoint_up", endpoint=endpoint)] = 1 if health is Health.UP else 0


def collect_shipper(group: ShipperGroup | Shipper, endpoints: FailoverSink | None = None) -> MetricsDict:
    """Metrics dict of the shipper child: one :class:`ShipperGroup` (or a lone spans :class:`Shipper`);
    ``endpoints``: the traces sink when it fails over between several endpoints."""
    from .loop import Shipper  # the type only: a group is the usual argument

    shippers = {"traces": group} if isinstance(group, Shipper) else {s.value: sh for s, sh in group.shippers.items()}
    out = empty()
    c, g = out["counters"], out["gauges"]
    histogram: dict[str, Any] | None = None
    failures_worst = 0
    for signal, shipper in shippers.items():
        s = shipper.stats
        _add(c, P + "shipper_batches_total", s.batches)
        _add(c, P + "shipper_rows_total", s.rows)
        _add(c, P + "shipper_uncompressed_bytes_total", s.bytes_raw)
        _add(c, P + "shipper_sent_bytes_total", s.bytes_compressed)
        _add(c, P + "shipper_insert_requests_total", s.requests)
        failures = dict(s.insert_failures)
        for cls in {*FAILURE_CLASSES, *failures}:
            _add(c, sample(P + "shipper_insert_failures_total", **{"class": cls}), failures.get(cls, 0))
        _add(c, sample(P + "shipper_retries_total", **{"class": "transient"}), s.retries_transient)
        _add(c, sample(P + "shipper_retries_total", **{"class": "config"}), s.retries_config)
        _add(c, P + "shipper_bisect_requests_total", s.bisect_requests)
        _add(c, sample(P + "shipper_dead_lettered_rows_total", reason="transform"), s.dead_lettered_transform)
        _add(c, sample(P + "shipper_dead_lettered_rows_total", reason="rejected"), s.dead_lettered_rejected)
        _add(c, sample(P + "shipper_batches_found_stored_total", when="resume"), s.resumed_batches_skipped)
        _add(c, sample(P + "shipper_batches_found_stored_total", when="retry"), s.retries_found_stored)
        _add(c, P + "shipper_probes_total", s.probes)
        _add(c, P + "shipper_probe_recoveries_total", s.probe_recoveries)
        rs = shipper.reader.stats if shipper.reader is not None else None
        _add(c, P + "wal_corrupt_records_skipped_total", rs.corrupt_records_skipped if rs is not None else 0)
        _add(c, P + "wal_missing_records_total", rs.gap_records if rs is not None else 0)
        c[sample(P + "shipper_signal_rows_total", signal=signal)] = s.rows
        c[sample(P + "shipper_signal_dead_lettered_rows_total", signal=signal)] = s.dead_lettered
        g[sample(P + "shipper_signal_consecutive_failures", signal=signal)] = shipper.consecutive_failures
        failures_worst = max(failures_worst, shipper.consecutive_failures)
        if s.last_success_time is not None:
            g[sample(P + "shipper_signal_last_success_timestamp_seconds", signal=signal)] = s.last_success_time
            latest = g.get(P + "shipper_last_success_timestamp_seconds", 0)
            g[P + "shipper_last_success_timestamp_seconds"] = max(latest, s.last_success_time)
        histogram = merge_histograms(histogram, s.insert_latency.to_dict())
        if s.last_error and "last_error" not in out["info"]:
            out["info"]["last_error"] = s.last_error if signal == "traces" else f"{signal}: {s.last_error}"
    g[P + "shipper_consecutive_failures"] = failures_worst
    _policy_metrics(out, group)
    out["counters"][P + "shipper_failovers_total"] = 0  # one endpoint: never (with several, below)
    out["counters"][P + "shipper_stalled_inserts_total"] = 0
    if endpoints is not None:
        _endpoint_metrics(out, endpoints)
    if histogram is not None:
        out["histograms"][P + "shipper_insert_duration_seconds"] = histogram
    return out
