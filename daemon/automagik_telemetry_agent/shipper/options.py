"""What the shipper is told (:class:`ShipperOptions`, some live on reload) and what it counts
(:class:`ShipperStats`, the source of its metrics dict and log lines)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..metrics.histogram import INSERT_BOUNDS_S, LatencyHistogram


@dataclass
class ShipperOptions:
    batch_rows: int = 20_000
    batch_bytes: int = 8 * 1024 * 1024
    batch_wait_s: float = 1.0
    poll_interval_s: float = 0.05  # how often to look at the WAL without a watch, or with a batch in flight
    idle_wait_s: float = 1.0  # with a watch, the longest wait for a write (idle commits, policy readings)
    quiet_signal_wait_s: float = 0.25  # with a watch, how often a signal with no records looks while others flow
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 60.0
    probe_interval_s: float = 1.0  # while backing off, probe the sink this often (0 = wait the backoff out)
    config_retry_s: float = 30.0
    drain_rows_per_s: float = 200_000.0  # 0 = no limit
    stop_deadline_s: float = 10.0
    stats_log_interval_s: float = 60.0
    state_dir: str | None = None  # default <wal_dir>/../shipper
    dead_letter_dir: str | None = None  # default <wal_dir>/../dead-letter


@dataclass
class ShipperStats:
    batches: int = 0
    rows: int = 0
    bytes_raw: int = 0
    bytes_compressed: int = 0
    requests: int = 0
    retries_transient: int = 0
    retries_config: int = 0
    bisect_requests: int = 0
    dead_lettered: int = 0
    dead_lettered_transform: int = 0
    dead_lettered_rejected: int = 0
    committed_seq: int = 0
    resumed_batches_skipped: int = 0  # in-flight at the last stop, found already stored (legacy servers)
    retries_found_stored: int = 0  # connection broke after the server stored the batch: not resent
    probes: int = 0  # cheap probes of the sink while backing off
    probe_recoveries: int = 0  # backoffs cut short because a probe answered
    last_success_time: float | None = None
    last_error: str = ""
    insert_failures: dict[str, int] = field(default_factory=dict)  # failed INSERT requests, by ErrorClass value
    insert_latency: LatencyHistogram = field(default_factory=lambda: LatencyHistogram(INSERT_BOUNDS_S))

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items() if k != "insert_latency"}
        out["insert_failures"] = dict(self.insert_failures)
        return out
