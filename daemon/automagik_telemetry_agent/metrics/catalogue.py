"""Every metric the agent exposes, in one table (docs/metrics.md describes each one; a test keeps the two
equal), and the label values every child reports from the start."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class MetricKind(enum.StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


P = "automagik_telemetry_"

# Label values every child initialises to 0, so that rate() and alerts work before the first event.
REJECT_REASONS = (
    "too_short",
    "bad_magic",
    "bad_version",
    "bad_type",
    "bad_flags",
    "unsupported_kind",
    "length_mismatch",
    "oversized",
    "bad_payload",
    "empty",
    "bad_seq",
    "disk_full",
    "too_many_connections",
    "wal_error",
)
WAL_DROP_REASONS = ("wal_size_cap", "disk_free_watermark")
OTLP_SIGNALS = ("traces", "logs", "metrics")
OTLP_STATUSES = (200, 400, 413, 503)  # otlp_requests_total series initialised per signal
OTLP_REFUSALS = ("not_an_object", "unsupported_metric_type", "item_too_large")  # ingest.otlp.export.Refusal
FAILURE_CLASSES = ("transient", "config", "bad_data")
RETRY_CLASSES = ("transient", "config")
POLICY_ADJUSTMENTS = (
    "busy",
    "quiet",
    "parts_pressure",
    "slow_server",
    "too_many_parts",
)  # shipper.insert_policy.Adjustment
CLIENT_DROP_COUNTERS = {
    "dropped_queue_full": "queue_full",
    "dropped_oversized": "oversized",
    "dropped_at_shutdown": "at_shutdown",
    "dropped_after_shutdown": "after_shutdown",
    "unconfirmed_records": "unconfirmed",
}


@dataclass(frozen=True)
class MetricDef:
    name: str  # full name; counters end in _total
    kind: MetricKind
    help: str
    labels: tuple[str, ...] = ()


def _defs(*defs: MetricDef) -> dict[str, MetricDef]:
    return {d.name: d for d in defs}


C, G, H = MetricKind.COUNTER, MetricKind.GAUGE, MetricKind.HISTOGRAM
#: Every metric the agent exposes (docs/metrics.md describes each one and what it answers).
CATALOGUE: dict[str, MetricDef] = _defs(
    # ---- supervisor
    MetricDef(P + "up", G, "1 while the agent's supervisor serves metrics."),
    MetricDef(P + "build_info", G, "Always 1; the labels say which agent and Python run.", ("version", "python")),
    MetricDef(
        P + "agent_info", G, "Always 1; agent_id names this agent's WAL (as in STATS and batch tokens).", ("agent_id",)
    ),
    MetricDef(
        P + "child_restarts_total", C, "Times the supervisor restarted a child process after it died.", ("child",)
    ),
    MetricDef(P + "child_up", G, "1 if the child reported in the last 5 seconds, else 0.", ("child",)),
    # ---- ingest
    MetricDef(
        P + "ingest_messages_received_total", C, "Protocol messages received from clients (any type, valid or not)."
    ),
    MetricDef(
        P + "ingest_records_received_total",
        C,
        "RECORDS messages accepted and appended to the WAL (one WAL record each).",
    ),
    MetricDef(
        P + "ingest_spans_received_total",
        C,
        "Items (spans, log records, metric data points) in the accepted RECORDS messages; by signal: "
        "ingest_items_received_total.",
    ),
    MetricDef(
        P + "ingest_redacted_values_total",
        C,
        "Values replaced or rewritten by the host-wide redaction rules (redact.keys, redact.pii) before the WAL.",
    ),
    MetricDef(P + "ingest_received_bytes_total", C, "Bytes of all messages received from clients, headers included."),
    MetricDef(P + "ingest_rejected_messages_total", C, "Messages answered with REJECT, by reason.", ("reason",)),
    MetricDef(
        P + "ingest_rejected_spans_total",
        C,
        "Spans in rejected RECORDS messages, by reason (0 for reasons "
        "where the message's span count cannot be trusted).",
        ("reason",),
    ),
    MetricDef(
        P + "ingest_acks_sent_total",
        C,
        "ACK messages sent (each acknowledges every earlier message on its connection).",
    ),
    MetricDef(P + "ingest_connections_accepted_total", C, "Client connections accepted."),
    MetricDef(
        P + "ingest_connections_refused_total",
        C,
        "Client connections refused (too many connections, or no file descriptors).",
    ),
    MetricDef(
        P + "ingest_connections_dropped_total",
        C,
        "Clients disconnected because they stopped reading the agent's replies.",
    ),
    MetricDef(P + "ingest_connections_open", G, "Client connections open now."),
    MetricDef(
        P + "client_dropped_spans_total",
        C,
        "Spans clients lost before the agent had them, as the clients report (CLIENT_STATS), by reason.",
        ("reason",),
    ),
    MetricDef(
        P + "client_reported_total",
        C,
        "Every counter clients report in CLIENT_STATS, summed over client instances.",
        ("counter",),
    ),
    # ---- WAL (reported by ingest, except the two reader counters)
    MetricDef(P + "wal_bytes", G, "Size of the WAL's segment files."),
    MetricDef(P + "wal_segments", G, "Segment files in the WAL."),
    MetricDef(
        P + "wal_accepting", G, "1 while the WAL accepts records, 0 while the disk policy refuses them (disk_full)."
    ),
    MetricDef(P + "wal_unshipped_records", G, "WAL records written but not yet consumed by the shipper."),
    MetricDef(
        P + "wal_unshipped_bytes",
        G,
        "Bytes from the oldest unshipped record to the end of the WAL "
        "(over-estimate by at most 1 MiB, or one segment for data from before the last start).",
    ),
    MetricDef(
        P + "wal_oldest_unshipped_age_seconds",
        G,
        "Age of the oldest WAL record the shipper has not "
        "committed (over-estimate by at most 1 s, or a segment's lifetime for data from before the last "
        "start); 0 when everything is shipped.",
    ),
    MetricDef(P + "wal_appended_records_total", C, "Records appended to the WAL."),
    MetricDef(P + "wal_appended_spans_total", C, "Spans in the records appended to the WAL."),
    MetricDef(P + "wal_appended_bytes_total", C, "Bytes appended to the WAL (record headers included)."),
    MetricDef(P + "wal_fsync_duration_seconds", H, "Duration of each fdatasync of the active WAL segment."),
    MetricDef(
        P + "wal_write_errors_total", C, "Failed WAL writes or segment creations (the records were rejected, not lost)."
    ),
    MetricDef(
        P + "wal_dropped_records_total", C, "Unshipped WAL records deleted by the disk policy, by reason.", ("reason",)
    ),
    MetricDef(
        P + "wal_dropped_spans_total", C, "Spans in the WAL records deleted by the disk policy, by reason.", ("reason",)
    ),
    MetricDef(P + "wal_segments_created_total", C, "WAL segment files created."),
    MetricDef(
        P + "wal_segments_deleted_total", C, "WAL segment files deleted (shipped, or dropped by the disk policy)."
    ),
    MetricDef(
        P + "wal_recovery_corrupt_records_total",
        C,
        "Corrupt records found in the newest segment at start (skipped, left in place).",
    ),
    MetricDef(
        P + "wal_recovery_truncated_bytes_total",
        C,
        "Bytes of torn tails truncated at start (a write cut short by a crash; never acknowledged).",
    ),
    MetricDef(
        P + "wal_quarantined_segments_total", C, "Segments with an unreadable header moved aside as .corrupt at start."
    ),
    MetricDef(P + "wal_corrupt_records_skipped_total", C, "Records the shipper could not read (corrupt) and skipped."),
    MetricDef(
        P + "wal_missing_records_total",
        C,
        "Records missing between segments when the shipper read them "
        "(dropped by the disk policy, or in a quarantined segment).",
    ),
    # ---- shipper
    MetricDef(P + "shipper_batches_total", C, "Batches shipped and committed."),
    MetricDef(P + "shipper_rows_total", C, "Rows (spans) ClickHouse accepted."),
    MetricDef(P + "shipper_uncompressed_bytes_total", C, "Bytes of the accepted INSERT bodies before compression."),
    MetricDef(P + "shipper_sent_bytes_total", C, "Bytes of the accepted INSERT bodies as sent (after compression)."),
    MetricDef(P + "shipper_insert_requests_total", C, "INSERT requests sent, successful or not."),
    MetricDef(P + "shipper_insert_duration_seconds", H, "Duration of each INSERT request, successful or not."),
    MetricDef(P + "shipper_insert_failures_total", C, "INSERT requests that failed, by error class.", ("class",)),
    MetricDef(
        P + "shipper_retries_total",
        C,
        "Retries after a failure (INSERT or server detection), by error class.",
        ("class",),
    ),
    MetricDef(
        P + "shipper_bisect_requests_total", C, "INSERTs of batch halves while isolating rows ClickHouse refuses."
    ),
    MetricDef(
        P + "shipper_dead_lettered_rows_total",
        C,
        "Spans written to the dead-letter file instead of ClickHouse, by reason.",
        ("reason",),
    ),
    MetricDef(
        P + "shipper_batches_found_stored_total",
        C,
        "Batches not re-sent because ClickHouse already had them, by when that was found.",
        ("when",),
    ),
    MetricDef(P + "shipper_last_success_timestamp_seconds", G, "Unix time of the last INSERT ClickHouse accepted."),
    MetricDef(P + "shipper_consecutive_failures", G, "Failed attempts since the last success (0 when healthy)."),
    MetricDef(
        P + "shipper_probes_total",
        C,
        "Light probes of ClickHouse while backing off (/ping, replicas' read-only flags).",
    ),
    MetricDef(
        P + "shipper_probe_recoveries_total", C, "Backoffs cut short because a probe found ClickHouse answering again."
    ),
    # ---- several endpoints (clickhouse/failover.py; docs/scaling.md)
    MetricDef(
        P + "shipper_endpoint_up",
        G,
        "1 while a ClickHouse endpoint takes inserts, 0 while it is down (endpoints never tried yet are absent).",
        ("endpoint",),
    ),
    MetricDef(P + "shipper_failovers_total", C, "Switches of the endpoint the traces are inserted into."),
    MetricDef(
        P + "shipper_stalled_inserts_total",
        C,
        "INSERTs given up on an endpoint that stopped answering /ping (then sent to another of its shard).",
    ),
    # ---- the fleet insert policy (docs/scaling.md)
    MetricDef(
        P + "shipper_batch_wait_seconds", G, "The batch_wait in force (the insert policy's, else shipper.batch_wait)."
    ),
    MetricDef(
        P + "shipper_server_inserts_per_second",
        G,
        "INSERTs per second the shard received at the insert policy's last reading (all agents, all tables).",
    ),
    MetricDef(
        P + "shipper_server_active_parts",
        G,
        "Most active parts in one partition of the traces table at the insert policy's last reading.",
    ),
    MetricDef(
        P + "shipper_policy_adjustments_total",
        C,
        "Changes of the insert policy's batch_wait, by reason (busy, quiet, parts_pressure, slow_server, "
        "too_many_parts).",
        ("reason",),
    ),
    # ---- per signal (spans, log records, metric data points: each has its own table and shipper)
    MetricDef(P + "ingest_items_received_total", C, "Items in the accepted RECORDS messages, by signal.", ("signal",)),
    MetricDef(P + "shipper_signal_rows_total", C, "Rows ClickHouse accepted, by signal.", ("signal",)),
    MetricDef(
        P + "shipper_signal_dead_lettered_rows_total",
        C,
        "Rows written to the dead-letter file instead of ClickHouse, by signal.",
        ("signal",),
    ),
    MetricDef(
        P + "shipper_signal_consecutive_failures",
        G,
        "Failed attempts since the last success of one signal's shipper (0 when healthy).",
        ("signal",),
    ),
    MetricDef(
        P + "shipper_signal_last_success_timestamp_seconds",
        G,
        "Unix time of the last INSERT ClickHouse accepted for one signal.",
        ("signal",),
    ),
    # ---- the OTLP/HTTP receiver (the otlp child; docs/otlp.md)
    MetricDef(
        P + "otlp_requests_total",
        C,
        "OTLP/HTTP requests answered, by signal (traces, logs, metrics; other for any other path) and HTTP status.",
        ("signal", "status"),
    ),
    MetricDef(P + "otlp_received_bytes_total", C, "Bytes received on OTLP/HTTP connections (as sent: compressed)."),
    MetricDef(
        P + "otlp_items_accepted_total",
        C,
        "Spans, log records and metric data points durable in the WAL (their request was answered 200), by signal.",
        ("signal",),
    ),
    MetricDef(
        P + "otlp_items_refused_total",
        C,
        "Items refused in a partial_success (never retried), by signal and reason.",
        ("signal", "reason"),
    ),
    MetricDef(
        P + "otlp_items_unavailable_total",
        C,
        "Items of requests answered 503 (the WAL refused them, ingest was away, fsync lagged): the exporter retries.",
        ("signal",),
    ),
    MetricDef(
        P + "otlp_decode_errors_total", C, "Request bodies that could not be decoded (answered 400).", ("encoding",)
    ),
    MetricDef(
        P + "otlp_requests_deduplicated_total",
        C,
        "Retried requests whose every record was already durable: answered 200 without writing them again.",
    ),
    MetricDef(P + "otlp_connections_accepted_total", C, "OTLP/HTTP connections accepted."),
    MetricDef(P + "otlp_connections_refused_total", C, "OTLP/HTTP connections beyond otlp.max_connections (503)."),
    MetricDef(
        P + "otlp_connections_timed_out_total",
        C,
        "OTLP/HTTP connections closed for a timeout, by phase (idle, headers, body).",
        ("phase",),
    ),
    MetricDef(P + "otlp_connections_open", G, "Open OTLP/HTTP connections."),
    MetricDef(P + "otlp_buffered_bytes", G, "Request body bytes held in memory (bounded by otlp.max_buffered)."),
    MetricDef(P + "otlp_dedup_requests", G, "Recent requests whose durable parts the receiver remembers."),
    MetricDef(
        P + "otlp_request_duration_seconds",
        H,
        "From a request's first byte to its answer: upload, decoding and the wait for durability.",
    ),
)
