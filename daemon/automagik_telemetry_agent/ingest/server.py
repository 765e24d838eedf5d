"""The ingest process: accept client connections, validate messages, append them to the WAL, ACK.

One thread runs an epoll loop over the listening socket and every client connection. Per message it
does O(1) work in Python (header check, a C-speed line count, one buffered append), so a client that
sends garbage, oversized messages or nothing at all costs the others almost nothing. Fairness: at most
``READ_BUDGET`` messages per connection per loop turn. Backpressure: when fsync falls behind, the loop
waits for it instead of reading, so clients see a full socket (EAGAIN) rather than silent loss.

ACK(n) is sent on a connection once every RECORDS message up to n on it is durable under the fsync
mode; REJECT is sent at once for a message that will never be written (protocol: docs/protocol.md).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import selectors
import socket
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from automagik_telemetry import protocol
from automagik_telemetry.protocol import MessageType, ProtocolError, RejectReason

from ..config import ConfigError
from ..unix_socket import bind_unix
from ..wal import FsyncMode, WalWriteError, WalWriter
from ..wal.syncer import GroupCommitter
from .client_counters import ClientCounters

log = logging.getLogger(__name__)

READ_BUDGET = 64  # messages per connection per loop turn
MAX_UNSYNCED_BYTES = 32 * 1024 * 1024  # backpressure threshold in interval mode
MAINTAIN_EVERY_S = 1.0
MAX_OUTBOX = 1024  # unsent REJECTs per connection before the client is disconnected


class IngestSetupError(Exception):
    """The agent cannot start listening; the message says what to fix."""


@dataclass
class IngestOptions:
    socket_path: str
    socket_mode: int = 0o660
    max_connections: int = 1024
    fsync: FsyncMode = FsyncMode.INTERVAL
    fsync_interval_s: float = 0.05
    fsync_bytes: int = 1024 * 1024
    listen_fd: int | None = None  # an inherited listening socket (systemd socket activation)

    def __post_init__(self) -> None:
        self.fsync = FsyncMode(self.fsync)  # a configuration's string, or the enum


@dataclass
class IngestStats:
    messages_received: int = 0
    records_received: int = 0  # WAL records (one per RECORDS message)
    items_received: int = 0  # spans
    bytes_received: int = 0
    rejected_messages: Counter[str] = field(default_factory=Counter)  # by RejectReason value
    rejected_items: Counter[str] = field(default_factory=Counter)
    connections_accepted: int = 0
    connections_refused: int = 0
    acks_sent: int = 0
    connections_dropped_unread: int = 0  # clients disconnected for not reading their replies


class _Connection:
    __slots__ = ("ack_owed", "acked", "outbox", "peer_pid", "pending", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pending: deque[tuple[int, int, int]] = deque()  # (wal_seq, msg_seq, items), in order
        self.ack_owed = 0  # an ACK that could not be sent yet (client not reading)
        self.outbox: deque[bytes] = deque()  # REJECTs not sent yet: they must reach the client before any ACK
        self.acked = 0
        self.peer_pid = 0


class IngestServer:
    def __init__(self, options: IngestOptions, writer: WalWriter) -> None:
        self.options = options
        self.writer = writer
        self.stats = IngestStats()
        self.clients = ClientCounters()
        self._selector = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self._owns_socket_path = False
        self._conns: dict[int, _Connection] = {}
        self._awaiting_ack: set[_Connection] = set()
        self._buf = bytearray(protocol.MAX_MESSAGE_SIZE + 1)
        self._view = memoryview(self._buf)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stopping = False
        self._storage_error: WalWriteError | None = None  # a write failed, not for a full disk: stop
        self._committer: GroupCommitter | None = None
        self._last_maintain = 0.0
        self._bytes_handed = 0
        self.started_at = time.time()
        self.last_turn = time.monotonic()  # the epoll loop's last turn: the supervisor's heartbeat (loop_age_s)

    # ------------------------------------------------------------------ setup
    def listen(self) -> None:
        if self.options.listen_fd is not None:
            sock = socket.socket(fileno=self.options.listen_fd)
            if sock.type != socket.SOCK_SEQPACKET or sock.family != socket.AF_UNIX:
                raise IngestSetupError(
                    "the inherited socket is not an AF_UNIX SOCK_SEQPACKET socket: use "
                    "ListenSequentialPacket= in the .socket unit"
                )
        else:
            sock = self._bind(self.options.socket_path)
            self._owns_socket_path = True
        sock.setblocking(False)
        self._listener = sock
        self._selector.register(sock, selectors.EVENT_READ, "listener")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")

    def _bind(self, path: str) -> socket.socket:
        try:
            return bind_unix(path, socket.SOCK_SEQPACKET, self.options.socket_mode)
        except ConfigError as exc:
            raise IngestSetupError(str(exc)) from None

    # ------------------------------------------------------------------ main loop
    def request_stop(self) -> None:
        """Async-signal-safe: ask the loop to stop after draining."""
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"s")

    def serve_forever(self, on_ready: object = None) -> None:
        if self._listener is None:
            self.listen()
        if self.options.fsync is FsyncMode.INTERVAL:
            self._committer = GroupCommitter(
                self.writer, self.options.fsync_interval_s, self.options.fsync_bytes, self._on_durable
            )
            self._committer.start()
        if callable(on_ready):
            on_ready()
        try:
            while not self._stopping:
                self._turn(timeout=MAINTAIN_EVERY_S)
            self._drain()
        finally:
            self._shutdown()

    def _on_durable(self, _seq: int) -> None:  # called from the group-commit thread
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"d")

    def _turn(self, timeout: float) -> None:
        for key, _mask in self._selector.select(timeout):
            if key.data == "listener":
                self._accept()
            elif key.data == "wake":
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 4096)
            else:
                self._read(key.data)
        self._commit()
        if self._storage_error is not None:
            self._stop_for_storage_error(self._storage_error)
        now = time.monotonic()
        self.last_turn = now
        if now - self._last_maintain >= MAINTAIN_EVERY_S:
            self._last_maintain = now
            self.writer.maintain()

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("cannot accept a client connection: %s", exc.strerror)
                    self.stats.connections_refused += 1
                    return
                raise
            if len(self._conns) >= self.options.max_connections:
                with contextlib.suppress(OSError):
                    sock.send(protocol.encode(MessageType.REJECT, RejectReason.TOO_MANY_CONNECTIONS.value.encode()))
                sock.close()
                self.stats.connections_refused += 1
                self.stats.rejected_messages[RejectReason.TOO_MANY_CONNECTIONS.value] += 1
                continue
            sock.setblocking(False)
            conn = _Connection(sock)
            with contextlib.suppress(OSError):
                creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
                conn.peer_pid = int.from_bytes(creds[:4], "little")
            self._conns[sock.fileno()] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)
            self.stats.connections_accepted += 1

    def _read(self, conn: _Connection) -> None:
        for _ in range(READ_BUDGET):
            try:
                n = conn.sock.recv_into(self._buf, len(self._buf))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._close(conn)
                return
            if n == 0:
                self._close(conn)
                return
            self._handle(conn, n)

    def _handle(self, conn: _Connection, n: int) -> None:
        stats = self.stats
        stats.messages_received += 1
        stats.bytes_received += n
        view = self._view[:n]
        header: protocol.Header | None = None
        try:
            header = protocol.decode_header(view)
            if header.type == MessageType.RECORDS:
                payload = bytes(view[protocol.HEADER_SIZE :])
                protocol.check_records_payload(payload, header.count)
                self._append(conn, header, payload)
            elif header.type == MessageType.CLIENT_STATS:
                if not self.clients.report(bytes(view[protocol.HEADER_SIZE :])):
                    raise ProtocolError(
                        RejectReason.BAD_PAYLOAD, "CLIENT_STATS is not a JSON object with an 'instance' string"
                    )
            elif header.type == MessageType.STATS_REQUEST:
                self._send(
                    conn, protocol.encode(MessageType.STATS, json.dumps(self.snapshot()).encode(), seq=header.seq)
                )
            else:
                raise ProtocolError(RejectReason.BAD_TYPE, f"type {header.type:#x} is not sent by clients")
        except ProtocolError as exc:
            self._reject(conn, _raw_seq(view), exc.reason, _rejected_items(view, exc.reason))

    def _append(self, conn: _Connection, header: protocol.Header, payload: bytes) -> None:
        if self._storage_error is not None:  # stopping at the end of this turn; write nothing more
            raise ProtocolError(RejectReason.WAL_ERROR)
        if not self.writer.accepting:  # re-evaluated by maintain() about once a second
            raise ProtocolError(RejectReason.DISK_FULL)
        try:
            wal_seq = self.writer.append(payload, header.count, header.kind)
        except WalWriteError as exc:
            self._rollback_from(exc)
            raise ProtocolError(RejectReason.DISK_FULL if exc.disk_full else RejectReason.WAL_ERROR) from None
        conn.pending.append((wal_seq, header.seq, header.count))
        self._awaiting_ack.add(conn)
        self.stats.records_received += 1
        self.stats.items_received += header.count

    def _reject(self, conn: _Connection, seq: int, reason: RejectReason, items: int) -> None:
        self.stats.rejected_messages[reason.value] += 1
        self.stats.rejected_items[reason.value] += items
        conn.outbox.append(protocol.encode(MessageType.REJECT, reason.value.encode(), seq=seq))
        if not self._flush_outbox(conn):
            self._awaiting_ack.add(conn)  # retried with the ACKs, and ahead of them

    def _flush_outbox(self, conn: _Connection) -> bool:
        """Send queued REJECTs in order; False while the client is not reading.

        An ACK is cumulative, so it is never sent while a REJECT for an earlier message is still queued
        (the client would take the refused message as durable). A client that stops reading its replies
        altogether is disconnected once MAX_OUTBOX of them are queued, and that is counted.
        """
        while conn.outbox:
            if not self._send(conn, conn.outbox[0]):
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

    def _rollback_from(self, exc: WalWriteError) -> None:
        """Records from exc.first_failed_seq on never reached the file: reject them.

        A full disk (ENOSPC, EDQUOT, EFBIG) is the disk policy's business and ingest goes on. Any other
        write error (EIO, EROFS, the WAL directory removed...) means the storage cannot be trusted: the
        loop stops at the end of this turn (:meth:`_stop_for_storage_error`).
        """
        log.error("%s", exc)
        if not exc.disk_full and self._storage_error is None:
            self._storage_error = exc
        reason = RejectReason.DISK_FULL if exc.disk_full else RejectReason.WAL_ERROR
        for conn in list(self._awaiting_ack):
            while conn.pending and conn.pending[-1][0] >= exc.first_failed_seq:
                _wal_seq, msg_seq, items = conn.pending.pop()
                self.stats.records_received -= 1  # counted at append; it never reached the WAL
                self.stats.items_received -= items
                self._reject(conn, msg_seq, reason, items)

    def _commit(self) -> None:
        """Hand appends to the OS, make them durable per the fsync mode, send ACKs."""
        try:
            self.writer.flush()
        except WalWriteError as exc:
            self._rollback_from(exc)
        written = self.writer.stats.appended_bytes
        if self._committer is not None and written > self._bytes_handed:
            self._committer.written(written - self._bytes_handed)
        self._bytes_handed = written
        mode = self.options.fsync
        if mode is FsyncMode.ALWAYS:
            self.writer.sync()
        elif mode is FsyncMode.OFF:
            self.writer.sync(fsync=False)
        else:
            assert self._committer is not None
            if self._committer.error is not None:
                raise self._committer.error
            self._wait_for_fsync_if_behind()
        self._send_acks()

    def _stop_for_storage_error(self, exc: WalWriteError) -> None:
        """ACK what is already durable if the storage still allows it, then raise: the process exits 74
        (EX_IOERR), the supervisor stops the agent, and the next start recovers what is on disk. Retrying
        writes on storage that failed would only flood the log and reject every message."""
        with contextlib.suppress(OSError):
            self.writer.sync(fsync=self.options.fsync is not FsyncMode.OFF)
            self._send_acks()
        for conn in list(self._awaiting_ack):
            self._flush_outbox(conn)  # the REJECTs of the messages that were not written
        raise OSError(exc.errno, str(exc))

    def _wait_for_fsync_if_behind(self) -> None:
        writer = self.writer
        deadline = time.monotonic() + 0.1
        while (
            writer.written_seq > writer.durable_seq
            and self._unsynced_estimate() > MAX_UNSYNCED_BYTES
            and time.monotonic() < deadline
        ):
            time.sleep(0.002)

    def _unsynced_estimate(self) -> int:
        assert self._committer is not None
        return self._committer.unsynced_bytes

    def _send_acks(self) -> None:
        durable = self.writer.durable_seq
        done = []
        for conn in list(self._awaiting_ack):
            if not self._flush_outbox(conn):
                continue
            msg_seq = 0
            while conn.pending and conn.pending[0][0] <= durable:
                msg_seq = conn.pending.popleft()[1]
            if msg_seq:
                conn.ack_owed = msg_seq
            if conn.ack_owed and self._send(conn, protocol.encode(MessageType.ACK, seq=conn.ack_owed)):
                conn.acked = conn.ack_owed
                conn.ack_owed = 0
                self.stats.acks_sent += 1
            if not conn.pending and not conn.ack_owed and not conn.outbox:
                done.append(conn)
        for conn in done:
            self._awaiting_ack.discard(conn)

    def _send(self, conn: _Connection, message: bytes) -> bool:
        try:
            conn.sock.send(message)
            return True
        except (BlockingIOError, InterruptedError):
            return False  # the client is not reading; an ACK is retried, a REJECT is best effort
        except OSError:
            return False

    def _close(self, conn: _Connection) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)
        self._conns.pop(conn.sock.fileno(), None)
        self._awaiting_ack.discard(conn)
        conn.sock.close()

    # ------------------------------------------------------------------ stop
    def _drain(self) -> None:
        """Stop accepting; read what clients already sent; make it durable; ACK it."""
        if self._listener is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(self._listener)
        for conn in list(self._conns.values()):
            self._read_all(conn)
        self._commit()
        if self._committer is not None:
            self._committer.stop()
            self._committer = None
        if self.options.fsync is not FsyncMode.OFF:
            self.writer.sync()
        else:
            self.writer.sync(fsync=False)
        self._send_acks()

    def _read_all(self, conn: _Connection) -> None:
        while conn.sock.fileno() >= 0:
            before = self.stats.messages_received
            self._read(conn)
            if self.stats.messages_received == before:
                return

    def _shutdown(self) -> None:
        if self._committer is not None:
            self._committer.stop()
        for conn in list(self._conns.values()):
            self._close(conn)
        if self._listener is not None:
            self._listener.close()
            if self._owns_socket_path:
                with contextlib.suppress(OSError):
                    os.unlink(self.options.socket_path)
        self._selector.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        """Release the socket without serving (start-up aborted after :meth:`listen`)."""
        self._shutdown()

    # ------------------------------------------------------------------ introspection
    def snapshot(self) -> dict[str, Any]:
        """Counters of ingest and the WAL, as the STATS message carries them."""
        s, w = self.stats, self.writer
        oldest = w.oldest_unconsumed_seq()
        return {
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "messages_received": s.messages_received,
            "records_received": s.records_received,
            "items_received": s.items_received,
            "bytes_received": s.bytes_received,
            "rejected_messages": dict(s.rejected_messages),
            "rejected_items": dict(s.rejected_items),
            "connections_open": len(self._conns),
            "connections_accepted": s.connections_accepted,
            "connections_refused": s.connections_refused,
            "acks_sent": s.acks_sent,
            "connections_dropped_unread": s.connections_dropped_unread,
            "client_reported": self.clients.totals(),
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


#: Rejections of a well-framed RECORDS message: its header's count is the number of items lost.
_ITEM_REASONS = frozenset(
    {RejectReason.UNSUPPORTED_KIND, RejectReason.BAD_PAYLOAD, RejectReason.DISK_FULL, RejectReason.WAL_ERROR}
)


def _rejected_items(view: memoryview, reason: RejectReason) -> int:
    """Items a rejected message carried (for ``rejected_items``): the count of a RECORDS message whose
    framing was valid, else 0 (the count of a garbage or non-RECORDS header means nothing)."""
    if reason in _ITEM_REASONS and len(view) >= protocol.HEADER_SIZE and view[3] == MessageType.RECORDS:
        return int.from_bytes(view[8:12], "little")
    return 0


def _raw_seq(view: memoryview) -> int:
    """The seq field of a message whose header may be invalid (0 if it is too short)."""
    if len(view) >= protocol.HEADER_SIZE:
        return int.from_bytes(view[16:24], "little")
    return 0
