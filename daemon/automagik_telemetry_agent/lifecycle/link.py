"""The channel between the supervisor and each child: configuration down, heartbeat reports up.

One AF_UNIX SOCK_SEQPACKET socketpair per child process (message boundaries, no framing). The child's
end is inherited; its fd number is in ``$AUTOMAGIK_TELEMETRY_REPORT_FD``. Messages are JSON objects
with ``"v": 1``:

* supervisor -> child, first message and after every SIGHUP that changed a live setting:
  ``{"v": 1, "config": {"values": {key: value}, "sources": {key: source}}}``. A child never reads the
  config file itself: it runs with exactly the configuration the supervisor validated, and a restarted
  child gets the supervisor's current one (settings that need a restart stay as they were).
* child -> supervisor, about once a second (:class:`Reporter`) and at once when the child becomes ready:
  ``{"v": 1, "child": "ingest"|"shipper", "pid": int, "ready": bool, "loop_age_s": float,
  "metrics": {...}}``. ``loop_age_s`` is how long ago the child's main loop last made progress
  (:class:`Liveness`); ``metrics`` is the metrics dict of :mod:`.metrics`. A child that cannot go on
  sends one last report with ``"error": "<one line>"`` before it exits (:meth:`SupervisorLink.fail`);
  the supervisor quotes it when it gives up.

The child's side can never hurt the child: sends are non-blocking, a report that does not fit is
dropped and counted (``dropped_reports`` in the next one), and when the supervisor is gone (EPIPE,
end of file) the reporter thread ends quietly. The child also gets the parent-death signal (SIGTERM)
so a ``kill -9`` of the supervisor never leaves it running. A child started without the variable
(tests, manual runs) runs standalone: no reports, configuration from its own file and flags.
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
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .config import AgentConfig

log = logging.getLogger(__name__)

REPORT_FD_ENV = "AUTOMAGIK_TELEMETRY_REPORT_FD"
SUPERVISOR_PID_ENV = "AUTOMAGIK_TELEMETRY_SUPERVISOR_PID"
VERSION = 1
INTERVAL_S = 1.0
READY_POLL_S = 0.05  # how often an ``is_ready`` predicate is asked until it holds
MAX_MESSAGE = 256 * 1024  # a report is a few KiB; a larger one is dropped (truncated JSON)
CONFIG_WAIT_S = 30.0  # a child waits this long for its configuration, then gives up
_GONE = {errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF}
_DROP = {errno.EAGAIN, errno.ENOBUFS, errno.EMSGSIZE, errno.ENOMEM}
PR_SET_PDEATHSIG = 1


class SupervisorGone(RuntimeError):
    """The supervisor exited (or never sent the configuration): the child has nothing to do."""


# ---------------------------------------------------------------------------------------------- liveness
class Liveness:
    """How long ago a child's main loop last made progress: the ``loop_age_s`` of its reports.

    Threads call :meth:`beat` when they make progress, and wrap a wait they know the bound of in
    :meth:`waiting`: while a declared wait runs, the process counts as alive until the wait's bound,
    so an HTTP request within its timeouts or a 60 s retry backoff is not taken for a hang, and a
    request that outlives its timeouts is. The supervisor kills a child whose age exceeds
    ``agent.heartbeat_timeout``.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._last = clock()
        self._waits: dict[object, float] = {}

    def beat(self) -> None:
        now = self._clock()
        with self._lock:
            self._last = max(self._last, now)

    @contextlib.contextmanager
    def waiting(self, seconds: float | None) -> Iterator[None]:
        """Declare a wait of at most ``seconds`` (None: unbounded, which declares nothing)."""
        token = object()
        if seconds is not None:
            with self._lock:
                self._waits[token] = self._clock() + seconds
        try:
            yield
        finally:
            now = self._clock()
            with self._lock:
                self._waits.pop(token, None)
                self._last = max(self._last, now)

    def age(self) -> float:
        now = self._clock()
        with self._lock:
            alive_until = max(self._last, *self._waits.values()) if self._waits else self._last
        return max(0.0, now - alive_until)

    def event(self) -> DeclaredEvent:
        """A threading.Event whose timed waits are declared to this liveness."""
        return DeclaredEvent(self)

    def watch(self, target: Any, bounds: Mapping[str, float]) -> WatchedCalls:
        """``target`` with the methods named in ``bounds`` declared as waits of that many seconds."""
        return WatchedCalls(target, self, bounds)


class DeclaredEvent(threading.Event):
    """``wait(timeout)`` declares the timeout to a :class:`Liveness` (a backoff is a known wait)."""

    def __init__(self, liveness: Liveness) -> None:
        super().__init__()
        self._liveness = liveness

    def wait(self, timeout: float | None = None) -> bool:
        with self._liveness.waiting(timeout):
            return super().wait(timeout)


