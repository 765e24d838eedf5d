"""The ingest child's metrics dict (:mod:`..metrics.samples`), read from the server and its WAL writer."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..metrics.catalogue import CLIENT_DROP_COUNTERS, REJECT_REASONS, WAL_DROP_REASONS, P
from ..metrics.samples import MetricsDict, empty, sample

if TYPE_CHECKING:
    from .server import IngestServer


def collect_ingest(server: IngestServer) -> MetricsDict:
    """Metrics dict of the ingest child (ingest.IngestServer and its WalWriter).

    Runs in the reporter thread while the ingest thread mutates the stats: a dict that changes size
    under an iteration raises RuntimeError, so that is retried (the next try sees a settled dict).
    """
    for _ in range(5):
        try:
            return _collect_ingest(server)
        except RuntimeError:
            time.sleep(0.001)
    return _collect_ingest(server)


def _collect_ingest(server: IngestServer) -> MetricsDict:
    out = empty()
    c, g = out["counters"], out["gauges"]
    snap = server.snapshot()
    wal = snap["wal"]
    writer = server.writer
    c[P + "ingest_messages_received_total"] = snap["messages_received"]
    c[P + "ingest_records_received_total"] = snap["records_received"]
    c[P + "ingest_spans_received_total"] = snap["items_received"]
    for signal, items in snap["items_by_signal"].items():
        c[sample(P + "ingest_items_received_total", signal=signal)] = items
    c[P + "ingest_received_bytes_total"] = snap["bytes_received"]
    for name, by_reason in (
        ("ingest_rejected_messages_total", snap["rejected_messages"]),
        ("ingest_rejected_spans_total", snap["rejected_items"]),
    ):
        for reason in {*REJECT_REASONS, *by_reason}:
            c[sample(P + name, reason=reason)] = by_reason.get(reason, 0)
    c[P + "ingest_acks_sent_total"] = snap["acks_sent"]
    c[P + "ingest_redacted_values_total"] = server.redactor.redacted if server.redactor is not None else 0
    c[P + "ingest_connections_accepted_total"] = snap["connections_accepted"]
    c[P + "ingest_connections_refused_total"] = snap["connections_refused"]
    c[P + "ingest_connections_dropped_total"] = snap["connections_dropped_unread"]
    g[P + "ingest_connections_open"] = snap["connections_open"]

    reported = snap["client_reported"]
    m = out["max_counters"]
    for counter, reason in CLIENT_DROP_COUNTERS.items():
        m[sample(P + "client_dropped_spans_total", reason=reason)] = reported.get(counter, 0)
    for counter, value in reported.items():
        if counter.startswith("dropped_") and counter not in CLIENT_DROP_COUNTERS:
            m[sample(P + "client_dropped_spans_total", reason=counter[len("dropped_") :])] = value
        m[sample(P + "client_reported_total", counter=counter)] = value

    ws = writer.stats
    g[P + "wal_bytes"] = wal["bytes"]
    g[P + "wal_segments"] = wal["segments"]
    g[P + "wal_accepting"] = 1 if wal["accepting"] else 0
    oldest = wal["oldest_unconsumed_seq"]
    g[P + "wal_unshipped_records"] = max(0, writer.written_seq - oldest + 1) if oldest is not None else 0
    g[P + "wal_unshipped_bytes"] = writer.unshipped_bytes
    written = writer.oldest_unshipped_time
    g[P + "wal_oldest_unshipped_age_seconds"] = max(0.0, time.time() - written) if written is not None else 0.0
    c[P + "wal_appended_records_total"] = ws.appended_records
    c[P + "wal_appended_spans_total"] = ws.appended_items
    c[P + "wal_appended_bytes_total"] = ws.appended_bytes
    c[P + "wal_write_errors_total"] = wal["write_errors"]
    for name, by_reason in (
        ("wal_dropped_records_total", wal["dropped_records"]),
        ("wal_dropped_spans_total", wal["dropped_items"]),
    ):
        for reason in {*WAL_DROP_REASONS, *by_reason}:
            c[sample(P + name, reason=reason)] = by_reason.get(reason, 0)
    c[P + "wal_segments_created_total"] = ws.segments_created
    c[P + "wal_segments_deleted_total"] = ws.segments_deleted
    c[P + "wal_recovery_corrupt_records_total"] = wal["corrupt_records_at_open"]
    c[P + "wal_recovery_truncated_bytes_total"] = wal["torn_tail_bytes_truncated"]
    c[P + "wal_quarantined_segments_total"] = wal["quarantined_segments"]
    out["histograms"][P + "wal_fsync_duration_seconds"] = ws.fsync_latency.to_dict()
    out["info"]["agent_id"] = wal["agent_id"]
    return out
