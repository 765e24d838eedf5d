"""The WAL writer's counters (exported as metrics; every one can explain lost or delayed data)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..metrics.histogram import FSYNC_BOUNDS_S, LatencyHistogram


@dataclass
class WalStats:
    """Counters the agent exports; every one can explain lost or delayed data."""

    appended_records: int = 0
    appended_items: int = 0
    appended_bytes: int = 0
    fsyncs: int = 0
    fsync_seconds: float = 0.0
    fsync_latency: LatencyHistogram = field(default_factory=lambda: LatencyHistogram(FSYNC_BOUNDS_S))
    segments_created: int = 0
    segments_deleted: int = 0
    segments_emptied: int = 0  # cut to their header: needed by no signal, but not the oldest
    dropped_records: Counter[str] = field(default_factory=Counter)  # by reason
    dropped_items: Counter[str] = field(default_factory=Counter)  # by reason
    # The same drops by the signal whose unconsumed records they were (Signal values: "traces", ...).
    dropped_records_by_signal: Counter[str] = field(default_factory=Counter)
    dropped_items_by_signal: Counter[str] = field(default_factory=Counter)
    write_errors: int = 0
    corrupt_records_at_open: int = 0
    torn_tail_bytes_truncated: int = 0
    quarantined_segments: int = 0
