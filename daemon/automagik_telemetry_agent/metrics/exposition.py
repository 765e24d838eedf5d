"""Prometheus exposition: the supervisor merges its children's reports and serves them on /metrics.

Why not prometheus-client's multiprocess mode: it keeps one mmap file per process in a directory that
must be wiped at the right moments, loses gauges' meaning across processes, and grows with every
restart. Instead each child (ingest, shipper) turns its own stats into a plain *metrics dict*
(``ingest.metrics.collect_ingest``, ``shipper.metrics.collect_shipper``; format in :mod:`.samples`)
that its reporter thread sends to the supervisor about once a second (the channel:
``lifecycle.channel``), and the supervisor's :class:`AgentMetrics` merges the reports and serves them
from its own :class:`~prometheus_client.CollectorRegistry`.

Monotonic across restarts: when a new pid reports for a child, the previous pid's last counters and
histograms become a base the new values are added to. ``max_counters`` are different: clients
re-report their whole cumulative counts to a restarted ingest, so adding would double count; they are
merged with max(value before the restart, new sum) instead. Every metric is listed in
:data:`~.catalogue.CATALOGUE`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import platform
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import ConfigError, split_listen
from .catalogue import CATALOGUE, C, G, H, P
from .samples import MetricsDict, empty, parse_sample, sample

log = logging.getLogger(__name__)

#: A child whose last report is older than this is shown as down (child_up 0).
STALE_AFTER_S = 5.0
#: info keys exposed as labels of automagik_telemetry_agent_info (others, e.g. last_error, only in status).
INFO_LABELS = ("agent_id",)


class MetricsListenError(ConfigError):
    """The metrics endpoint cannot listen where configured; the message says what to change."""


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
        out = empty()
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
        signals: dict[str, dict[str, float]] = {}
        for source, columns in (
            (
                m["counters"],
                {
                    "ingest_items_received_total": "received",
                    "shipper_signal_rows_total": "shipped",
                    "shipper_signal_dead_lettered_rows_total": "dead_lettered",
                },
            ),
            (
                g,
                {
                    "shipper_signal_consecutive_failures": "consecutive_failures",
                    "shipper_signal_last_success_timestamp_seconds": "last_ship_time",
                },
            ),
        ):
            for key, value in source.items():
                with contextlib.suppress(ValueError):
                    name, labels = parse_sample(key)
                    column = columns.get(name[len(P) :]) if name.startswith(P) else None
                    if column is not None and "signal" in labels:
                        signals.setdefault(labels["signal"], {})[column] = value
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
            "batch_wait_s": g.get(P + "shipper_batch_wait_seconds"),
            "server_inserts_per_s": g.get(P + "shipper_server_inserts_per_second"),
            "last_error": m["info"].get("last_error", ""),
            "child_restarts": {name: info["restarts"] for name, info in self.children().items()},
            "signals": signals,
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
