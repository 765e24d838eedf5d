"""The supervisor's control socket: one JSON line request, one JSON line answer.

AF_UNIX SOCK_STREAM at ``socket.control_path`` (default ``control.sock`` next to ``socket.path``),
mode 0600: only the agent's user (and root) may ask. Requests:

* ``{"cmd": "status"}`` -> ``{"ok": true, "status": {...}}`` (pid, uptime, state, children, metrics
  summary, a few settings; docs/operations.md);
* anything else -> ``{"ok": false, "error": "..."}``.

:class:`ControlServer` runs inside the supervisor's selector loop: non-blocking, at most
``MAX_CONNECTIONS`` clients, a request bounded to ``MAX_REQUEST`` bytes, idle connections closed
after ``IDLE_TIMEOUT_S``, so a stuck or hostile client can never stall the supervisor.
:func:`request` is the client (``automagik-telemetry status``, ``doctor``).
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import stat
import time
from collections.abc import Callable
from typing import Any

from ..unix_socket import bind_unix

__all__ = ["ControlError", "ControlServer", "request"]

MAX_ANSWER = 4 * 1024 * 1024
MAX_REQUEST = 64 * 1024
MAX_CONNECTIONS = 16
IDLE_TIMEOUT_S = 5.0


class ControlError(OSError):
    """Nobody answers on the control socket (agent not running), or the answer is not one JSON line."""


def request(path: str, message: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Send ``message`` as one JSON line to the control socket at ``path``; return the one-line answer."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except OSError as exc:
            raise ControlError(exc.errno, f"nothing answers on {path}: {exc.strerror}") from None
        sock.sendall(json.dumps(message).encode() + b"\n")
        buf = bytearray()
        while b"\n" not in buf and len(buf) < MAX_ANSWER:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    except TimeoutError:
        raise ControlError(f"the agent did not answer on {path} within {timeout:g}s") from None
    finally:
        sock.close()
    try:
        answer = json.loads(bytes(buf).split(b"\n", 1)[0])
    except ValueError:
        raise ControlError(f"the agent's answer on {path} is not JSON: {bytes(buf[:100])!r}") from None
    if not isinstance(answer, dict):
        raise ControlError(f"the agent's answer on {path} is not a JSON object")
    return answer


class _Conn:
    __slots__ = ("inbuf", "opened", "outbuf", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = b""
        self.opened = time.monotonic()


class ControlServer:
    """The server side, driven by the supervisor's selector (:meth:`handle` for every ready key)."""

    def __init__(
        self, path: str, selector: selectors.BaseSelector, answer: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> None:
        self.path = path
        self.selector = selector
        self.answer = answer
        self.sock = _bind(path)
        self.selector.register(self.sock, selectors.EVENT_READ, self)
        self._conns: dict[int, _Conn] = {}

    def handle(self, key: selectors.SelectorKey, mask: int) -> None:
        if key.fileobj is self.sock:
            self._accept()
            return
        conn = self._conns.get(key.fd)
        if conn is None:
            return
        if mask & selectors.EVENT_READ:
            self._read(conn)
        if mask & selectors.EVENT_WRITE and conn.sock.fileno() >= 0:
            self._write(conn)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(self._conns) >= MAX_CONNECTIONS:
                sock.close()
                continue
            sock.setblocking(False)
            conn = _Conn(sock)
            self._conns[sock.fileno()] = conn
            self.selector.register(sock, selectors.EVENT_READ, self)

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(MAX_REQUEST)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            self._close(conn)
            return
        conn.inbuf += data
        if b"\n" not in conn.inbuf:
            if len(conn.inbuf) > MAX_REQUEST:
                self._reply(conn, {"ok": False, "error": f"request longer than {MAX_REQUEST} bytes"})
            return
        line = bytes(conn.inbuf).split(b"\n", 1)[0]
        try:
            message = json.loads(line)
            if not isinstance(message, dict):
                raise ValueError("not an object")
        except ValueError:
            self._reply(conn, {"ok": False, "error": "the request is not one JSON object on one line"})
            return
        try:
            answer = self.answer(message)
        except Exception as exc:  # an answer that fails must not take the supervisor down
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        self._reply(conn, answer)

    def _reply(self, conn: _Conn, answer: dict[str, Any]) -> None:
        conn.outbuf = json.dumps(answer, default=str).encode() + b"\n"
        self.selector.modify(conn.sock, selectors.EVENT_WRITE, self)
        self._write(conn)

    def _write(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.outbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        conn.outbuf = conn.outbuf[sent:]
        if not conn.outbuf:
            self._close(conn)

    def _close(self, conn: _Conn) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(conn.sock)
        self._conns.pop(conn.sock.fileno(), None)
        conn.sock.close()

    def expire(self, now: float | None = None) -> None:
        """Close connections open longer than IDLE_TIMEOUT_S (called from the supervisor's timers)."""
        now = time.monotonic() if now is None else now
        for conn in list(self._conns.values()):
            if now - conn.opened > IDLE_TIMEOUT_S:
                self._close(conn)

    def close(self) -> None:
        for conn in list(self._conns.values()):
            self._close(conn)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(self.sock)
        self.sock.close()
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)


def _bind(path: str) -> socket.socket:
    """Listen on ``path`` (mode 0600), replacing a stale socket; ConfigError (exit 2) if it cannot."""
    sock = bind_unix(
        path,
        socket.SOCK_STREAM,
        0o600,
        what="control socket",
        setting="socket.control_path",
        dir_mode=0o750,
        backlog=MAX_CONNECTIONS,
    )
    sock.setblocking(False)
    return sock
