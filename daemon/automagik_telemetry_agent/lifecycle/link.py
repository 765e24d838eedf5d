"""A child's end of the channel to its supervisor (:mod:`.channel`): configuration in, reports out.

The child's side can never hurt the child: sends are non-blocking, a report that does not fit is
dropped and counted (``dropped_reports`` in the next one), and when the supervisor is gone (EPIPE,
end of file) the reporter thread ends quietly. The child also arms the parent-death signal
(SIGTERM) so a ``kill -9`` of the supervisor never leaves it running. A child started without the
channel's variable (tests, manual runs) runs standalone: no reports, configuration from its own file
and flags.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, MutableMapping
from typing import Any

from ..config import AgentConfig
from .channel import MAX_MESSAGE, REPORT_FD_ENV, SUPERVISOR_PID_ENV, VERSION, parse_config_message

log = logging.getLogger(__name__)

INTERVAL_S = 1.0
READY_POLL_S = 0.05  # how often an ``is_ready`` predicate is asked until it holds
CONFIG_WAIT_S = 30.0  # a child waits this long for its configuration, then gives up
_DROP = {errno.EAGAIN, errno.ENOBUFS, errno.EMSGSIZE, errno.ENOMEM}
PR_SET_PDEATHSIG = 1


class SupervisorGone(RuntimeError):
    """The supervisor exited (or never sent the configuration): the child has nothing to do."""


def arm_parent_death(supervisor_pid: int) -> None:
    """SIGTERM this process when the supervisor dies (Linux PR_SET_PDEATHSIG); SupervisorGone if it already has."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != supervisor_pid:  # it died before the signal was armed
        raise SupervisorGone("the supervisor exited before this child started")


