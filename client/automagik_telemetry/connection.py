"""The non-blocking ``SOCK_SEQPACKET`` connection to the agent, used by the sender thread only.

Connects lazily and, after a failure or a disconnect, no sooner than an exponential backoff allows
(``BACKOFF_START`` doubling up to ``BACKOFF_CAP``; an ACK from the agent resets it). Numbers the
messages it sends: ``next_seq`` is the sequence number the next message must carry, 1 on a fresh
connection. Never blocks except in ``wait``, which polls for at most the time it is given.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import select
import socket
import time

from .protocol import MAX_MESSAGE_SIZE

BACKOFF_START = 0.05
BACKOFF_CAP = 2.0


logger = logging.getLogger("automagik_telemetry")  # never captured by our LoggingHandler (no loop)


def explain_connect_error(path: str, exc: OSError) -> str:
    """Why connecting to the agent's socket failed, and what to do, in one line."""
    if exc.errno == errno.ENOENT:
        return (
            f"no agent socket at {path}: is the agent running (systemctl status automagik-telemetry)? "
            "Else set AUTOMAGIK_TELEMETRY_SOCKET to its socket.path"
        )
    if exc.errno == errno.ECONNREFUSED:
        return f"nobody listens on {path} (a stale socket file): start the agent"
    if exc.errno in (errno.EACCES, errno.EPERM):
        try:
            group = grp.getgrgid(os.stat(path).st_gid).gr_name
        except (OSError, KeyError):
            group = "the socket's group"
        return (
            f"permission denied connecting to {path}: run the application as a member of group {group} "
            "(the agent's socket.mode lets that group connect)"
        )
    if exc.errno == errno.EAGAIN:
        return f"the agent's socket {path} has a full backlog: the agent is overloaded or stopped"
    return f"cannot connect to the agent at {path}: {exc.strerror or exc}"


class AgentConnection:
    """One agent socket at a time, reconnected on demand; counts connect failures and reconnects."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._sock: socket.socket | None = None
        self._poller: select.poll | None = None
        self._seq = 0
        self._ever_connected = False
        self._backoff = BACKOFF_START
        #: ``time.monotonic()`` before which ``connect`` does not try.
        self.next_attempt = 0.0
        self._recv_buffer = bytearray(MAX_MESSAGE_SIZE)
        self.connect_errors = 0
        self.reconnects = 0
        #: Why the last connect failed, in words ("" while connected or before the first try).
        self.last_connect_error = ""

    @property
    def connected(self) -> bool:
        return self._sock is not None

    @property
    def sock(self) -> socket.socket | None:
        """The socket while connected (tests tune its buffer)."""
        return self._sock

    @property
    def next_seq(self) -> int:
        """The seq of the next message sent on this connection."""
        return self._seq + 1

    # -- connecting ------------------------------------------------------------------------------

    def connect(self) -> bool:
        """Try to connect unless the backoff forbids it yet; True when connected now."""
        now = time.monotonic()
        if now < self.next_attempt:
            return False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            sock.connect(self._path)
        except OSError as exc:
            sock.close()
            self.connect_errors += 1
            self._back_off(now)
            self._failed(exc)
            return False
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        self._sock, self._poller = sock, poller
        self._seq = 0
        if self._ever_connected:
            self.reconnects += 1
        self._ever_connected = True
        if self.last_connect_error:
            logger.info("automagik-telemetry: connected to the agent at %s", self._path)
            self.last_connect_error = ""
        return True

    def _failed(self, exc: OSError) -> None:
        """Say once per kind of failure why records are not reaching the agent (then the counters tell)."""
        why = explain_connect_error(self._path, exc)
        if why != self.last_connect_error:
            logger.warning("automagik-telemetry: %s; records wait in memory (bounded queue) meanwhile", why)
        self.last_connect_error = why

    def close(self) -> None:
        """Close the connection (if any); the next ``connect`` waits for the backoff."""
        self.abandon()
        self._back_off(time.monotonic())

    def abandon(self) -> None:
        """Close this process's socket fd and forget it; nothing else (used in a forked child too)."""
        sock, self._sock, self._poller = self._sock, None, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def agent_is_healthy(self) -> None:
        """The agent answered: a later disconnect retries quickly again."""
        self._backoff = BACKOFF_START

    def _back_off(self, now: float) -> None:
        self.next_attempt = now + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_CAP)

    # -- messages --------------------------------------------------------------------------------

    def send(self, message: bytes) -> None:
        """Send one message, encoded with ``next_seq``; raises ``OSError`` (``EAGAIN`` and ``ENOBUFS``
        mean "no room now, retry"). The seq is used up only when the kernel took the message."""
        sock = self._sock
        if sock is None:
            raise OSError(errno.ENOTCONN, "not connected to the agent")
        sock.send(message, socket.MSG_NOSIGNAL)
        self._seq += 1

    def receive(self) -> memoryview | None:
        """The next reply, or None if none is waiting; empty when the agent closed the connection.

        Raises ``OSError`` when the connection failed. The view is valid until the next call.
        """
        sock = self._sock
        if sock is None:
            return None
        try:
            size = sock.recv_into(self._recv_buffer)
        except (BlockingIOError, InterruptedError):
            return None
        return memoryview(self._recv_buffer)[:size]

    def wait(self, timeout: float, *, writable: bool = False) -> None:
        """Block up to ``timeout`` seconds until a reply arrives (or, with ``writable``, there is room)."""
        poller, sock = self._poller, self._sock
        if poller is None or sock is None:
            return
        poller.modify(sock.fileno(), (select.POLLIN | select.POLLOUT) if writable else select.POLLIN)
        poller.poll(timeout * 1000)
