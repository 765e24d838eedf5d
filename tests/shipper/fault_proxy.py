"""A small HTTP proxy in front of the real ClickHouse server that injects faults into INSERT requests.

``FaultProxy(upstream_url)`` listens on a free 127.0.0.1 port (:attr:`FaultProxy.url`). Every request
is read whole (``Content-Length`` bodies only, which is what ``requests`` sends for bytes), then:

* requests that are not INSERTs (``SELECT version()``, ``system.columns``, probes) are forwarded as is;
* an INSERT takes the next fault from the queue (:meth:`FaultProxy.push`), or :attr:`FaultProxy.mode`
  when the queue is empty, and is recorded in :attr:`FaultProxy.seen` (query string, body bytes, fault).

Faults (:class:`Fault`; constructors below):

* ``PASS``: forward to the server, relay its answer.
* ``delay(s)``: hold the request ``s`` seconds, then forward it only if the client still waits (a
  client that timed out has hung up: the server never sees the request).
* ``status_503()``: answer 503 without forwarding.
* ``status_200_with_exception()``: answer 200 with a ``Code: 241`` body without forwarding (an exception
  written after the headers went out).
* ``status_200_not_clickhouse()``: answer ``200 Ok.`` itself, without forwarding and without ClickHouse's
  ``X-ClickHouse-*`` headers (another service on the port, a misrouting proxy).
* ``reset_mid_body()``: answer a 200 whose ``Content-Length`` promises more than is sent, then RST.
* ``reset_before_response(forward)``: RST without answering; with ``forward=True`` the server got the
  request and answered first (it committed, the client saw a reset).

Each connection gets a thread; a request gets a fresh upstream connection. :meth:`stop` closes
everything and joins the threads. Sockets time out, so nothing blocks for long.
"""

from __future__ import annotations

import collections
import http.client
import select
import socket
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass

_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "content-length", "te", "upgrade"}


@dataclass(frozen=True)
class Fault:
    kind: str  # pass | delay | status_503 | status_200_with_exception | status_200_not_clickhouse | reset_mid_body
    #          | reset_before_response
    seconds: float = 0.0
    forward: bool = False


PASS = Fault("pass")


def delay(seconds: float) -> Fault:
    return Fault("delay", seconds)


def status_503() -> Fault:
    return Fault("status_503")


def status_200_with_exception() -> Fault:
    return Fault("status_200_with_exception")


def status_200_not_clickhouse() -> Fault:
    return Fault("status_200_not_clickhouse")


def reset_mid_body() -> Fault:
    return Fault("reset_mid_body")


def reset_before_response(forward: bool = False) -> Fault:
    return Fault("reset_before_response", forward=forward)


@dataclass(frozen=True)
class Seen:
    query: str  # the URL's query string, undecoded
    params: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    fault: Fault


class FaultProxy:
    def __init__(self, upstream_url: str, max_seen: int = 10_000) -> None:
        parts = urllib.parse.urlsplit(upstream_url)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.mode = PASS
        self.seen: list[Seen] = []
        self.max_seen = max_seen
        self._faults: collections.deque[Fault] = collections.deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    # ------------------------------------------------------------------ control
    def push(self, *faults: Fault) -> None:
        with self._lock:
            self._faults.extend(faults)

    def inserts(self, kind: str | None = None) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if kind is None or s.fault.kind == kind]

    def __enter__(self) -> FaultProxy:
        self._spawn(self._accept_loop)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._listener.close()
        with self._lock:
            for conn in self._conns:
                conn.close()
        deadline = time.monotonic() + 5
        for t in list(self._threads):
            t.join(max(0.0, deadline - time.monotonic()))

    def _spawn(self, target: object, *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True, name="fault-proxy")  # type: ignore[arg-type]
        self._threads = [*(x for x in self._threads if x.is_alive()), t]
        t.start()

    # ------------------------------------------------------------------ serving
    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(0.2)
            with self._lock:
                self._conns.add(conn)
            self._spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        try:
            while not self._stop.is_set():
                request, buf = self._read_request(conn, buf)
                if request is None or not self._handle(conn, *request):
                    return
        except OSError:
            return
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _read_request(
        self, conn: socket.socket, buf: bytes
    ) -> tuple[tuple[str, str, dict[str, str], bytes] | None, bytes]:
        while b"\r\n\r\n" not in buf:
            if not (chunk := self._recv(conn)):
                return None, b""
            buf += chunk
        head, buf = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        assert "chunked" not in headers.get("transfer-encoding", ""), "fault_proxy reads Content-Length bodies"
        size = int(headers.get("content-length", "0"))
        while len(buf) < size:
            if not (chunk := self._recv(conn)):
                return None, b""
            buf += chunk
        return (method, target, headers, buf[:size]), buf[size:]

    def _recv(self, conn: socket.socket) -> bytes:
        while not self._stop.is_set():
            try:
                return conn.recv(65536)
            except TimeoutError:
                continue
        return b""

    def _handle(self, conn: socket.socket, method: str, target: str, headers: dict[str, str], body: bytes) -> bool:
        """Answer one request; False closes the connection."""
        query = urllib.parse.urlsplit(target).query
        params = dict(urllib.parse.parse_qsl(query))
        fault = PASS
        if params.get("query", "").lstrip().upper().startswith("INSERT"):
            with self._lock:
                fault = self._faults.popleft() if self._faults else self.mode
                if len(self.seen) < self.max_seen:
                    self.seen.append(Seen(query, params, headers, body, fault))
        if fault.kind == "delay" and (self._stop.wait(fault.seconds) or _hung_up(conn)):
            return False  # forwarded only if the client still waits
        if fault.kind == "status_503":
            return _answer(conn, 503, b"Service Unavailable\n")
        if fault.kind == "status_200_with_exception":
            return _answer(conn, 200, b"Code: 241. DB::Exception: Memory limit exceeded\n")
        if fault.kind == "status_200_not_clickhouse":
            return _answer(conn, 200, b"Ok.\n", [("Content-Type", "text/plain")])
        if fault.kind == "reset_mid_body":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 30)
            time.sleep(0.05)  # let the headers arrive before the reset
            return _reset(conn)
        if fault.kind == "reset_before_response" and not fault.forward:
            return _reset(conn)
        try:
            status, reply_headers, reply = self._forward(method, target, headers, body)
        except (OSError, http.client.HTTPException):  # server down: the client sees a reset
            return _reset(conn)
        if fault.kind == "reset_before_response":
            return _reset(conn)
        return _answer(conn, status, reply, reply_headers)

    def _forward(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        upstream = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            upstream.request(method, target, body=body, headers={k: v for k, v in headers.items() if k not in _HOP})
            r = upstream.getresponse()
            return r.status, [(k, v) for k, v in r.getheaders() if k.lower() not in _HOP], r.read()
        finally:
            upstream.close()


def _answer(conn: socket.socket, status: int, body: bytes, headers: list[tuple[str, str]] | None = None) -> bool:
    reason = http.client.responses.get(status, "Unknown")
    head = [
        f"HTTP/1.1 {status} {reason}",
        *(f"{k}: {v}" for k, v in headers or []),
        f"Content-Length: {len(body)}",
        "Connection: keep-alive",
    ]
    conn.sendall("\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + body)
    return True


def _reset(conn: socket.socket) -> bool:
    """Close with an RST (SO_LINGER 0) instead of a FIN."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return False


def _hung_up(conn: socket.socket) -> bool:
    """Has the client closed its end (e.g. after its read timeout)?"""
    try:
        readable, _, _ = select.select([conn], [], [], 0)
        return bool(readable) and conn.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):  # reset by the client, or closed by stop()
        return True
