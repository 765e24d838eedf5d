"""Prometheus metrics: collected in each child, merged in the supervisor, served on /metrics.

Why not prometheus-client's multiprocess mode: it keeps one mmap file per process in a directory that
must be wiped at the right moments, loses gauges' meaning across processes, and grows with every
restart. Instead each child (ingest, shipper) turns its own stats into a plain *metrics dict*
(:func:`collect_ingest`, :func:`collect_shipper`) that its reporter thread sends to the supervisor
about once a second (contract in report.py), and the supervisor's :class:`AgentMetrics` merges the
reports and serves them from its own :class:`~prometheus_client.CollectorRegistry`.

The metrics dict::

    {"counters":     {sample: number},        # cumulative since the child process started
     "gauges":       {sample: number},        # current values
     "histograms":   {name: {"bounds": [...], "counts": [... per bucket, not cumulative, last = +Inf],
                             "sum": float}},
     "info":         {name: str},             # e.g. agent_id, last_error (not all become labels)
     "max_counters": {sample: number}}        # sums of cumulative counts reported by *others* (clients)

A *sample* is a full Prometheus name, with labels in text-format syntax when it has any:
``automagik_telemetry_ingest_rejected_messages_total{reason="bad_magic"}`` (:func:`sample`).

Monotonic across restarts: when a new pid reports for a child, the previous pid's last counters and
histograms become a base the new values are added to. ``max_counters`` are different: clients
re-report their whole cumulative counts to a restarted ingest, so adding would double count; they are
merged with max(value before the restart, new sum) instead. Every metric is listed in :data:`CATALOGUE`
and documented in docs/metrics.md (a test keeps the two equal).
"""

from __future__ import annotations

import contextlib
import logging
import math
import platform
import re
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import ConfigError, split_listen

log = logging.getLogger(__name__)

P = "automagik_telemetry_"
MetricsDict = dict[str, Any]
#: A child whose last report is older than this is shown as down (child_up 0).
STALE_AFTER_S = 5.0
#: info keys exposed as labels of automagik_telemetry_agent_info (others, e.g. last_error, only in status).
INFO_LABELS = ("agent_id",)

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
FAILURE_CLASSES = ("transient", "config", "bad_data")
RETRY_CLASSES = ("transient", "config")
CLIENT_DROP_COUNTERS = {
    "dropped_queue_full": "queue_full",
    "dropped_oversized": "oversized",
    "dropped_at_shutdown": "at_shutdown",
    "dropped_after_shutdown": "after_shutdown",
    "unconfirmed_records": "unconfirmed",
}


class MetricsListenError(ConfigError):
    """The metrics endpoint cannot listen where configured; the message says what to change."""


@dataclass(frozen=True)
class MetricDef:
    name: str  # full name; counters end in _total
    kind: str  # counter | gauge | histogram
    help: str
    labels: tuple[str, ...] = ()


def _defs(*defs: MetricDef) -> dict[str, MetricDef]:
    return {d.name: d for d in defs}


C, G, H = "counter", "gauge", "histogram"
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
    MetricDef(P + "ingest_spans_received_total", C, "Spans in the accepted RECORDS messages."),
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
)


# ---------------------------------------------------------------------------------------- samples
_LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def sample(name: str, **labels: str) -> str:
    """The metrics-dict key of a sample: ``name`` or ``name{a="x",b="y"}``."""
    if not labels:
        return name
    return name + "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


def parse_sample(key: str) -> tuple[str, dict[str, str]]:
    """Inverse of :func:`sample`; ValueError if ``key`` is not one."""
    name, brace, rest = key.partition("{")
    if not brace:
        return key, {}
    if not rest.endswith("}"):
        raise ValueError(f"bad sample key {key!r}")
    body, labels, pos = rest[:-1], {}, 0
    while pos < len(body):
        match = _LABEL.match(body, pos)
        if not match:
            raise ValueError(f"bad sample key {key!r}")
        labels[match.group(1)] = _unescape(match.group(2))
        pos = match.end()
    return name, labels


def _empty() -> MetricsDict:
    return {"counters": {}, "gauges": {}, "histograms": {}, "info": {}, "max_counters": {}}


# ---------------------------------------------------------------------------------------- children
def collect_ingest(server: Any) -> MetricsDict:
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