class WatchedCalls:
    """A proxy: calls of the methods named in ``bounds`` are declared waits; everything else passes through.

    Used on the shipper's sink: an INSERT may legitimately take up to connect + read timeout.
    """

    def __init__(self, target: Any, liveness: Liveness, bounds: Mapping[str, float]) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_liveness", liveness)
        object.__setattr__(self, "_bounds", dict(bounds))

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        bound = self._bounds.get(name)
        if bound is None or not callable(value):
            return value
        liveness = self._liveness

        def call(*args: Any, **kwargs: Any) -> Any:
            with liveness.waiting(bound):
                return value(*args, **kwargs)

        return call

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._target, name, value)


# ---------------------------------------------------------------------------------------------- child side
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
        collect: Callable[[], dict] | None = None,
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

    def report(self, ready: bool, loop_age: float, metrics: dict, **extra: Any) -> bytes:
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


def connect(child: str, env: dict[str, str] | None = None) -> SupervisorLink | None:
    """The link to the supervisor if this process was started by one (else None: standalone).

    Removes the variables from the environment, arms the parent-death signal and waits for the
    configuration. Raises :class:`SupervisorGone` when the supervisor is already gone.
    """
    env = os.environ if env is None else env  # type: ignore[assignment]
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


class ChildStart:
    """How a child process (``ingest``, ``shipper``) begins: find its supervisor, take the configuration it
    hands over (or load its own when started by hand), and end a failed start with the reason told to the
    supervisor as well as printed. Raises :class:`SupervisorGone` if the supervisor is already gone.
    """

    def __init__(self, child: str) -> None:
        self.link = connect(child)

    def config(self, load: Callable[[], Mapping[str, Any]]) -> Mapping[str, Any]:
        """The supervisor's effective configuration, else ``load()`` (may raise ConfigError)."""
        if self.link is not None and self.link.config is not None:
            return self.link.config
        return load()

    def fail(self, code: int, message: str) -> int:
        """The supervisor quotes ``message`` when it gives up on this child; returns ``code`` to exit with."""
        from .exitcodes import die

        if self.link is not None:
            self.link.fail(message)
        return die(code, message)


class Reporter(threading.Thread):
    """The child's reporter thread: a report about every second; configuration updates handed to ``on_config``.

    ``loop_age``: seconds since the main loop's last progress. ``collect``: the metrics dict (an
    exception there costs the metrics of one report, never the report or the child).
    """

    def __init__(
        self,
        link: SupervisorLink,
        loop_age: Callable[[], float],
        collect: Callable[[], dict] | None,
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
        metrics: dict = {}
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


def parse_config_message(data: bytes) -> AgentConfig | None:
    try:
        message = json.loads(data)
        config = message["config"]
        if message.get("v") != VERSION or not isinstance(config["values"], dict):
            return None
        return AgentConfig(dict(config["values"]), dict(config.get("sources") or {}))
    except (ValueError, KeyError, TypeError):
        return None


# ---------------------------------------------------------------------------------------------- supervisor side
def config_message(config: Mapping[str, Any]) -> bytes:
    sources = getattr(config, "sources", {})
    return json.dumps(
        {"v": VERSION, "config": {"values": dict(config.items()), "sources": dict(sources)}}, separators=(",", ":")
    ).encode()


def parse_report(data: bytes) -> dict[str, Any] | None:
    """A validated child report, or None (a malformed one is ignored, never trusted)."""
    try:
        report = json.loads(data)
    except ValueError:
        return None
    if (
        not isinstance(report, dict)
        or report.get("v") != VERSION
        or not isinstance(report.get("child"), str)
        or not isinstance(report.get("pid"), int)
        or not isinstance(report.get("ready"), bool)
    ):
        return None
    age = report.get("loop_age_s")
    if isinstance(age, bool) or not isinstance(age, int | float) or not age >= 0:
        return None
    if not isinstance(report.get("metrics"), dict):
        report["metrics"] = {}
    if "error" in report and not isinstance(report["error"], str):
        del report["error"]
    return report


class ReportChannel:
    """The supervisor's end of one child's channel (a new one for every child process)."""

    def __init__(self) -> None:
        self.sock, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.setblocking(False)
        os.set_inheritable(child.fileno(), True)
        self._child: socket.socket | None = child
        self.closed = False

    @property
    def child_fd(self) -> int:
        assert self._child is not None
        return self._child.fileno()

    def spawned(self) -> None:
        """The child has its copy: close ours (so that its death reads as end of file here)."""
        if self._child is not None:
            self._child.close()
            self._child = None

    def fileno(self) -> int:
        return self.sock.fileno()

    def send_config(self, config: Mapping[str, Any]) -> bool:
        try:
            self.sock.send(config_message(config), socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            return True
        except OSError as exc:
            log.warning("cannot send the configuration to a child: %s", exc.strerror)
            return False

    def receive(self) -> list[dict[str, Any]]:
        """Every report waiting (non-blocking); sets :attr:`closed` at end of file."""
        reports = []
        while not self.closed:
            try:
                data = self.sock.recv(MAX_MESSAGE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.closed = True
                break
            if not data:
                self.closed = True
                break
            report = parse_report(data)
            if report is not None:
                reports.append(report)
        return reports

    def close(self) -> None:
        self.spawned()
        self.sock.close()
        self.closed = True
