"""``automagik-telemetry agent``: the supervisor process (after gunicorn's arbiter and supervisord).

It owns what must outlive a child: the clients' listening socket (:mod:`.listener`), the
validated configuration, the control socket (:mod:`.control`), the metrics endpoint
(``metrics.exposition``) and the conversation with systemd (:mod:`.sdnotify`). It runs two children:

* ``ingest`` (ingest + WAL writer), which gets the listening socket's fd, and
* ``shipper`` (WAL -> ClickHouse or the embedded store), unless ``sink = "none"``; started once ingest
  is ready.

State: one dict of :class:`Child` records, each an explicit state machine (:mod:`.states`). One
thread, one selector loop; every event is handled by one small ``handle_*`` method:

* signals: the handlers only queue (``signal.set_wakeup_fd``); the loop drains the queue
  (:meth:`Supervisor.handle_sigterm`, ``handle_sighup``, ...);
* child reports (``lifecycle.channel``): heartbeats with ``loop_age_s`` and metrics; ``ready`` moves a child
  STARTING -> RUNNING; the first ingest READY is the agent's ``READY=1`` (and ``ready`` on stderr);
* child exits (reaped every turn): restart with backoff, or give up (:class:`~.states.RestartPolicy`);
* control requests; and timers: restarts due, heartbeat timeouts (SIGKILL + restart), the stop
  deadline, ``WATCHDOG=1`` while every child is healthy, ``STATUS=`` every few seconds.

Exit codes: 0 after SIGTERM/SIGINT, 3 (CHILD_FAILED) when a child cannot start, 74 when ingest reported
that the WAL's storage failed, 2 for a configuration problem found before the children start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import exitcodes
from ..config import AgentConfig, ConfigError, changed_settings
from ..logs import set_level
from ..metrics.exposition import AgentMetrics
from ..units import size_text
from .child import ChildProcess
from .control import ControlServer
from .listener import ListenSocket
from .sdnotify import Notifier
from .states import ALIVE, Event, RestartPolicy, State, transition

log = logging.getLogger(__name__)

STOP_MARGIN_S = 2.0  # after agent.stop_timeout, children still running are killed
STATUS_INTERVAL_S = 5.0  # STATUS= refresh
FRESH_S = 5.0  # a child silent longer than this (or heartbeat_timeout/2) is not healthy: no WATCHDOG=1
TICK_S = 0.5  # the loop wakes at least this often
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)


@dataclass
class Child:
    """What the supervisor knows of one child (the current process, and the history that matters)."""

    name: str
    args: list[str]  # the subcommand and its arguments
    pass_fds: tuple[int, ...] = ()
    state: State = State.EXITED
    process: ChildProcess | None = None
    pid: int | None = None  # the current or last process
    spawns: int = 0
    failures: int = 0  # consecutive unasked deaths (backoff)
    failed_starts: int = 0  # consecutive deaths before READY (give up at RestartPolicy.start_retries)
    started_at: float = 0.0
    ready_at: float | None = None
    backoff_until: float = 0.0
    last_report: float | None = None
    loop_age: float = 0.0
    kill_reason: str = ""  # set when the supervisor killed it as hung
    last_error: str = ""  # the process's last words (report "error")
    exit_code: int | None = None
    why: str = ""  # why it is FATAL

    @property
    def restarts(self) -> int:
        return max(0, self.spawns - 1)

    def silence(self, now: float) -> float:
        """Seconds since the child last proved progress: report age plus the loop age it reported."""
        since = self.last_report if self.last_report is not None else self.started_at
        return (now - since) + (self.loop_age if self.last_report is not None else 0.0)


@dataclass
class _Timers:
    next_watchdog: float = 0.0
    next_status: float = 0.0
    stop_deadline: float | None = None


@dataclass
class _Rate:
    """Spans per second for STATUS=, from two samples of the received counter."""

    at: float = 0.0
    total: int = 0
    per_s: float = 0.0


class Supervisor:
    def __init__(
        self,
        config: AgentConfig,
        reload: Callable[[], AgentConfig],
        listener: ListenSocket,
        notifier: Notifier | None = None,
        policy: RestartPolicy | None = None,
        control_path: str | None = None,
    ) -> None:
        self.config = config  # the effective configuration (live changes applied, the rest as started)
        self.reload = reload
        self.listener = listener
        self.notifier = notifier or Notifier(env={})
        self.policy = policy or RestartPolicy()
        self.control_path = control_path
        self.children: dict[str, Child] = {
            "ingest": Child("ingest", ["ingest", "--listen-fd", str(listener.fd)], (listener.fd,))
        }
        if config["sink"] != "none":
            self.children["shipper"] = Child("shipper", ["shipper"])
        self.state = "starting"
        self.exit_code = exitcodes.OK
        self.started = time.monotonic()
        self.selector = selectors.DefaultSelector()
        self.metrics: AgentMetrics | None = None
        self.control: ControlServer | None = None
        self.timers = _Timers()
        self.rate = _Rate()
        self._signal_r: socket.socket | None = None
        self._signal_w: socket.socket | None = None
        self._announced = False
        self._on_signal: dict[int, Callable[[], None]] = {
            signal.SIGTERM: self.handle_sigterm,
            signal.SIGINT: self.handle_sigint,
            signal.SIGHUP: self.handle_sighup,
            signal.SIGCHLD: self.handle_sigchld,
        }

    # ------------------------------------------------------------------ run
    def run(self) -> int:
        """Start, supervise until stopped, clean up; the exit code."""
        try:
            try:
                self._setup()
            except ConfigError as exc:
                print(f"automagik-telemetry: config error: {exc}", file=sys.stderr)
                return exitcodes.CONFIG
            except MissingExtra as exc:
                print(f"automagik-telemetry: {exc}", file=sys.stderr)
                return exitcodes.UNAVAILABLE
            self.spawn(self.children["ingest"])
            while not self._done():
                self._turn()
            self._log_exit()
            return self.exit_code
        except BaseException:
            log.exception("the supervisor failed; stopping its children")
            self._emergency_stop()
            raise
        finally:
            self._teardown()

    def _setup(self) -> None:
        self._signal_r, self._signal_w = socket.socketpair()
        for s in (self._signal_r, self._signal_w):
            s.setblocking(False)
        signal.set_wakeup_fd(self._signal_w.fileno(), warn_on_full_buffer=False)
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, _queued)  # the C handler writes signum to the wakeup fd: that is the queue
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        self.selector.register(self._signal_r, selectors.EVENT_READ, "signals")
        if self.control_path:
            self.control = ControlServer(self.control_path, self.selector, self.handle_control)
        self.metrics = _agent_metrics(self.config["metrics.listen"])
        if self.metrics is not None:
            self.metrics.serve(self.config["metrics.listen"])
        log.info(
            "supervisor %d: socket %s%s, WAL %s, sink %s",
            os.getpid(),
            self.listener.path,
            " (from systemd)" if self.listener.activated else "",
            self.config["wal.dir"],
            self.config["sink"],
        )

    def _turn(self) -> None:
        for key, mask in self.selector.select(self._timeout()):
            data = key.data
            if data == "signals":
                self._drain_signals()
            elif isinstance(data, Child):
                self.handle_reports(data)
            elif isinstance(data, ControlServer):
                data.handle(key, mask)
        self._reap()
        self._timers(time.monotonic())

    def _timeout(self) -> float:
        """Until the next timer; a timer already past (a watchdog ping waiting for health, a deadline
        already acted on) is re-checked every TICK_S instead of spinning."""
        now = time.monotonic()
        due = [now + TICK_S]
        due += [c.backoff_until for c in self.children.values() if c.state is State.BACKOFF]
        if self.notifier.watchdog_interval_s and (self.timers.next_watchdog > now or self.healthy(now)):
            due.append(self.timers.next_watchdog)
        if self.timers.stop_deadline is not None and self.timers.stop_deadline > now:
            due.append(self.timers.stop_deadline)
        return max(0.0, min(due) - now)

    def _done(self) -> bool:
        return self.state == "stopping" and not any(c.state in ALIVE for c in self.children.values())

    # ------------------------------------------------------------------ signals
    def _drain_signals(self) -> None:
        assert self._signal_r is not None
        try:
            data = self._signal_r.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        for signum in data:
            handler = self._on_signal.get(signum)
            if handler is not None:
                handler()

    def handle_sigterm(self) -> None:
        self.stop("SIGTERM")

    def handle_sigint(self) -> None:
        self.stop("SIGINT")

    def handle_sigchld(self) -> None:
        self._reap()

    def handle_sighup(self) -> None:
        """Reload: live settings change now (in the children too); the others are reported, not applied."""
        if self.state == "stopping":
            return
        self.notifier.reloading()
        try:
            new = self.reload()
        except ConfigError as exc:
            log.error("configuration reload failed, keeping the running configuration: %s", exc)
            self.notifier.ready(self.status_line())
            return
        changed = changed_settings(self.config, new)
        live = [s.key for s in changed if s.live]
        for s in changed:
            if not s.live:
                log.warning("%s changed: needs a restart (systemctl restart automagik-telemetry)", s.key)
        if live:
            values = dict(self.config.items())
            sources = dict(self.config.sources)
            for key in live:
                values[key], sources[key] = new[key], new.sources[key]
            self.config = AgentConfig(values, sources)
            set_level(self.config["log.level"])
            for child in self.children.values():
                if child.state in (State.STARTING, State.RUNNING) and child.process is not None:
                    child.process.channel.send_config(self.config)
            log.info("configuration reloaded: %s", ", ".join(f"{k} = {self.config[k]!r}" for k in live))
        elif not changed:
            log.info("configuration reloaded: nothing changed")
        self.notifier.ready(self.status_line())

    # ------------------------------------------------------------------ children
    def spawn(self, child: Child) -> None:
        """Start a process for ``child`` (EXITED or BACKOFF -> STARTING)."""
        now = time.monotonic()
        child.state = transition(child.state, Event.SPAWN)
        child.started_at, child.ready_at, child.last_report, child.loop_age = now, None, None, 0.0
        child.kill_reason, child.last_error, child.exit_code = "", "", None
        try:
            process = ChildProcess.spawn(child.name, child.args, child.pass_fds)
        except OSError as exc:
            child.why = f"cannot be started: {exc.strerror or exc}"
            child.state = transition(child.state, Event.GIVE_UP)
            self._give_up(child)
            return
        child.process, child.pid = process, process.pid
        child.spawns += 1
        if child.spawns > 1 and self.metrics is not None:
            self.metrics.child_restarted(child.name)
        process.channel.send_config(self.config)
        self.selector.register(process.channel.sock, selectors.EVENT_READ, child)
        self.timers.next_status = 0.0  # a state change: refresh STATUS= now
        log.info(
            "%s started (pid %d)%s", child.name, process.pid, f", restart #{child.restarts}" if child.restarts else ""
        )

    def handle_reports(self, child: Child) -> None:
        process = child.process
        if process is None:
            return
        for report in process.channel.receive():
            self.handle_report(child, report)
        if process.channel.closed:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(process.channel.sock)

    def handle_report(self, child: Child, report: dict[str, Any]) -> None:
        if child.process is None or report["pid"] != child.process.pid:
            return
        child.last_report = time.monotonic()
        child.loop_age = float(report["loop_age_s"])
        if report.get("error"):
            child.last_error = report["error"]
        if self.metrics is not None and report["metrics"]:
            try:
                self.metrics.observe(child.name, report["pid"], report["metrics"])
            except Exception:  # metrics must never take the supervisor down
                log.debug("cannot merge a report of %s", child.name, exc_info=True)
        if report["ready"] and child.state is State.STARTING:
            self.handle_ready(child)

    def handle_ready(self, child: Child) -> None:
        child.state = transition(child.state, Event.READY)
        child.ready_at = time.monotonic()
        child.failed_starts = 0
        self.timers.next_status = 0.0
        log.info("%s ready (pid %d)", child.name, child.pid)
        if child.name == "ingest" and not self._announced and self.state == "starting":
            self._announced = True
            self.state = "running"
            print("ready", file=sys.stderr, flush=True)
            self.notifier.ready(self.status_line())
            shipper = self.children.get("shipper")
            if shipper is not None and shipper.state is State.EXITED:
                self.spawn(shipper)

    def _reap(self) -> None:
        for child in self.children.values():
            if child.state in ALIVE and child.process is not None:
                code = child.process.poll()
                if code is not None:
                    self.handle_exit(child, code)

    def handle_exit(self, child: Child, code: int) -> None:
        """A child process ended: record it, then restart it, give up, or (when stopping) let it go."""
        process = child.process
        assert process is not None
        for report in process.channel.receive():  # its last words, if any
            self.handle_report(child, report)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(process.channel.sock)
        process.close()
        child.process, child.exit_code = None, code
        self.timers.next_status = 0.0
        how = _how_it_ended(code, child.kill_reason)
        if child.state is State.STOPPING:
            child.state = transition(child.state, Event.STOPPED)
            (log.info if code == 0 else log.warning)("%s (pid %d) stopped: %s", child.name, child.pid, how)
            return
        now = time.monotonic()
        was_starting = child.state is State.STARTING
        child.failed_starts = child.failed_starts + 1 if was_starting else 0
        if child.ready_at is not None and now - child.ready_at >= self.policy.healthy_after_s:
            child.failures = 0
        child.failures += 1
        event = self.policy.verdict(code, child.failed_starts)
        child.state = transition(child.state, event)
        words = f": {child.last_error}" if child.last_error else ""
        if event is Event.DIED:
            delay = self.policy.delay(child.failures)
            child.backoff_until = now + delay
            log.error("%s (pid %d) %s%s; restarting it in %.1f s", child.name, child.pid, how, words, delay)
            return
        if code in self.policy.give_up_codes:
            child.why = f"{how}{words or ' (see its log above)'}"
        else:
            child.why = (
                f"died {child.failed_starts} times in a row before it was ready; last time it {how}"
                f"{words or ' (see its log above)'}"
            )
        self._give_up(child)

    def _give_up(self, child: Child) -> None:
        code = exitcodes.IO_ERROR if child.exit_code == exitcodes.IO_ERROR else exitcodes.CHILD_FAILED
        if code == exitcodes.IO_ERROR:
            log.critical(
                "%s: the WAL's storage failed; stopping the agent (exit %d). The next start recovers what is on disk%s",
                child.name,
                code,
                f": {child.last_error}" if child.last_error else "",
            )
        else:
            log.critical("%s cannot start: %s; giving up (exit %d)", child.name, child.why, code)
        self.stop(f"{child.name} failed", exit_code=code)

    def stop(self, reason: str, exit_code: int = exitcodes.OK) -> None:
        """Stop every child: SIGTERM now (ingest drains and fsyncs, the shipper finishes or abandons its
        batch within agent.stop_timeout), SIGKILL after the deadline plus a margin."""
        if self.exit_code == exitcodes.OK:
            self.exit_code = exit_code
        if self.state == "stopping":
            log.info("%s: already stopping", reason)
            return
        self.state = "stopping"
        deadline = self.config["agent.stop_timeout"] + STOP_MARGIN_S
        self.timers.stop_deadline = time.monotonic() + deadline
        log.info("stopping (%s): children get SIGTERM, SIGKILL after %.0f s", reason, deadline)
        self.notifier.stopping(f"stopping ({reason})")
        for child in self.children.values():
            alive = child.state in (State.STARTING, State.RUNNING)
            child.state = transition(child.state, Event.STOP)
            if alive and child.process is not None:
                child.process.signal(signal.SIGTERM)

    # ------------------------------------------------------------------ timers
    def _timers(self, now: float) -> None:
        for child in self.children.values():
            if child.state is State.BACKOFF and now >= child.backoff_until and self.state != "stopping":
                self.spawn(child)
            elif child.state in (State.STARTING, State.RUNNING) and not child.kill_reason:
                self._check_heartbeat(child, now)
        if self.timers.stop_deadline is not None and now >= self.timers.stop_deadline:
            for child in self.children.values():
                if child.state is State.STOPPING and child.process is not None and not child.kill_reason:
                    log.error(
                        "%s (pid %d) did not stop within %.0f s; killing it (its data stays in the WAL)",
                        child.name,
                        child.pid,
                        self.config["agent.stop_timeout"] + STOP_MARGIN_S,
                    )
                    child.kill_reason = "killed at the stop deadline"
                    child.process.kill()
        interval = self.notifier.watchdog_interval_s
        if interval and now >= self.timers.next_watchdog and self.healthy(now):
            self.notifier.watchdog()
            self.timers.next_watchdog = now + interval
        if now >= self.timers.next_status and self.state != "stopping":
            self.timers.next_status = now + STATUS_INTERVAL_S
            self.notifier.status(self.status_line())
        if self.control is not None:
            self.control.expire(now)

    def _check_heartbeat(self, child: Child, now: float) -> None:
        limit = self.config["agent.heartbeat_timeout"]
        if child.state is State.RUNNING:
            silent = child.silence(now)
            if silent > limit:
                self._kill_hung(child, f"no progress for {silent:.0f} s, agent.heartbeat_timeout is {limit:g} s")
        else:  # STARTING: recovery may take long, but the reporter thread must keep talking
            since = child.last_report if child.last_report is not None else child.started_at
            if now - since > limit:
                self._kill_hung(
                    child, f"no report for {now - since:.0f} s while starting, agent.heartbeat_timeout is {limit:g} s"
                )

    def _kill_hung(self, child: Child, why: str) -> None:
        assert child.process is not None
        log.error("%s (pid %d) is hung: %s; killing it", child.name, child.pid, why)
        child.kill_reason = f"was killed as hung ({why})"
        child.process.kill()

    def healthy(self, now: float) -> bool:
        """Every child RUNNING and heard from recently: the condition for WATCHDOG=1."""
        fresh = min(FRESH_S, self.config["agent.heartbeat_timeout"] / 2)
        return self.state == "running" and all(
            c.state is State.RUNNING and not c.kill_reason and c.silence(now) <= fresh for c in self.children.values()
        )

    # ------------------------------------------------------------------ status
    def summary(self) -> dict[str, Any]:
        if self.metrics is None:
            return {}
        try:
            return self.metrics.summary()
        except Exception:  # a metrics bug must not take status or STATUS= down
            log.debug("metrics summary failed", exc_info=True)
            return {}

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "pid": os.getpid(),
            "uptime_s": round(now - self.started, 3),
            "state": self.state,
            "children": {
                name: {
                    "state": c.state.value,
                    "pid": c.pid if c.state in ALIVE else None,
                    "restarts": c.restarts,
                    "last_report_age_s": None if c.last_report is None else round(now - c.last_report, 3),
                    "loop_age_s": round(c.loop_age, 3),
                    **({"error": c.why} if c.why else {}),
                }
                for name, c in self.children.items()
            },
            "metrics": self.summary(),
            **({"metrics_unavailable": NO_METRICS} if self.metrics is None else {}),
            "config": {
                "socket.path": self.config["socket.path"],
                "wal.dir": self.config["wal.dir"],
                "sink": self.config["sink"],
            },
            "socket_activated": self.listener.activated,
            "systemd_notify": self.notifier.enabled,
        }

    def status_line(self) -> str:
        """The short live summary of STATUS=: ``ingest 1200 spans/s, backlog 4.0 MiB, last ship 2s ago``."""
        if self.state == "starting":
            return "starting: " + ", ".join(f"{c.name} {c.state.value}" for c in self.children.values())
        now = time.monotonic()
        m = self.summary()
        total = int(m.get("spans_received", 0))
        if self.rate.at and now > self.rate.at:
            self.rate.per_s = max(0.0, (total - self.rate.total) / (now - self.rate.at))
        self.rate.at, self.rate.total = now, total
        parts = [f"ingest {self.rate.per_s:.0f} spans/s", f"backlog {size_text(m.get('wal_unshipped_bytes', 0))}"]
        if "shipper" in self.children:
            last = m.get("last_ship_time")
            parts.append(f"last ship {max(0.0, time.time() - last):.0f}s ago" if last else "nothing shipped yet")
        troubles = [
            f"{c.name} {c.state.value} ({c.restarts} restarts)"
            for c in self.children.values()
            if c.state is not State.RUNNING
        ]
        return ", ".join(parts) + (f"; {', '.join(troubles)}" if troubles else "")

    def handle_control(self, message: dict[str, Any]) -> dict[str, Any]:
        if message.get("cmd") == "status":
            return {"ok": True, "status": self.status()}
        return {"ok": False, "error": f"unknown command {message.get('cmd')!r} (known: status)"}

    # ------------------------------------------------------------------ the end
    def _log_exit(self) -> None:
        if self.exit_code == exitcodes.OK:
            log.info("stopped")

    def _emergency_stop(self) -> None:
        """The loop itself failed: stop the children anyway (SIGTERM, then SIGKILL after the deadline)."""
        alive = [c.process for c in self.children.values() if c.process is not None and c.process.poll() is None]
        for process in alive:
            process.signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config["agent.stop_timeout"] + STOP_MARGIN_S
        for process in alive:
            while process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            process.kill()
            process.poll()

    def _teardown(self) -> None:
        for child in self.children.values():
            if child.process is not None:
                child.process.close()
        if self.control is not None:
            self.control.close()
        if self.metrics is not None:
            with contextlib.suppress(Exception):
                self.metrics.close()
        self.listener.close()
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(-1)
        for s in (self._signal_r, self._signal_w):
            if s is not None:
                s.close()
        self.selector.close()
        self.notifier.close()


def _queued(signum: int, frame: object) -> None:
    """Python-level handler: nothing to do, the signal number is already queued on the wakeup fd."""


def _how_it_ended(code: int, kill_reason: str) -> str:
    if kill_reason:
        return kill_reason
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _agent_metrics(listen: str) -> AgentMetrics | None:
    """The metrics aggregate, or None when prometheus-client is missing and no endpoint is wanted
    (:class:`MissingExtra`, exit 69, when it is wanted)."""
    try:
        return AgentMetrics()
    except ImportError:
        if listen:
            raise MissingExtra(
                f"metrics.listen is {listen!r} but prometheus-client is not installed: install "
                "'automagik-telemetry[agent]', or set metrics.listen = \"\""
            ) from None
        log.warning("%s: `status` shows no counters", NO_METRICS)
        return None


#: Why ``status`` has no counters when the agent runs without prometheus-client (metrics.listen = "").
NO_METRICS = "prometheus-client is not installed (install 'automagik-telemetry[agent]')"


class MissingExtra(RuntimeError):
    """A package of the ``agent`` extra is missing (exit 69); the message says what to install."""
