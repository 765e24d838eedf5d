"""The ingest server's counters, and the STATS snapshot built from them and the WAL writer's."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from automagik_telemetry.protocol import LINE_FORMATS

from ..wal import WalWriter
from .client_counters import ClientCounters


@dataclass
class IngestStats:
    messages_received: int = 0
    records_received: int = 0  # WAL records (one per RECORDS message)
    items_received: int = 0  # spans, log records and metric data points
    items_by_kind: list[int] = field(default_factory=lambda: [0, 0, 0, 0])  # by RecordKind (index 1..3)
    bytes_received: int = 0
    rejected_messages: Counter[str] = field(default_factory=Counter)  # by RejectReason value
    rejected_items: Counter[str] = field(default_factory=Counter)
    connections_accepted: int = 0
    connections_refused: int = 0
    acks_sent: int = 0
    connections_dropped_unread: int = 0  # clients disconnected for not reading their replies


def stats_snapshot(
    s: IngestStats,
    w: WalWriter,
    clients: ClientCounters,
    started_at: float,
    connections_open: int,
    peer_pids: list[int] | None = None,
) -> dict[str, Any]:
    """Counters of ingest and the WAL, as the STATS message carries them."""
    oldest = w.oldest_unconsumed_seq()
    return {
        "uptime_seconds": round(time.time() - started_at, 3),
        # The span line formats this agent's shipper reads: a client sends compact lines once it sees them.
        "line_formats": list(LINE_FORMATS),
        "messages_received": s.messages_received,
        "records_received": s.records_received,
        "items_received": s.items_received,
        "items_by_signal": {"traces": s.items_by_kind[1], "logs": s.items_by_kind[2], "metrics": s.items_by_kind[3]},
        "bytes_received": s.bytes_received,
        "rejected_messages": dict(s.rejected_messages),
        "rejected_items": dict(s.rejected_items),
        "connections_open": connections_open,
        # The processes on the other end (SO_PEERCRED): a restarted OTLP receiver waits until no connection
        # of its dead predecessor is left, i.e. until ingest has read everything that one sent.
        "peer_pids": sorted(peer_pids or []),
        "connections_accepted": s.connections_accepted,
        "connections_refused": s.connections_refused,
        "acks_sent": s.acks_sent,
        "connections_dropped_unread": s.connections_dropped_unread,
        "client_reported": clients.totals(),
        "wal": {
            "dir": w.dir,
            "agent_id": w.agent_id,
            "segments": w.segment_count(),
            "bytes": w.total_bytes(),
            "next_seq": w.next_seq,
            "durable_seq": w.durable_seq,
            "cursor_seq": w.cursor_seq,
            "oldest_unconsumed_seq": oldest,
            "accepting": w.accepting,
            "fsyncs": w.stats.fsyncs,
            "fsync_seconds": round(w.stats.fsync_seconds, 6),
            "write_errors": w.stats.write_errors,
            "dropped_records": dict(w.stats.dropped_records),
            "dropped_items": dict(w.stats.dropped_items),
            "corrupt_records_at_open": w.stats.corrupt_records_at_open,
            "torn_tail_bytes_truncated": w.stats.torn_tail_bytes_truncated,
            "quarantined_segments": w.stats.quarantined_segments,
        },
    }
