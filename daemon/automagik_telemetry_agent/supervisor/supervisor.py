"""``automagik-telemetry agent``: the supervisor process (after gunicorn's arbiter and supervisord).

It owns what must outlive a child: the clients' listening socket (:mod:`.listener`), the
validated configuration, the control socket (:mod:`.control`), the metrics endpoint
(``metrics.exposition``) and the conversation with systemd (:mod:`.sdnotify`). It runs up to three children:

* ``ingest`` (ingest + WAL writer), which gets the listening socket's fd, and
* ``shipper`` (WAL -> ClickHouse or the embedded store), unless ``sink = "none"``; started once ingest
  is ready;
* ``otlp`` (the OTLP/HTTP receiver, a client of ingest), which gets the OTLP listening sockets, unless
  ``otlp.listen`` and ``otlp.unix_path`` are both off; started once ingest is ready.

State: one dict of :class:`~.children.Child` records, each an explicit state machine (:mod:`.states`).
One thread, one selector loop; every event is handled by one small ``handle_*`` method:

* signals: the handlers only queue (:mod:`.signals`); the loop drains the queue
  (:meth:`Supervisor.handle_sigterm`, ``handle_sighup``, ...);
* child reports (``lifecycle.channel``): heartbeats with ``loop_age_s`` and metrics; ``ready`` moves a child
  STARTING -> RUNNING; the first ingest READY is the agent's ``READY=1`` (and ``ready`` on stderr);
* child exits (reaped every turn): restart with backoff, or give up (:class:`~.states.RestartPolicy`);
* control requests; and timers: restarts due, heartbeat timeouts (SIGKILL + restart), the stop
  deadline, ``WATCHDOG=1`` while every child is healthy, ``STATUS=`` every few seconds (:mod:`.status`).

Exit codes: 0 after SIGTERM/SIGINT, 3 (CHILD_FAILED) when a child cannot start, 74 when ingest reported
that the WAL's storage failed, 2 for a configuration problem found before the children start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import exitcodes
from ..config import AgentConfig, ConfigError
from ..logs import set_level
from ..metrics.exposition import AgentMetrics
from .child import ChildProcess, stop_all
from .children import Child, how_it_ended
from .control import ControlServer
from .listener import ListenSocket
from .reload import apply_live
from .sdnotify import Notifier
from .signals import SignalQueue
from .states import ALIVE, Event, RestartPolicy, State, transition
from .status import MissingExtra, Rate, agent_metrics, metrics_summary, render_status, render_status_line

log = logging.getLogger(__name__)

STOP_MARGIN_S = 2.0  # after agent.stop_timeout, children still running are killed
STATUS_INTERVAL_S = 5.0  # STATUS= refresh
FRESH_S = 5.0  # a child silent longer than this (or heartbeat_timeout/2) is not healthy: no WATCHDOG=1
TICK_S = 0.5  # the loop wakes at least this often


@dataclass
class _Timers:
    next_watchdog: float = 0.0
    next_status: float = 0.0
    stop_deadline: float | None = None


class Supervisor:
    def __init__(
        self,
        config: AgentConfig,
        reload: Callable[[], AgentConfig],
        listener: ListenSocket,
        notifier: Notifier | None = None,
        policy: RestartPolicy | None = None,
        control_path: str | None = None,
        otlp: list[ListenSocket] | None = None,
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
        self.otlp = otlp or []
        if self.otlp:
            fds = tuple(s.fd for s in self.otlp)
            self.children["otlp"] = Child("otlp", ["otlp", *(f"--listen-fd={fd}" for fd in fds)], fds)
        self.state = "starting"
        self.exit_code = exitcodes.OK
        self.started = time.monotonic()
        self.selector = selectors.DefaultSelector()
        self.metrics: AgentMetrics | None = None
        self.control: ControlServer | None = None
        self.timers = _Timers()
        self.rate = Rate()
        self.signals = SignalQueue()
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
        self.selector.register(self.signals.install(), selectors.EVENT_READ, "signals")
        if self.control_path:
            self.control = ControlServer(self.control_path, self.selector, self.handle_control)
        self.metrics = agent_metrics(self.config["metrics.listen"])
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
        for sock in self.otlp:
            log.info("OTLP/HTTP receiver on %s%s", "http://" if sock.tcp else "unix:", sock.path)

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
        for signum in self.signals.drain():
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
        self.config, live, changed = apply_live(self.config, new)
        if live:
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
        child.state = transition(child.state, Event.SPAWN)
        child.spawning(time.monotonic())
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
        child.heard(report, time.monotonic())
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
            for name in ("shipper", "otlp"):
                later = self.children.get(name)
                if later is not None and later.state is State.EXITED:
                    self.spawn(later)

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
        how = how_it_ended(code, child.kill_reason)
        if child.state is State.STOPPING:
            child.state = transition(child.state, Event.STOPPED)
            (log.info if code == 0 else log.warning)("%s (pid %d) stopped: %s", child.name, child.pid, how)
            return
        now = time.monotonic()
        event = child.died(code, now, self.policy)
        child.state = transition(child.state, event)
        if event is Event.DIED:
            delay = self.policy.delay(child.failures)
            child.backoff_until = now + delay
            log.error("%s (pid %d) %s%s; restarting it in %.1f s", child.name, child.pid, how, child.last_words, delay)
            return
        child.why = child.fatal_why(code, how, self.policy)
        self._give_up(child)

    def _give_up(self, child: Child) -> None:
        code = exitcodes.IO_ERROR if child.exit_code == exitcodes.IO_ERROR else exitcodes.CHILD_FAILED
        if code == exitcodes.IO_ERROR:
            log.critical(
                "%s: the WAL's storage failed; stopping the agent (exit %d). The next start recovers what is on disk%s",
                child.name,
                code,
                child.last_words,
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
        why = child.hang(now, self.config["agent.heartbeat_timeout"])
        if not why:
            return
        assert child.process is not None
        log.error("%s (pid %d) is hung: %s; killing it", child.name, child.pid, why)
        child.kill_reason = f"was killed as hung ({why})"
        child.process.kill()

    def healthy(self, now: float) -> bool:
        """Every child RUNNING and heard from recently: the condition for WATCHDOG=1."""
        fresh = min(FRESH_S, self.config["agent.heartbeat_timeout"] / 2)
        return self.state == "running" and all(c.healthy(now, fresh) for c in self.children.values())

    # ------------------------------------------------------------------ status
    def summary(self) -> dict[str, Any]:
        return metrics_summary(self.metrics)

    def status(self) -> dict[str, Any]:
        return render_status(
            self.state, self.started, self.children, self.metrics, self.config, self.listener, self.notifier, self.otlp
        )

    def status_line(self) -> str:
        """The short live summary of STATUS=: ``ingest 1200 spans/s, backlog 4.0 MiB, last ship 2s ago``."""
        return render_status_line(self.state, self.children, self.metrics, self.rate)

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
        stop_all(alive, self.config["agent.stop_timeout"] + STOP_MARGIN_S)

    def _teardown(self) -> None:
        for child in self.children.values():
            if child.process is not None:
                child.process.close()
        for sock in self.otlp:
            sock.close()
        if self.control is not None:
            self.control.close()
        if self.metrics is not None:
            with contextlib.suppress(Exception):
                self.metrics.close()
        self.listener.close()
        self.signals.close()
        self.selector.close()
        self.notifier.close()
