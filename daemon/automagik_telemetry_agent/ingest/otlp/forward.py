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
import os
import socket
from collections.abc import Callable

import orjson

from automagik_telemetry import protocol
from automagik_telemetry.protocol import MessageType, RecordKind, RejectReason

log = logging.getLogger(__name__)


SETTLE_TIMEOUT_S = 10.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
        self._sending = asyncio.Lock()
        self._seq = 0
        self._waiting: dict[int, asyncio.Future[None]] = {}
        self.connects = 0

    @property
    def connected(self) -> bool:
        return self._sock is not None

    async def connect(self) -> None:
        """Connect now if not connected (and run ``on_connect``): before looking at what is durable."""
        await self._connect()

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
            await self._settle(sock)
            self.on_connect()
            self._sock, self._seq = sock, 0
            self.connects += 1
            self._reader = asyncio.get_running_loop().create_task(self._read(sock))
            return sock

    async def _settle(self, sock: socket.socket) -> None:
        """Wait until ingest has read everything a dead process sent it (its connection is gone: ingest
        reads a connection to its end before closing it), so that ``on_connect`` sees it in the WAL.

        A receiver killed mid-request leaves messages in ingest's socket buffer; without this wait the
        new receiver could look at the WAL before ingest appended them and write a retry's parts again.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_TIMEOUT_S
        seq = 0
        while True:
            seq += 1
            try:
                await loop.sock_sendall(sock, protocol.encode(MessageType.STATS_REQUEST, seq=seq))
                reply = await asyncio.wait_for(loop.sock_recv(sock, protocol.MAX_MESSAGE_SIZE), SETTLE_TIMEOUT_S)
                header = protocol.decode_header(reply)
            except (OSError, TimeoutError, protocol.ProtocolError) as exc:
                sock.close()
                raise IngestUnavailable(f"ingest did not answer STATS: {exc}") from None
            if header.type != MessageType.STATS:
                continue
            peers = orjson.loads(reply[protocol.HEADER_SIZE :]).get("peer_pids", [])
            dead = [pid for pid in peers if not _alive(pid)]
            if not dead or loop.time() > deadline:
                if dead:
                    log.warning("ingest still holds connections of ended processes %s; going on", dead)
                return
            await asyncio.sleep(0.02)

    async def send(self, parts: list[tuple[bytes, int]], kind: RecordKind) -> list[asyncio.Future[None]]:
        """Send RECORDS messages (payload, count); each future is done when its message is durable (or fails).

        One sender at a time: asyncio cannot wait for one socket's writability on behalf of two coroutines
        (a second ``sock_sendall`` would take the first one's wake-up), and the sequence numbers must reach
        ingest in order.
        """
        loop = asyncio.get_running_loop()
        async with self._sending:
            sock = await self._connect()
            futures: list[asyncio.Future[None]] = []
            for payload, count in parts:
                self._seq += 1
                future: asyncio.Future[None] = loop.create_future()
                self._waiting[self._seq] = future
                futures.append(future)
                message = protocol.encode(MessageType.RECORDS, payload, seq=self._seq, count=count, kind=int(kind))
                try:
                    await loop.sock_sendall(sock, message)
                except OSError as exc:
                    self._broken(sock, f"sending to ingest failed: {exc.strerror}")
                    break
            return futures

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
