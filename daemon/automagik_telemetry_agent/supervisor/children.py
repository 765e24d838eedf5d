"""What the supervisor knows of each child: the :class:`Child` record (its state, its current process,
the history that matters for restarts and health), and how a child's end is told in the log.

The supervisor (:mod:`.supervisor`) keeps one dict of these and changes them in its ``handle_*``
methods; starting and reaping the process itself is :mod:`.child`'s.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Any

from .child import ChildProcess
from .states import Event, RestartPolicy, State


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

    @property
    def last_words(self) -> str:
        """``: <its last error>`` for a log line, or "" when it said nothing."""
        return f": {self.last_error}" if self.last_error else ""

    def spawning(self, now: float) -> None:
        """A new process is starting: forget what was known of the last one's run."""
        self.started_at, self.ready_at, self.last_report, self.loop_age = now, None, None, 0.0
        self.kill_reason, self.last_error, self.exit_code = "", "", None

    def heard(self, report: dict[str, Any], now: float) -> None:
        """A report of the current process: the loop age it reported, and its last words if any."""
        self.last_report = now
        self.loop_age = float(report["loop_age_s"])
        if report.get("error"):
            self.last_error = report["error"]

    def silence(self, now: float) -> float:
        """Seconds since the child last proved progress: report age plus the loop age it reported."""
        since = self.last_report if self.last_report is not None else self.started_at
        return (now - since) + (self.loop_age if self.last_report is not None else 0.0)

    def healthy(self, now: float, fresh: float) -> bool:
        """RUNNING, not being killed, and proved progress within ``fresh`` seconds."""
        return self.state is State.RUNNING and not self.kill_reason and self.silence(now) <= fresh

    def hang(self, now: float, limit: float) -> str:
        """Why a STARTING or RUNNING child counts as hung after ``limit`` seconds, or "" when it does not."""
        if self.state is State.RUNNING:
            silent = self.silence(now)
            if silent > limit:
                return f"no progress for {silent:.0f} s, agent.heartbeat_timeout is {limit:g} s"
        else:  # STARTING: recovery may take long, but the reporter thread must keep talking
            since = self.last_report if self.last_report is not None else self.started_at
            if now - since > limit:
                return f"no report for {now - since:.0f} s while starting, agent.heartbeat_timeout is {limit:g} s"
        return ""

    def died(self, code: int, now: float, policy: RestartPolicy) -> Event:
        """Count a death the supervisor did not ask for; the policy's verdict: DIED (restart) or GIVE_UP."""
        was_starting = self.state is State.STARTING
        self.failed_starts = self.failed_starts + 1 if was_starting else 0
        if self.ready_at is not None and now - self.ready_at >= policy.healthy_after_s:
            self.failures = 0
        self.failures += 1
        return policy.verdict(code, self.failed_starts)

    def fatal_why(self, code: int, how: str, policy: RestartPolicy) -> str:
        """Why the supervisor gives up on it after it ended with ``code`` (``how``: :func:`how_it_ended`)."""
        words = self.last_words
        if code in policy.give_up_codes:
            return f"{how}{words or ' (see its log above)'}"
        return (
            f"died {self.failed_starts} times in a row before it was ready; last time it {how}"
            f"{words or ' (see its log above)'}"
        )


def how_it_ended(code: int, kill_reason: str) -> str:
    """A child's end for the log: why the supervisor killed it, the signal that did, or its exit code."""
    if kill_reason:
        return kill_reason
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"
