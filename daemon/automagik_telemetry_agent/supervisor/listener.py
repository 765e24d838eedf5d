"""The clients' listening socket, owned by the supervisor and lent to every ingest process.

The supervisor creates it (``socket.path``, ``socket.mode``) or takes it from systemd
(``LISTEN_FDS``: a ``.socket`` unit with ``ListenSequentialPacket=``), and passes the fd to each ingest
incarnation. Because the socket outlives ingest, a client that connects while ingest restarts waits in
the listen backlog and is served by the next ingest, and the path never changes inode. The socket is
unlinked at exit only if this supervisor created it; a socket-activated path belongs to systemd.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass

from ..config import ConfigError
from ..unix_socket import bind_unix


@dataclass
class ListenSocket:
    sock: socket.socket
    path: str
    activated: bool  # from systemd: never unlink the path

    @property
    def fd(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        """Close it, and remove the path if this process created it."""
        self.sock.close()
        if not self.activated:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


def from_systemd(fds: list[int], path: str) -> ListenSocket:
    """The one socket systemd passed; ConfigError (exit 2) if it is not what clients speak."""
    if len(fds) != 1:
        raise ConfigError(
            f"systemd passed {len(fds)} sockets (LISTEN_FDS); the agent takes exactly one: a "
            "single ListenSequentialPacket= in the .socket unit"
        )
    sock = socket.socket(fileno=fds[0])
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_SEQPACKET:
        sock.detach()
        raise ConfigError(
            "the socket from systemd is not an AF_UNIX SOCK_SEQPACKET socket: use "
            "ListenSequentialPacket= in the .socket unit"
        )
    name = sock.getsockname()
    bound = name.decode(errors="replace") if isinstance(name, bytes) else name
    return ListenSocket(sock, bound or path, activated=True)


def create(path: str, mode: int) -> ListenSocket:
    """Bind ``path`` (replacing a stale socket file nobody listens on) with ``mode``; ConfigError on failure."""
    return ListenSocket(bind_unix(path, socket.SOCK_SEQPACKET, mode), path, activated=False)
