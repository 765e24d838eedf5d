"""What differs between the shippers of the three signals: the kind of WAL record they read, how a line
becomes rows, the columns their table must have, how a restart finds a batch already stored, and the
names of their files. Everything else (batches, tokens, retries, bisection, dead letters) is shared.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from automagik_telemetry.protocol import RecordKind

from ..clickhouse.http import profile_row_keys
from ..clickhouse.log_rows import log_row_keys, transform_log
from ..clickhouse.metric_rows import metric_row_keys, transform_metric
from ..clickhouse.rows import Profile, Resource, transform_span
from ..clickhouse.sink import RowKeys
from ..paths import consumer_lock_file, inflight_file
from ..wal.signals import Signal

__all__ = ["SHIPMENTS", "Probe", "Shipment"]

#: One WAL line -> its row (spans, log records) or rows (a metric line: one per data point).
Transform = Callable[[bytes, Resource, Profile], "dict[str, Any] | list[dict[str, Any]]"]


class Probe(enum.Enum):
    """How a restarted shipper checks, on a server without dedup tokens, whether its batch was stored."""

    SPAN_IDS = "span_ids"  # sampled span ids (unique per span)
    ROW_KEYS = "row_keys"  # sampled rows by the columns in Shipment.probe_columns
    NONE = "none"  # resend: a duplicated cumulative data point changes no max/last-value query


@dataclass(frozen=True)
class Shipment:
    signal: Signal
    transform: Transform
    row_keys: RowKeys
    probe: Probe
    #: The columns that identify a sampled row in the table (Probe.ROW_KEYS).
    probe_columns: tuple[str, ...] = ()

    @property
    def kind(self) -> RecordKind:
        return self.signal.kind

    @property
    def table_setting(self) -> str:
        """The configuration key naming this signal's table."""
        return "clickhouse.table" if self.signal is Signal.TRACES else f"clickhouse.{self.signal.value}_table"

    @property
    def token_prefix(self) -> str:
        """Spans keep the token of before signals; the others say which table their range is for."""
        return "" if self.signal is Signal.TRACES else f"{self.signal.value}:"

    @property
    def consumer_lock(self) -> str:
        return consumer_lock_file(self.signal.value)

    @property
    def inflight_file(self) -> str:
        return inflight_file(self.signal.value)


SHIPMENTS: dict[Signal, Shipment] = {
    Signal.TRACES: Shipment(Signal.TRACES, transform_span, profile_row_keys, Probe.SPAN_IDS),
    Signal.LOGS: Shipment(
        Signal.LOGS,
        transform_log,
        log_row_keys,
        Probe.ROW_KEYS,
        ("timestamp_ns", "trace_id", "span_id", "severity_number", "body"),
    ),
    Signal.METRICS: Shipment(Signal.METRICS, transform_metric, metric_row_keys, Probe.NONE),
}
