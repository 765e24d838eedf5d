"""The listening sockets, owned by the supervisor: the clients' socket lent to every ingest process, and
the OTLP/HTTP receiver's (TCP, and optionally a Unix stream path) lent to every ``otlp`` process.

The supervisor creates it (``socket.path``, ``socket.mode``) or takes it from systemd
(``LISTEN_FDS``: a ``.socket`` unit with ``ListenSequentialPacket=``), and passes the fd to each ingest
incarnation. Because the socket outlives ingest, a client that connects while ingest restarts waits in
the listen backlog and is served by the next ingest, and the path never changes inode. The socket is
unlinked at exit only if this supervisor created it; a socket-activated path belongs to systemd.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
from dataclasses import dataclass

from ..config import AgentConfig, ConfigError
from ..config.values import split_listen
from ..unix_socket import bind_unix

log = logging.getLogger(__name__)
OTLP_BACKLOG = 1024  # exporters connecting while the receiver restarts wait here


@dataclass
class ListenSocket:
    sock: socket.socket
    path: str
    activated: bool  # from systemd: never unlink the path
    tcp: bool = False  # an OTLP TCP listener: ``path`` is its host:port, nothing to unlink

    @property
    def fd(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        """Close it, and remove the path if this process created it."""
        self.sock.close()
        if not self.activated and not self.tcp:
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


def create_otlp(config: AgentConfig) -> list[ListenSocket]:
    """The OTLP receiver's listening sockets (``otlp.listen``, ``otlp.unix_path``); ConfigError (exit 2)
    naming the setting when one cannot be bound. Port 0 binds any free port (logged)."""
    sockets: list[ListenSocket] = []
    try:
        if config["otlp.listen"]:
            sockets.append(
                _tcp(config["otlp.listen"], secured=bool(config["otlp.token_file"] or config["otlp.tls_cert"]))
            )
        if config["otlp.unix_path"]:
            try:
                sock = bind_unix(config["otlp.unix_path"], socket.SOCK_STREAM, config["socket.mode"])
            except ConfigError as exc:
                raise ConfigError(f"otlp.unix_path: {exc}") from None
            sockets.append(ListenSocket(sock, config["otlp.unix_path"], activated=False))
    except BaseException:
        for s in sockets:
            s.close()
        raise
    return sockets


def _tcp(listen: str, secured: bool) -> ListenSocket:
    host, port = split_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=OTLP_BACKLOG)
    except OSError as exc:
        raise ConfigError(
            f"otlp.listen {listen}: cannot listen: {exc.strerror or exc} (choose another address with "
            '--otlp-listen, or "" to turn the OTLP receiver off)'
        ) from None
    sock.set_inheritable(False)
    bound_host, bound_port = sock.getsockname()[:2]
    address = f"[{bound_host}]:{bound_port}" if family == socket.AF_INET6 else f"{bound_host}:{bound_port}"
    if not _loopback(host) and not secured:
        log.warning(
            "the OTLP receiver listens on %s, beyond loopback, with neither otlp.token_file nor otlp.tls_cert: "
            "anyone who can reach it can write telemetry",
            address,
        )
    return ListenSocket(sock, address, activated=False, tcp=True)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