def _collect_ingest(server: Any) -> MetricsDict:
    out = _empty()
    c, g = out["counters"], out["gauges"]
    snap = server.snapshot()
    wal = snap["wal"]
    writer = server.writer
    c[P + "ingest_messages_received_total"] = snap["messages_received"]
    c[P + "ingest_records_received_total"] = snap["records_received"]
    c[P + "ingest_spans_received_total"] = snap["items_received"]
    c[P + "ingest_received_bytes_total"] = snap["bytes_received"]
    for name, by_reason in (
        ("ingest_rejected_messages_total", snap["rejected_messages"]),
        ("ingest_rejected_spans_total", snap["rejected_items"]),
    ):
        for reason in {*REJECT_REASONS, *by_reason}:
            c[sample(P + name, reason=reason)] = by_reason.get(reason, 0)
    c[P + "ingest_acks_sent_total"] = snap["acks_sent"]
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


def collect_shipper(shipper: Any) -> MetricsDict:
    """Metrics dict of the shipper child (shipper.Shipper, its ShipperStats and its WAL reader)."""
    out = _empty()
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
    reader = getattr(shipper, "reader", None)
    rs = getattr(reader, "stats", None)
    c[P + "wal_corrupt_records_skipped_total"] = rs.corrupt_records_skipped if rs is not None else 0
    c[P + "wal_missing_records_total"] = rs.gap_records if rs is not None else 0
    if s.last_success_time is not None:
        g[P + "shipper_last_success_timestamp_seconds"] = s.last_success_time
    g[P + "shipper_consecutive_failures"] = getattr(shipper, "_failures", 0)
    out["histograms"][P + "shipper_insert_duration_seconds"] = s.insert_latency.to_dict()
    if s.last_error:
        out["info"]["last_error"] = s.last_error
    return out


# ---------------------------------------------------------------------------------------- supervisor
def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return value


def _histogram(value: Any) -> dict[str, Any] | None:
    """A validated copy of a histogram from a report, or None."""
    if not isinstance(value, Mapping):
        return None
    bounds, counts, total = value.get("bounds"), value.get("counts"), _number(value.get("sum"))
    if (
        not isinstance(bounds, list)
        or not isinstance(counts, list)
        or total is None
        or len(counts) != len(bounds) + 1
        or any(_number(b) is None for b in bounds)
        or any(_number(n) is None or n < 0 for n in counts)
    ):
        return None
    return {"bounds": [float(b) for b in bounds], "counts": list(counts), "sum": float(total)}


def merge_histograms(a: Mapping[str, Any] | None, b: Mapping[str, Any]) -> dict[str, Any]:
    """``a + b`` bucket by bucket (same bounds). With different bounds ``b`` alone: a different build's
    buckets cannot be added, so the older counts are given up rather than mis-filed."""
    if a is None or list(a["bounds"]) != list(b["bounds"]):
        return {"bounds": list(b["bounds"]), "counts": list(b["counts"]), "sum": b["sum"]}
    return {
        "bounds": list(b["bounds"]),
        "counts": [x + y for x, y in zip(a["counts"], b["counts"], strict=True)],
        "sum": a["sum"] + b["sum"],
    }


@dataclass
class _Child:
    """What the supervisor knows of one child: the current pid's last report and the base of older pids."""

    pid: int | None = None
    counters: dict[str, float] = field(default_factory=dict)
    histograms: dict[str, dict[str, Any]] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)
    info: dict[str, str] = field(default_factory=dict)
    max_counters: dict[str, float] = field(default_factory=dict)
    base_counters: dict[str, float] = field(default_factory=dict)
    base_histograms: dict[str, dict[str, Any]] = field(default_factory=dict)
    max_floor: dict[str, float] = field(default_factory=dict)
    sticky_gauges: dict[str, float] = field(default_factory=dict)  # *_timestamp_seconds: kept across restarts
    retired_pids: set[int] = field(default_factory=set)
    restarts: int = 0
    last_report: float | None = None  # time.monotonic() of the last report

    def fold(self) -> None:
        """The current pid is gone: its last values become the base the next pid's values add to."""
        for k, v in self.counters.items():
            self.base_counters[k] = self.base_counters.get(k, 0) + v
        for k, h in self.histograms.items():
            self.base_histograms[k] = merge_histograms(self.base_histograms.get(k), h)
        for k, v in self.max_counters.items():
            self.max_floor[k] = max(self.max_floor.get(k, 0), v)
        if self.pid is not None:
            self.retired_pids.add(self.pid)
        self.counters, self.histograms, self.gauges, self.max_counters = {}, {}, {}, {}

    def view(self) -> MetricsDict:
        """The merged, monotonic values of this child (every pid so far)."""
        counters = dict(self.base_counters)
        for k, v in self.counters.items():
            counters[k] = counters.get(k, 0) + v
        histograms = dict(self.base_histograms)
        for k, h in self.histograms.items():
            histograms[k] = merge_histograms(histograms.get(k), h)
        maxed = dict(self.max_floor)
        for k, v in self.max_counters.items():
            maxed[k] = max(maxed.get(k, 0), v)
        return {
            "counters": counters,
            "histograms": histograms,
            "max_counters": maxed,
            "gauges": {**self.sticky_gauges, **self.gauges},
            "info": dict(self.info),
        }


