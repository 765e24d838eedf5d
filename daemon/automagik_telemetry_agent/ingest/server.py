"""The ingest process: accept client connections, validate messages, append them to the WAL, ACK.

One thread runs an epoll loop over the listening socket and every client connection. Per message it
does O(1) work in Python (header check, a C-speed line count, one buffered append), so a client that
sends garbage, oversized messages or nothing at all costs the others almost nothing. Fairness: at most
``READ_BUDGET`` messages per connection per loop turn. Backpressure: when fsync falls behind, the loop
waits for it instead of reading, so clients see a full socket (EAGAIN) rather than silent loss.

ACK(n) is sent on a connection once every RECORDS message up to n on it is durable under the fsync
mode; REJECT is sent at once for a message that will never be written (protocol: docs/protocol.md;
the bookkeeping: :mod:`.replies`, per connection :mod:`.connection`; the counters: :mod:`.stats`).
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
from dataclasses import dataclass, field
from typing import Any

from automagik_telemetry import protocol
from automagik_telemetry.protocol import MessageType, ProtocolError, RejectReason

from ..config import ConfigError
from ..unix_socket import bind_unix
from ..wal import FsyncMode, WalWriteError, WalWriter
from ..wal.syncer import GroupCommitter
from .client_counters import ClientCounters
from .connection import Connection
from .redact import Redactor, RedactRules
from .replies import Replies, raw_seq, rejected_items
from .stats import IngestStats, stats_snapshot

log = logging.getLogger(__name__)

READ_BUDGET = 64  # messages per connection per loop turn
MAX_UNSYNCED_BYTES = 32 * 1024 * 1024  # backpressure threshold in interval mode
MAINTAIN_EVERY_S = 1.0


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
    redact: RedactRules = field(default_factory=RedactRules)  # host-wide redaction (off: nothing parsed)

    def __post_init__(self) -> None:
        self.fsync = FsyncMode(self.fsync)  # a configuration's string, or the enum


class IngestServer:
    def __init__(self, options: IngestOptions, writer: WalWriter) -> None:
        self.options = options
        self.writer = writer
        self.stats = IngestStats()
        self.redactor = Redactor(options.redact) if options.redact.active else None
        self.clients = ClientCounters()
        self._selector = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self._owns_socket_path = False
        self._conns: dict[int, Connection] = {}
        self._replies = Replies(self.stats, self._close)
        self._awaiting_ack = self._replies.awaiting  # the same set: _append adds to it directly
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
            conn = Connection(sock)
            with contextlib.suppress(OSError):
                creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
                conn.peer_pid = int.from_bytes(creds[:4], "little")
            self._conns[sock.fileno()] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)
            self.stats.connections_accepted += 1

    def _read(self, conn: Connection) -> None:
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

    def _handle(self, conn: Connection, n: int) -> None:
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
                conn.send(protocol.encode(MessageType.STATS, json.dumps(self.snapshot()).encode(), seq=header.seq))
            else:
                raise ProtocolError(RejectReason.BAD_TYPE, f"type {header.type:#x} is not sent by clients")
        except ProtocolError as exc:
            self._replies.reject(conn, raw_seq(view), exc.reason, rejected_items(view, exc.reason))

    def _append(self, conn: Connection, header: protocol.Header, payload: bytes) -> None:
        if self._storage_error is not None:  # stopping at the end of this turn; write nothing more
            raise ProtocolError(RejectReason.WAL_ERROR)
        if not self.writer.accepting:  # re-evaluated by maintain() about once a second
            raise ProtocolError(RejectReason.DISK_FULL)
        if self.redactor is not None:
            payload = self.redactor.apply(payload)
        try:
            wal_seq = self.writer.append(payload, header.count, header.kind)
        except WalWriteError as exc:
            self._rollback_from(exc)
            raise ProtocolError(RejectReason.DISK_FULL if exc.disk_full else RejectReason.WAL_ERROR) from None
        conn.pending.append((wal_seq, header.seq, header.count, header.kind))
        self._awaiting_ack.add(conn)
        stats = self.stats
        stats.records_received += 1
        stats.items_received += header.count
        stats.items_by_kind[header.kind] += header.count

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
        self._replies.reject_from(exc.first_failed_seq, reason)

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
        self._replies.send_acks(self.writer.durable_seq)

    def _stop_for_storage_error(self, exc: WalWriteError) -> None:
        """ACK what is already durable if the storage still allows it, then raise: the process exits 74
        (EX_IOERR), the supervisor stops the agent, and the next start recovers what is on disk. Retrying
        writes on storage that failed would only flood the log and reject every message."""
        with contextlib.suppress(OSError):
            self.writer.sync(fsync=self.options.fsync is not FsyncMode.OFF)
            self._replies.send_acks(self.writer.durable_seq)
        for conn in list(self._awaiting_ack):
            self._replies.flush_outbox(conn)  # the REJECTs of the messages that were not written
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

    def _close(self, conn: Connection) -> None:
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
        self._replies.send_acks(self.writer.durable_seq)

    def _read_all(self, conn: Connection) -> None:
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
        peers = [c.peer_pid for c in self._conns.values() if c.peer_pid]
        return stats_snapshot(self.stats, self.writer, self.clients, self.started_at, len(self._conns), peers)
