"""The receiver's HTTP/1.1 server: h11 (the sans-I/O HTTP/1.1 state machine) on asyncio.

h11 parses and frames; this module owns the policy, which is what a receiver facing any process on the
network needs (docs/otlp.md "Limits"):

* **connections**: at most ``max_connections``; one more is answered 503 and closed;
* **time**: an idle keep-alive connection is closed after ``idle_timeout``, a new one that sends
  nothing after ``header_timeout`` (a silent connection must not hold a slot for ``idle_timeout``); a
  request's headers must arrive within ``header_timeout`` of its first byte and its body within
  ``body_timeout`` of its headers (else 408 and close): a byte-a-second client holds a slot for seconds,
  not forever; a TLS handshake must end within ``header_timeout`` too;
* **memory**: headers at most 16 KiB (431); a body at most ``max_body`` bytes *after* decompression
  (413), the decompressor told to stop there, so a gzip bomb is cut off at the limit instead of
  inflated; the bodies held at once at most ``max_buffered`` bytes in all (503 beyond);
* **routing before the body**: header size (431), both ``Transfer-Encoding`` and ``Content-Length``
  (400), path (404), method (405), the bearer token (401), ``Content-Type`` (415), ``Content-Encoding``
  (415), a declared ``Content-Length`` beyond the limit (413) are checked on the headers, in that order,
  and the connection is closed after such an answer instead of reading a body nobody wants; a client
  that sent ``Expect: 100-continue`` gets its ``100 Continue`` only once the headers passed.
* **bad input is the client's**: every malformed request is answered 4xx, never 5xx (h11's 501 for a
  ``Transfer-Encoding`` other than chunked is answered 400); a 5xx means the receiver or ingest failed.

A complete request goes to the ``handler`` (:class:`~.receiver.Receiver`); reading from that connection
pauses until it is answered.
"""

from __future__ import annotations

import asyncio
import enum
import hmac
import logging
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from ssl import SSLContext
from typing import Any

import h11

from ...metrics.histogram import LatencyHistogram
from .body import CODINGS, Body, BodyTooLarge
from .responses import Encoding, status_body
from .signals import OtlpSignal

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 16 * 1024
SERVER_NAME = b"automagik-telemetry"
#: From the last byte of a request to its answer: decode plus the wait for durability (fsync every 50 ms).
REQUEST_BOUNDS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True, slots=True)
class Request:
    signal: OtlpSignal
    encoding: Encoding
    body: bytes  # decompressed


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes
    content_type: str
    retry_after_s: int = 0


Handler = Callable[[Request], Coroutine[Any, Any, Reply]]


@dataclass
class HttpOptions:
    max_connections: int = 512
    max_body: int = 16 * 1024 * 1024
    max_buffered: int = 256 * 1024 * 1024
    idle_timeout_s: float = 120.0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    token: str = ""  # required as "Authorization: Bearer <token>" when set


class Phase(enum.Enum):
    """Where a connection is; each phase has its own deadline (none while the handler works)."""

    IDLE = "idle"  # between requests (keep-alive), no byte of the next one yet
    HEADERS = "headers"
    BODY = "body"
    HANDLING = "handling"
    CLOSED = "closed"


@dataclass
class HttpStats:
    connections_accepted: int = 0
    connections_refused: int = 0  # beyond max_connections
    connections_timed_out: dict[str, int] = field(default_factory=lambda: {p.value: 0 for p in Phase})
    bytes_received: int = 0
    responses: dict[tuple[str, int], int] = field(default_factory=dict)  # (path label, status) -> count
    latency: LatencyHistogram = field(default_factory=lambda: LatencyHistogram(REQUEST_BOUNDS_S))

    def answered(self, path: str, status: int, seconds: float) -> None:
        key = (path, status)
        self.responses[key] = self.responses.get(key, 0) + 1
        self.latency.observe(seconds)