def build_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("automagik-telemetry")
    except PackageNotFoundError:
        return "unknown"


class MetricsServer:
    """The /metrics HTTP endpoint (prometheus-client's WSGI server in a daemon thread)."""

    def __init__(self, httpd: Any, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread
        self.host: str = httpd.server_address[0]
        self.port: int = httpd.server_address[1]

    def close(self) -> None:
        """Stop serving and release the port."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


class AgentMetrics:
    """Supervisor-side aggregate of child reports; counters stay monotonic across child restarts.

    Thread-safe: reports arrive on the supervisor's threads while the HTTP server collects.
    """

    def __init__(self, version: str | None = None) -> None:
        from prometheus_client import CollectorRegistry

        self._lock = threading.Lock()
        self._children: dict[str, _Child] = {}
        self.version = version or build_version()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        self.server: MetricsServer | None = None

    def _child(self, child: str) -> _Child:
        return self._children.setdefault(child, _Child())

    # ------------------------------------------------------------------ reports
    def observe(self, child: str, pid: int, metrics: Mapping[str, Any]) -> None:
        """Record the latest metrics report of one child process (malformed entries are ignored)."""
        with self._lock:
            st = self._child(child)
            if pid in st.retired_pids:
                return  # a late report of a pid already replaced: its values are in the base
            if st.pid is not None and pid != st.pid:
                st.fold()
            st.pid = pid
            st.last_report = time.monotonic()
            for k, v in _items(metrics.get("counters")):
                if (n := _number(v)) is not None:
                    # Never down within one pid (ingest takes back a count when a WAL write is rolled back).
                    st.counters[k] = max(st.counters.get(k, 0), n)
            for k, v in _items(metrics.get("max_counters")):
                if (n := _number(v)) is not None:
                    st.max_counters[k] = max(st.max_counters.get(k, 0), n)
            for k, v in _items(metrics.get("histograms")):
                if (h := _histogram(v)) is not None:
                    st.histograms[k] = h
            st.gauges = {k: n for k, v in _items(metrics.get("gauges")) if (n := _number(v)) is not None}
            for k, n in st.gauges.items():
                if k.endswith("_timestamp_seconds"):
                    st.sticky_gauges[k] = max(st.sticky_gauges.get(k, 0), n)
            st.info = {k: v for k, v in _items(metrics.get("info")) if isinstance(v, str)}

    def child_restarted(self, child: str) -> None:
        """Count one restart of ``child`` (called by the supervisor when it starts a replacement)."""
        with self._lock:
            self._child(child).restarts += 1

    # ------------------------------------------------------------------ views
    def merged(self) -> MetricsDict:
        """Every child's merged values in one metrics dict (counters of the same sample are summed)."""
        out = _empty()
        with self._lock:
            views = [st.view() for st in self._children.values()]
        for view in views:
            for k, v in view["counters"].items():
                out["counters"][k] = out["counters"].get(k, 0) + v
            for k, v in view["max_counters"].items():
                out["max_counters"][k] = out["max_counters"].get(k, 0) + v
            for k, h in view["histograms"].items():
                out["histograms"][k] = merge_histograms(out["histograms"].get(k), h)
            out["gauges"].update(view["gauges"])
            out["info"].update(view["info"])
        return out

    def children(self) -> dict[str, dict[str, Any]]:
        """Per child: pid, restarts, up (reported within STALE_AFTER_S), seconds since its last report."""
        now = time.monotonic()
        with self._lock:
            return {
                name: {
                    "pid": st.pid,
                    "restarts": st.restarts,
                    "up": st.last_report is not None and now - st.last_report <= STALE_AFTER_S,
                    "last_report_age_s": None if st.last_report is None else round(now - st.last_report, 3),
                }
                for name, st in self._children.items()
            }

    def summary(self) -> dict[str, Any]:
        """Small JSON-able dict for ``status`` and systemd STATUS=."""
        m = self.merged()
        g = m["gauges"]
        sums: dict[str, float] = {}
        for k, v in (*m["counters"].items(), *m["max_counters"].items()):
            name = k.partition("{")[0]
            sums[name] = sums.get(name, 0) + v

        def total(name: str) -> int:
            return int(sums.get(P + name, 0))

        last_ship = g.get(P + "shipper_last_success_timestamp_seconds")
        return {
            "metrics_port": self.server.port if self.server is not None else None,
            "records_received": total("ingest_records_received_total"),
            "spans_received": total("ingest_spans_received_total"),
            "rejected_messages": total("ingest_rejected_messages_total"),
            "client_dropped_spans": total("client_dropped_spans_total"),
            "wal_bytes": int(g.get(P + "wal_bytes", 0)),
            "wal_unshipped_bytes": int(g.get(P + "wal_unshipped_bytes", 0)),
            "wal_oldest_unshipped_age_s": round(g.get(P + "wal_oldest_unshipped_age_seconds", 0.0), 3),
            "wal_dropped_spans": total("wal_dropped_spans_total"),
            "rows_shipped": total("shipper_rows_total"),
            "last_ship_time": last_ship,
            "dead_lettered_rows": total("shipper_dead_lettered_rows_total"),
            "insert_failures": total("shipper_insert_failures_total"),
            "last_error": m["info"].get("last_error", ""),
            "child_restarts": {name: info["restarts"] for name, info in self.children().items()},
        }

    def exposition(self) -> str:
        """The /metrics page (Prometheus text format), as a scrape would get it."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()

    # ------------------------------------------------------------------ endpoint
    def serve(self, listen: str) -> MetricsServer | None:
        """Serve /metrics on ``listen`` ("host:port", "[::1]:port"; port 0 = any free port); "" = no server.

        Raises :class:`MetricsListenError` (a ConfigError: exit code 2) with what to change.
        """
        if not listen:
            return None
        from prometheus_client import start_http_server

        try:
            host, port = split_listen(listen)
        except ValueError as exc:
            raise MetricsListenError(f"metrics.listen: {exc}") from None
        try:
            httpd, thread = start_http_server(port, host, registry=self.registry)
        except OSError as exc:
            raise MetricsListenError(
                f"cannot serve metrics on {listen}: {exc.strerror or exc}: choose another "
                '--metrics-listen (metrics.listen), or "" to turn the endpoint off'
            ) from None
        self.server = MetricsServer(httpd, thread)
        log.info("metrics on http://%s/metrics", listen if port else f"{_host(host)}:{self.server.port}")
        return self.server

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _items(value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping):
        yield from ((k, v) for k, v in value.items() if isinstance(k, str))


class _Collector:
    """prometheus-client custom collector over :class:`AgentMetrics` (no global registry involved)."""

    def __init__(self, metrics: AgentMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Any]:
        from prometheus_client.metrics_core import Metric

        agent = self._metrics
        merged = agent.merged()
        families: dict[str, Metric] = {}

        def family(name: str, kind: str) -> Metric:
            if name not in families:
                d = CATALOGUE.get(name)
                base = name[: -len("_total")] if kind == C and name.endswith("_total") else name
                families[name] = Metric(base, d.help if d else "(not in the catalogue)", d.kind if d else kind)
            return families[name]

        def add(key: str, value: float, kind: str) -> None:
            try:
                name, labels = parse_sample(key)
            except ValueError:
                return
            if not name.startswith(P):
                return
            if kind == C and not name.endswith("_total"):
                kind = G  # a counter without the suffix would be renamed by the exposition: show it as is
            family(name, kind).add_sample(name, labels, value)

        add(P + "up", 1, G)
        add(sample(P + "build_info", version=agent.version, python=platform.python_version()), 1, G)
        info = {k: merged["info"][k] for k in INFO_LABELS if k in merged["info"]}
        if info:
            add(sample(P + "agent_info", **info), 1, G)
        for child, state in sorted(agent.children().items()):
            add(sample(P + "child_restarts_total", child=child), state["restarts"], C)
            add(sample(P + "child_up", child=child), 1 if state["up"] else 0, G)
        for k, v in sorted(merged["counters"].items()):
            add(k, v, C)
        for k, v in sorted(merged["max_counters"].items()):
            add(k, v, C)
        for k, v in sorted(merged["gauges"].items()):
            add(k, v, G)
        for name, h in sorted(merged["histograms"].items()):
            with contextlib.suppress(ValueError):
                if parse_sample(name)[1] or not name.startswith(P):
                    continue
                m = family(name, H)
                running = 0
                for bound, n in zip([*h["bounds"], math.inf], h["counts"], strict=True):
                    running += n
                    m.add_sample(name + "_bucket", {"le": _le(bound)}, running)
                m.add_sample(name + "_count", {}, running)
                m.add_sample(name + "_sum", {}, h["sum"])
        yield from families.values()


def _le(bound: float) -> str:
    if math.isinf(bound):
        return "+Inf"
    return repr(float(bound))
