"""The receiver's connection to ingest: RECORDS messages out, ACK/REJECT back, one future per message.

The receiver is a client of the agent socket like the Python client (docs/protocol.md): a message is
durable once ingest's cumulative ACK covers its sequence number. One connection carries every request's
messages; if it breaks, every message still waiting fails (:class:`IngestUnavailable`) and the next
request reconnects. ``on_connect`` runs after each connect (the receiver reloads its dedup index from the
WAL then: what ingest made durable before it went away is in there).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
from collections.abc import Callable

from automagik_telemetry import protocol
from automagik_telemetry.protocol import MessageType, RecordKind, RejectReason

log = logging.getLogger(__name__)


class IngestUnavailable(Exception):
    """Ingest is not there (restarting, or the connection broke): the request may be retried (503)."""


class IngestRejected(Exception):
    """Ingest refused a message (the WAL is full under ``reject``, disk full, a WAL error): 503."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class IngestLink:
    def __init__(self, socket_path: str, on_connect: Callable[[], None] = lambda: None) -> None:
        self.socket_path = socket_path
        self.on_connect = on_connect
        self._sock: socket.socket | None = None
        self._reader: asyncio.Task[None] | None = None
        self._connecting = asyncio.Lock()
        self._seq = 0
        self._waiting: dict[int, asyncio.Future[None]] = {}
        self.connects = 0

    @property
    def connected(self) -> bool:
        return self._sock is not None

    async def _connect(self) -> socket.socket:
        async with self._connecting:
            if self._sock is not None:
                return self._sock
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
            sock.setblocking(False)
            try:
                await asyncio.get_running_loop().sock_connect(sock, self.socket_path)
            except OSError as exc:
                sock.close()
                raise IngestUnavailable(f"cannot connect to ingest at {self.socket_path}: {exc.strerror}") from None
            self.on_connect()
            self._sock, self._seq = sock, 0
            self.connects += 1
            self._reader = asyncio.get_running_loop().create_task(self._read(sock))
            return sock

    async def send(self, payload: bytes, count: int, kind: RecordKind) -> asyncio.Future[None]:
        """Send one RECORDS message; the future is done when it is durable (or fails)."""
        sock = await self._connect()
        self._seq += 1
        seq = self._seq
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[seq] = future
        message = protocol.encode(MessageType.RECORDS, payload, seq=seq, count=count, kind=int(kind))
        try:
            await asyncio.get_running_loop().sock_sendall(sock, message)
        except OSError as exc:
            self._broken(sock, f"sending to ingest failed: {exc.strerror}")
        return future

    async def _read(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        why = "ingest closed the connection"
        try:
            while True:
                data = await loop.sock_recv(sock, protocol.MAX_MESSAGE_SIZE)
                if not data:
                    break
                self._reply(data)
        except OSError as exc:
            why = f"the connection to ingest broke: {exc.strerror}"
        except protocol.ProtocolError as exc:
            why = f"ingest sent a message this receiver cannot read: {exc}"
        self._broken(sock, why)

    def _reply(self, data: bytes) -> None:
        header = protocol.decode_header(data)
        if header.type == MessageType.ACK:
            for seq in list(itertools.takewhile(lambda s: s <= header.seq, self._waiting)):  # in seq order
                future = self._waiting.pop(seq)
                if not future.done():
                    future.set_result(None)
        elif header.type == MessageType.REJECT:
            reason = bytes(data[protocol.HEADER_SIZE :]).decode("ascii", "replace")
            if header.seq == 0 and reason == RejectReason.TOO_MANY_CONNECTIONS:
                raise protocol.ProtocolError(RejectReason.TOO_MANY_CONNECTIONS)
            rejected = self._waiting.pop(header.seq, None)
            if rejected is not None and not rejected.done():
                rejected.set_exception(IngestRejected(reason))

    def _broken(self, sock: socket.socket, why: str) -> None:
        if self._sock is not sock:
            return
        log.warning("%s; %d messages were waiting for their ACK", why, len(self._waiting))
        self._sock = None
        with contextlib.suppress(OSError):
            sock.close()
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(IngestUnavailable(why))

    def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._sock is not None:
            self._broken(self._sock, "the receiver is stopping")
