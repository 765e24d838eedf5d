"""What the ingest server owes its clients, and how it pays: REJECTs in order, cumulative ACKs once durable.

An ACK is cumulative, so it is never sent on a connection while a REJECT for an earlier message is still
queued there (the client would take the refused message as durable). A client that stops reading its
replies altogether is disconnected once ``MAX_OUTBOX`` of them are queued, and that is counted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from automagik_telemetry import protocol
from automagik_telemetry.protocol import MessageType, RejectReason

from .connection import Connection
from .stats import IngestStats

log = logging.getLogger(__name__)

MAX_OUTBOX = 1024  # unsent REJECTs per connection before the client is disconnected


class Replies:
    """The connections owed a reply (:attr:`awaiting`), and the sending of those replies."""

    def __init__(self, stats: IngestStats, close: Callable[[Connection], None]) -> None:
        self.stats = stats
        self.awaiting: set[Connection] = set()  # pending messages, an ACK owed, or REJECTs queued
        self._close = close  # the server's: unregister, forget, close (and drop from awaiting)

    def reject(self, conn: Connection, seq: int, reason: RejectReason, items: int) -> None:
        self.stats.rejected_messages[reason.value] += 1
        self.stats.rejected_items[reason.value] += items
        conn.outbox.append(protocol.encode(MessageType.REJECT, reason.value.encode(), seq=seq))
        if not self.flush_outbox(conn):
            self.awaiting.add(conn)  # retried with the ACKs, and ahead of them

    def reject_from(self, first_failed_seq: int, reason: RejectReason) -> None:
        """The appended messages from WAL seq ``first_failed_seq`` on never reached the file: REJECT them."""
        for conn in list(self.awaiting):
            while conn.pending and conn.pending[-1][0] >= first_failed_seq:
                _wal_seq, msg_seq, items, kind = conn.pending.pop()
                self.stats.records_received -= 1  # counted at append; it never reached the WAL
                self.stats.items_received -= items
                self.stats.items_by_kind[kind] -= items
                self.reject(conn, msg_seq, reason, items)

    def flush_outbox(self, conn: Connection) -> bool:
        """Send queued REJECTs in order; False while the client is not reading (disconnected past MAX_OUTBOX)."""
        while conn.outbox:
            if not conn.send(conn.outbox[0]):
                if len(conn.outbox) > MAX_OUTBOX:
                    log.warning(
                        "client pid %d does not read its replies (%d queued); disconnecting it",
                        conn.peer_pid,
                        len(conn.outbox),
                    )
                    self.stats.connections_dropped_unread += 1
                    self._close(conn)
                return False
            conn.outbox.popleft()
        return True

    def send_acks(self, durable: int) -> None:
        """Each connection gets one cumulative ACK for its messages up to WAL seq ``durable`` (after its REJECTs)."""
        done = []
        for conn in list(self.awaiting):
            if not self.flush_outbox(conn):
                continue
            msg_seq = 0
            while conn.pending and conn.pending[0][0] <= durable:
                msg_seq = conn.pending.popleft()[1]
            if msg_seq:
                conn.ack_owed = msg_seq
            if conn.ack_owed and conn.send(protocol.encode(MessageType.ACK, seq=conn.ack_owed)):
                conn.acked = conn.ack_owed
                conn.ack_owed = 0
                self.stats.acks_sent += 1
            if not conn.pending and not conn.ack_owed and not conn.outbox:
                done.append(conn)
        for conn in done:
            self.awaiting.discard(conn)


#: Rejections of a well-framed RECORDS message: its header's count is the number of items lost.
_ITEM_REASONS = frozenset(
    {RejectReason.UNSUPPORTED_KIND, RejectReason.BAD_PAYLOAD, RejectReason.DISK_FULL, RejectReason.WAL_ERROR}
)


def rejected_items(view: memoryview, reason: RejectReason) -> int:
    """Items a rejected message carried (for ``rejected_items``): the count of a RECORDS message whose
    framing was valid, else 0 (the count of a garbage or non-RECORDS header means nothing)."""
    if reason in _ITEM_REASONS and len(view) >= protocol.HEADER_SIZE and view[3] == MessageType.RECORDS:
        return int.from_bytes(view[8:12], "little")
    return 0


def raw_seq(view: memoryview) -> int:
    """The seq field of a message whose header may be invalid (0 if it is too short)."""
    if len(view) >= protocol.HEADER_SIZE:
        return int.from_bytes(view[16:24], "little")
    return 0
