"""Unix sockets the agent listens on: one binder for the clients' socket, the control socket, the query socket.

:data:`~.config.SUN_PATH_MAX` is the longest path an ``AF_UNIX`` address holds; configuration checks and
every binder use that one value.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat

from .config import SUN_PATH_MAX, ConfigError

BACKLOG = 4096


def path_fits(path: str) -> bool:
    """True when ``path`` fits an AF_UNIX address."""
    return len(os.fsencode(path)) <= SUN_PATH_MAX


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