class SupervisorLink:
    """A child's end of the channel: its configuration, its reporter, its last words."""

    def __init__(self, sock: socket.socket, child: str) -> None:
        self.sock = sock
        self.child = child
        self.config: AgentConfig | None = None
        self.reporter: Reporter | None = None

    def receive_config(self, timeout: float = CONFIG_WAIT_S) -> AgentConfig:
        """Block until the supervisor's configuration message arrives (it is sent right after the spawn)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SupervisorGone("no configuration from the supervisor")
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                continue
            try:
                data = self.sock.recv(MAX_MESSAGE)
            except OSError as exc:
                raise SupervisorGone(str(exc)) from None
            if not data:
                raise SupervisorGone("the supervisor closed the channel")
            config = parse_config_message(data)
            if config is not None:
                self.config = config
                return config

    def start_reporting(
        self,
        loop_age: Callable[[], float],
        collect: Callable[[], dict[str, Any]] | None = None,
        on_config: Callable[[AgentConfig], None] | None = None,
        is_ready: Callable[[], bool] | None = None,
    ) -> Reporter:
        """Start the reporter thread. Ready comes from :meth:`ready`, or from ``is_ready`` (polled)."""
        self.reporter = Reporter(self, loop_age, collect, on_config, is_ready)
        self.reporter.start()
        return self.reporter

    def ready(self) -> None:
        """Tell the supervisor now that this child is ready (then every report says so)."""
        if self.reporter is not None:
            self.reporter.set_ready()
        else:
            self.send(self.report(ready=True, loop_age=0.0, metrics={}))

    def fail(self, message: str) -> None:
        """Last words before exiting: one line the supervisor quotes when it gives up on this child."""
        message = " ".join(message.split())[:1000]
        with contextlib.suppress(OSError):
            self.sock.settimeout(1.0)
            self.sock.send(self.report(ready=False, loop_age=0.0, metrics={}, error=message))

    def report(self, ready: bool, loop_age: float, metrics: dict[str, Any], **extra: Any) -> bytes:
        return json.dumps(
            {
                "v": VERSION,
                "child": self.child,
                "pid": os.getpid(),
                "ready": ready,
                "loop_age_s": round(loop_age, 3),
                "metrics": metrics,
                **extra,
            },
            separators=(",", ":"),
            default=str,
        ).encode()

    def send(self, data: bytes) -> bool | None:
        """Non-blocking send: True sent, False dropped (no room), None the supervisor is gone."""
        try:
            self.sock.send(data, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            return True
        except OSError as exc:
            if exc.errno in _DROP:
                return False
            return None


def connect(child: str, env: MutableMapping[str, str] | None = None) -> SupervisorLink | None:
    """The link to the supervisor if this process was started by one (else None: standalone).

    Removes the variables from the environment, arms the parent-death signal and waits for the
    configuration. Raises :class:`SupervisorGone` when the supervisor is already gone.
    """
    env = os.environ if env is None else env
    fd = env.pop(REPORT_FD_ENV, None)
    supervisor = env.pop(SUPERVISOR_PID_ENV, None)
    if fd is None or not fd.isdigit():
        return None
    if supervisor and supervisor.isdigit():
        arm_parent_death(int(supervisor))
    sock = socket.socket(fileno=int(fd))
    os.set_inheritable(sock.fileno(), False)
    link = SupervisorLink(sock, child)
    link.receive_config()
    return link


class Reporter(threading.Thread):
    """The child's reporter thread: a report about every second; configuration updates handed to ``on_config``.

    ``loop_age``: seconds since the main loop's last progress. ``collect``: the metrics dict (an
    exception there costs the metrics of one report, never the report or the child).
    """

    def __init__(
        self,
        link: SupervisorLink,
        loop_age: Callable[[], float],
        collect: Callable[[], dict[str, Any]] | None,
        on_config: Callable[[AgentConfig], None] | None,
        ready_when: Callable[[], bool] | None = None,
    ) -> None:
        super().__init__(name="reporter", daemon=True)
        self.link = link
        self.loop_age = loop_age
        self.collect = collect
        self.on_config = on_config
        self.ready_when = ready_when
        self.is_ready = False
        self.dropped = 0
        self._send_lock = threading.Lock()
        self._gone = False
        self._collect_failed = False

    def set_ready(self) -> None:
        self.is_ready = True
        self.send_report()

    def send_report(self) -> None:
        if self._gone:
            return
        metrics: dict[str, Any] = {}
        if self.collect is not None:
            try:
                metrics = self.collect()
            except Exception as exc:  # never let metrics take the heartbeat down
                if not self._collect_failed:
                    log.warning(
                        "cannot collect this process's metrics (%s: %s); reporting without them",
                        type(exc).__name__,
                        exc,
                    )
                    self._collect_failed = True
        with self._send_lock:
            extra = {"dropped_reports": self.dropped} if self.dropped else {}
            data = self.link.report(self.is_ready, self.loop_age(), metrics, **extra)
            sent = self.link.send(data)
            if sent is None:
                self._gone = True
            elif not sent:
                self.dropped += 1

    def run(self) -> None:
        sock = self.link.sock
        next_report = 0.0
        while not self._gone:
            now = time.monotonic()
            if not self.is_ready and self.ready_when is not None and self.ready_when():
                self.is_ready = True
                next_report = now  # say it at once
            if now >= next_report:
                self.send_report()
                next_report = now + INTERVAL_S
            wait = next_report - time.monotonic()
            if not self.is_ready and self.ready_when is not None:
                wait = min(wait, READY_POLL_S)
            try:
                readable, _, _ = select.select([sock], [], [], max(0.0, wait))
            except (OSError, ValueError):
                return
            if readable:
                self._receive()

    def _receive(self) -> None:
        try:
            data = self.link.sock.recv(MAX_MESSAGE, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            self._gone = True
            return
        if not data:
            self._gone = True  # the supervisor is gone; the parent-death signal stops this process
            return
        config = parse_config_message(data)
        if config is not None and self.on_config is not None:
            try:
                self.on_config(config)
            except Exception:
                log.exception("cannot apply the configuration the supervisor sent")