class HttpServer:
    def __init__(self, options: HttpOptions, handler: Handler) -> None:
        self.options = options
        self.handler = handler
        self.stats = HttpStats()
        self.connections: set[_Connection] = set()
        self.buffered = 0  # body bytes held by all connections
        self._servers: list[asyncio.Server] = []

    async def serve(self, sock: socket.socket, ssl: SSLContext | None = None) -> None:
        """Start serving on a listening socket (TCP or Unix stream)."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _Connection(self),
            sock=sock,
            ssl=ssl,
            # the handshake comes before connection_made, hence before max_connections counts it: bounded in time
            ssl_handshake_timeout=self.options.header_timeout_s if ssl is not None else None,
        )
        self._servers.append(server)

    async def close(self, grace_s: float = 5.0) -> None:
        """Stop accepting; let requests being handled finish (their data is durable or refused), then close."""
        for server in self._servers:
            server.close()
        deadline = time.monotonic() + grace_s
        while any(c.phase is Phase.HANDLING for c in self.connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            conn.close()


class _Connection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.options = server.options
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        self.transport: asyncio.Transport | None = None
        self.phase = Phase.IDLE
        self.timer: asyncio.TimerHandle | None = None
        self.body: Body | None = None
        self.request: h11.Request | None = None
        self.signal: OtlpSignal | None = None
        self.encoding: Encoding | None = None
        self.started = 0.0
        self.held = 0  # bytes of self.body counted in server.buffered

    # ---- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        server = self.server
        if len(server.connections) >= self.options.max_connections:
            server.stats.connections_refused += 1
            body, ctype = status_body(None, 503, "too many connections; retry later")
            transport.write(
                b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n"
                + f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            transport.close()
            self.phase = Phase.CLOSED
            return
        server.connections.add(self)
        server.stats.connections_accepted += 1
        # Not yet a keep-alive connection: one that never sends a byte holds its slot for header_timeout.
        self._deadline(min(self.options.idle_timeout_s, self.options.header_timeout_s))

    def connection_lost(self, exc: Exception | None) -> None:
        self.phase = Phase.CLOSED
        self._release()
        self.server.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()

    def data_received(self, data: bytes) -> None:
        if self.phase is Phase.CLOSED:
            return
        self.server.stats.bytes_received += len(data)
        if self.phase is Phase.IDLE:
            self.phase = Phase.HEADERS
            self.started = time.monotonic()
            self._deadline(self.options.header_timeout_s)
        self.h11.receive_data(data)
        self._events()

    def eof_received(self) -> bool | None:
        self.h11.receive_data(b"")
        self._events()
        return None

    # ---- the request cycle
    def _events(self) -> None:
        while self.phase not in (Phase.HANDLING, Phase.CLOSED):
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                # h11 hints 501 for a Transfer-Encoding other than chunked: the client's error all the same
                status = exc.error_status_hint if exc.error_status_hint < 500 else 400
                self._fail(status, f"malformed HTTP request: {exc}")
                return
            if event is h11.NEED_DATA:
                return
            if isinstance(event, h11.Request):
                self._on_request(event)
            elif isinstance(event, h11.Data):
                self._on_data(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self._on_end()
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                if isinstance(event, h11.ConnectionClosed):
                    self.close()
                return

    def _on_request(self, request: h11.Request) -> None:
        self.request = request
        self.phase = Phase.BODY
        self._deadline(self.options.body_timeout_s)
        headers = {name.lower(): value for name, value in request.headers}
        path = request.target.split(b"?", 1)[0].decode("latin-1")
        self.signal = OtlpSignal.from_path(path)
        self.encoding = Encoding.from_content_type(headers.get(b"content-type", b"").decode("latin-1"))
        problem = self._refusal(request, headers)
        if problem is not None:
            self._fail(*problem)
            return
        coding = headers.get(b"content-encoding", b"").decode("latin-1").strip().lower()
        self.body = Body(CODINGS[coding], self.options.max_body)
        if self.h11.client_is_waiting_for_100_continue:  # the headers passed: now the body is wanted
            assert self.transport is not None
            self.transport.write(
                self.h11.send(h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")) or b""
            )

    def _refusal(self, request: h11.Request, headers: dict[bytes, bytes]) -> tuple[int, str] | None:
        """Why a request is answered before its body is read, or None."""
        # h11 enforces MAX_HEADER_BYTES only on headers still incomplete; a whole block read at once is checked here
        size = len(request.method) + len(request.target) + sum(len(n) + len(v) + 4 for n, v in request.headers)
        if size > MAX_HEADER_BYTES:
            return 431, f"the request's headers take {size} bytes; the limit is {MAX_HEADER_BYTES}"
        if b"transfer-encoding" in headers and b"content-length" in headers:  # RFC 9112 6.3: smuggling
            return 400, "both Transfer-Encoding and Content-Length: send one of them"
        if self.signal is None:
            return 404, f"no such path: {request.target.decode('latin-1')!r} (POST /v1/traces, /v1/logs or /v1/metrics)"
        if request.method != b"POST":
            return 405, f"{request.method.decode('latin-1')} is not allowed: POST"
        if self.options.token and not _authorized(headers.get(b"authorization", b""), self.options.token):
            return 401, "missing or wrong bearer token (Authorization: Bearer <otlp.token_file's token>)"
        if self.encoding is None:
            ctype = headers.get(b"content-type", b"").decode("latin-1")
            return 415, f"Content-Type {ctype!r} is not supported: application/x-protobuf or application/json"
        coding = headers.get(b"content-encoding", b"").decode("latin-1").strip().lower()
        if coding not in CODINGS:
            return 415, f"Content-Encoding {coding!r} is not supported: gzip, deflate or none"
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.options.max_body:
            return 413, f"the body of {int(length)} bytes exceeds the limit of {self.options.max_body} bytes"
        return None

    def _on_data(self, data: bytes) -> None:
        if self.body is None:
            return
        try:
            self.body.feed(data)
        except BodyTooLarge:
            self._fail(413, f"the body exceeds the limit of {self.options.max_body} bytes (after decompression)")
            return
        except ValueError as exc:
            self._fail(400, str(exc))
            return
        grown = self.body.size - self.held
        self.held = self.body.size
        self.server.buffered += grown
        if self.server.buffered > self.options.max_buffered:
            self._fail(503, "the receiver holds too many request bodies at once; retry later", retry_after_s=1)

    def _on_end(self) -> None:
        assert self.body is not None and self.signal is not None and self.encoding is not None
        try:
            body = self.body.finish()
        except BodyTooLarge:
            self._fail(413, f"the body exceeds the limit of {self.options.max_body} bytes (after decompression)")
            return
        except ValueError as exc:
            self._fail(400, str(exc))
            return
        self.phase = Phase.HANDLING
        self._cancel_deadline()
        assert self.transport is not None
        self.transport.pause_reading()
        task: asyncio.Task[Reply] = asyncio.get_running_loop().create_task(
            self.server.handler(Request(self.signal, self.encoding, body))
        )
        task.add_done_callback(self._handled)

    def _handled(self, task: asyncio.Task[Reply]) -> None:
        self._release()
        if self.phase is Phase.CLOSED:
            return
        try:
            reply = task.result()
        except Exception:  # the handler's bug must not take the connection's answer with it
            log.exception("handling an OTLP request failed")
            body, ctype = status_body(self.encoding, 500, "internal error; see the agent's log")
            reply = Reply(500, body, ctype)
        self._respond(reply, keep_alive=True)

    # ---- answers
    def _fail(self, status: int, message: str, retry_after_s: int = 0) -> None:
        """Answer an error and close the connection (its request, if any, was not read to the end)."""
        body, ctype = status_body(self.encoding, status, message)
        self._release()
        self._respond(Reply(status, body, ctype, retry_after_s), keep_alive=False)

    def _respond(self, reply: Reply, keep_alive: bool) -> None:
        headers = [
            (b"content-type", reply.content_type.encode()),
            (b"content-length", str(len(reply.body)).encode()),
            (b"server", SERVER_NAME),
        ]
        if reply.retry_after_s:
            headers.append((b"retry-after", str(reply.retry_after_s).encode()))
        if reply.status == 405:
            headers.append((b"allow", b"POST"))
        if not keep_alive:
            headers.append((b"connection", b"close"))
        label = self.signal.label if self.signal is not None else "other"
        self.server.stats.answered(label, reply.status, time.monotonic() - self.started if self.started else 0.0)
        assert self.transport is not None
        try:
            if self.h11.their_state in (h11.IDLE, h11.ERROR):  # no (valid) request line: h11 will not answer it
                self._write_raw(reply, headers)
                self.close()
                return
            response = h11.Response(status_code=reply.status, headers=headers, reason=_REASON.get(reply.status, ""))
            out = self.h11.send(response) or b""
            if self.request is None or self.request.method != b"HEAD":  # a HEAD response has no body
                out += self.h11.send(h11.Data(data=reply.body)) or b""
            out += self.h11.send(h11.EndOfMessage()) or b""
            self.transport.write(out)
        except h11.LocalProtocolError:
            self._write_raw(reply, headers)
            self.close()
            return
        self._next_cycle(keep_alive)

    def _write_raw(self, reply: Reply, headers: list[tuple[bytes, bytes]]) -> None:
        assert self.transport is not None
        lines = [f"HTTP/1.1 {reply.status} {_REASON.get(reply.status, '')}".encode()]
        lines += [name + b": " + value for name, value in headers if name != b"connection"]
        head = self.request is not None and self.request.method == b"HEAD"
        self.transport.write(b"\r\n".join([*lines, b"connection: close", b"", b"" if head else reply.body]))

    def _next_cycle(self, keep_alive: bool) -> None:
        assert self.transport is not None
        if not keep_alive or self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE:
            self.close()
            return
        self.h11.start_next_cycle()
        self.request, self.body, self.signal, self.encoding, self.started = None, None, None, None, 0.0
        self.phase = Phase.IDLE
        self._deadline(self.options.idle_timeout_s)
        self.transport.resume_reading()
        if self.h11.trailing_data[0]:  # the next request was already received (pipelining)
            self.phase = Phase.HEADERS
            self.started = time.monotonic()
            self._deadline(self.options.header_timeout_s)
        self._events()

    # ---- deadlines and resources
    def _deadline(self, seconds: float) -> None:
        self._cancel_deadline()
        self.timer = asyncio.get_running_loop().call_later(seconds, self._timed_out, self.phase)

    def _cancel_deadline(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _timed_out(self, phase: Phase) -> None:
        if self.phase is not phase or self.phase in (Phase.HANDLING, Phase.CLOSED):
            return
        self.server.stats.connections_timed_out[phase.value] += 1
        if phase is Phase.IDLE:
            self.close()
        else:
            self._fail(408, f"the request's {phase.value} did not arrive in time")

    def _release(self) -> None:
        """Give back this connection's share of ``max_buffered``."""
        self.server.buffered -= self.held
        self.held = 0

    def close(self) -> None:
        self.phase = Phase.CLOSED
        self._cancel_deadline()
        self._release()
        if self.transport is not None:
            self.transport.close()


def _authorized(header: bytes, token: str) -> bool:
    scheme, _, value = header.decode("latin-1").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())


_REASON = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
