"""The shipper child's metrics dict (:mod:`..metrics.samples`), read from the shipper's stats and its WAL reader."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..metrics.catalogue import FAILURE_CLASSES, P
from ..metrics.samples import MetricsDict, empty, sample

if TYPE_CHECKING:
    from .loop import Shipper


def collect_shipper(shipper: Shipper) -> MetricsDict:
    """Metrics dict of the shipper child (shipper.Shipper, its ShipperStats and its WAL reader)."""
    out = empty()
    c, g = out["counters"], out["gauges"]
    s = shipper.stats
    c[P + "shipper_batches_total"] = s.batches
    c[P + "shipper_rows_total"] = s.rows
    c[P + "shipper_uncompressed_bytes_total"] = s.bytes_raw
    c[P + "shipper_sent_bytes_total"] = s.bytes_compressed
    c[P + "shipper_insert_requests_total"] = s.requests
    failures = dict(s.insert_failures)
    for cls in {*FAILURE_CLASSES, *failures}:
        c[sample(P + "shipper_insert_failures_total", **{"class": cls})] = failures.get(cls, 0)
    c[sample(P + "shipper_retries_total", **{"class": "transient"})] = s.retries_transient
    c[sample(P + "shipper_retries_total", **{"class": "config"})] = s.retries_config
    c[P + "shipper_bisect_requests_total"] = s.bisect_requests
    c[sample(P + "shipper_dead_lettered_rows_total", reason="transform")] = s.dead_lettered_transform
    c[sample(P + "shipper_dead_lettered_rows_total", reason="rejected")] = s.dead_lettered_rejected
    c[sample(P + "shipper_batches_found_stored_total", when="resume")] = s.resumed_batches_skipped
    c[sample(P + "shipper_batches_found_stored_total", when="retry")] = s.retries_found_stored
    rs = shipper.reader.stats if shipper.reader is not None else None
    c[P + "wal_corrupt_records_skipped_total"] = rs.corrupt_records_skipped if rs is not None else 0
    c[P + "wal_missing_records_total"] = rs.gap_records if rs is not None else 0
    if s.last_success_time is not None:
        g[P + "shipper_last_success_timestamp_seconds"] = s.last_success_time
    g[P + "shipper_consecutive_failures"] = shipper.consecutive_failures
    out["histograms"][P + "shipper_insert_duration_seconds"] = s.insert_latency.to_dict()
    if s.last_error:
        out["info"]["last_error"] = s.last_error
    return out
