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
import stat
from dataclasses import dataclass

from .config import ConfigError

BACKLOG = 4096


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


def bind_unix(
    path: str,
    kind: int,
    mode: int,
    *,
    what: str = "socket",
    setting: str = "--socket",
    dir_mode: int = 0o755,
    backlog: int = BACKLOG,
) -> socket.socket:
    """Listen on a Unix socket of type ``kind`` at ``path``, born with ``mode``; ConfigError (one line) if not.

    Creates the directory if needed. A socket file nobody listens on is stale (a crashed agent's) and is
    replaced; a live listener or a file that is not a socket is refused, naming ``setting`` as the way
    out. The umask is set around bind() so the socket never exists with wider permissions than ``mode``.
    The clients' socket, the control socket and a standalone ingest all bind this way.
    """
    directory = os.path.dirname(path) or "."
    try:
        os.makedirs(directory, mode=dir_mode, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the {what} directory {directory}: {exc.strerror}") from None
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise ConfigError(f"{what} path {path} exists and is not a socket: remove it or choose another {setting}")
        probe = socket.socket(socket.AF_UNIX, kind)
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # stale: nobody listens
        else:
            raise ConfigError(f"{what} path {path} is in use by another running agent: stop it first")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, kind)
    old = os.umask(0o777 & ~mode)
    try:
        sock.bind(path)
        os.chmod(path, mode)  # the umask cannot grant bits; chmod makes the mode exact
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on the {what} {path}: {exc.strerror}") from None
    finally:
        os.umask(old)
    return sock
