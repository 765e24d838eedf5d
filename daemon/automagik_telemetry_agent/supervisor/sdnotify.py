"""systemd's service protocols, implemented here (no dependency on systemd-python): sd_notify and sd_listen_fds.

**Notify** (sd_notify(3)): one datagram of newline-separated ``KEY=VALUE`` lines to the AF_UNIX socket
named by ``$NOTIFY_SOCKET`` (a path, or an abstract name written with a leading ``@``). The supervisor
sends ``READY=1`` once clients can connect and the WAL is open, ``STATUS=`` with a short live summary,
``WATCHDOG=1`` every ``WATCHDOG_USEC``/2 while its children are healthy, ``RELOADING=1`` ... ``READY=1``
around a SIGHUP, and ``STOPPING=1`` when it starts to stop. Without ``$NOTIFY_SOCKET`` every call is a
no-op. A send never blocks and never raises: the agent must not stall because systemd is busy.

**Socket activation** (sd_listen_fds(3)): systemd passes listening sockets as fds 3, 4, ... with
``LISTEN_FDS=<count>`` and ``LISTEN_PID=<our pid>`` (anything else is meant for another process).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Mapping, MutableMapping

log = logging.getLogger(__name__)

SD_LISTEN_FDS_START = 3


def _address(value: str) -> str | bytes | None:
    """The sockaddr of ``$NOTIFY_SOCKET``: a path, or an abstract name (``@name`` -> ``\\0name``)."""
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # vsock and other forms: not for this agent


class Notifier:
    """The supervisor's side of sd_notify; inert when not started by systemd (no ``$NOTIFY_SOCKET``).

    ``watchdog_interval_s``: how often to send ``WATCHDOG=1`` (half of ``WATCHDOG_USEC``), or None when
    the watchdog is off or meant for another process (``WATCHDOG_PID``).
    """

    def __init__(self, env: Mapping[str, str] | None = None, pid: int | None = None) -> None:
        env = os.environ if env is None else env
        pid = os.getpid() if pid is None else pid
        self.address = _address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval_s: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        watchdog_pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not watchdog_pid or watchdog_pid == str(pid)):
            self.watchdog_interval_s = int(usec) / 2e6
        self._sock: socket.socket | None = None
        self.sent = 0
        self.failed = 0

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send ``lines`` as one datagram; False if not sent (no socket, or systemd not listening)."""
        if self.address is None:
            return False
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)
        try:
            self._sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            self.failed += 1
            if self.failed == 1:
                log.warning("cannot notify systemd on %s: %s", os.environ.get("NOTIFY_SOCKET", "?"), exc)
            return False
        self.sent += 1
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def reloading(self) -> bool:
        # MONOTONIC_USEC: systemd >= 253 (Type=notify-reload) matches the reload with it; older ones ignore it.
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self, status: str = "") -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def listen_fds(env: MutableMapping[str, str] | None = None, pid: int | None = None, unset: bool = True) -> list[int]:
    """The listening fds systemd passed to this process (sd_listen_fds), set close-on-exec.

    Empty when ``LISTEN_PID`` names another process or ``LISTEN_FDS`` is missing or malformed. With
    ``unset`` the three variables are removed, so that child processes never take them for their own.
    """
    env = os.environ if env is None else env
    pid = os.getpid() if pid is None else pid
    count, owner = env.get("LISTEN_FDS", ""), env.get("LISTEN_PID", "")
    if unset:
        for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            env.pop(name, None)
    if not count.isdigit() or owner != str(pid):
        return []
    fds = list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count)))
    for fd in fds:
        with contextlib.suppress(OSError):
            os.set_inheritable(fd, False)
    return fds
