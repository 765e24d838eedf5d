"""The life of one child process as an explicit state machine (the supervisor's model, after supervisord).

::

    EXITED   --SPAWN-->   STARTING  --READY-->   RUNNING
    STARTING --DIED-->    BACKOFF   <--DIED--    RUNNING     (crashed, or killed as hung)
    BACKOFF  --SPAWN-->   STARTING                           (after the policy's delay)
    STARTING --GIVE_UP--> FATAL     <--GIVE_UP-- RUNNING     (config error, or too many failed starts)
    STARTING --STOP-->    STOPPING  <--STOP--    RUNNING     (SIGTERM sent; SIGKILL after the deadline)
    STOPPING --STOPPED--> EXITED    <--STOP--    BACKOFF

Every move goes through :func:`transition`; a move the table does not list is a bug
(:class:`InvalidTransition`), never silently ignored. Whether a dead child is restarted (DIED) or given
up on (GIVE_UP), and how long it waits in BACKOFF, is data: :class:`RestartPolicy`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .. import exitcodes


class State(enum.Enum):
    STARTING = "starting"  # spawned, not ready yet (ingest: WAL recovery; shipper: waiting for the WAL lock)
    RUNNING = "running"  # reported ready; heartbeats are checked
    BACKOFF = "backoff"  # died; waiting before the next start
    STOPPING = "stopping"  # asked to stop (SIGTERM); killed if still running after the deadline
    EXITED = "exited"  # not running: never started, or stopped on request
    FATAL = "fatal"  # cannot run: a configuration error, or it died before ever becoming ready too often


class Event(enum.Enum):
    SPAWN = "spawn"  # the supervisor started a process
    READY = "ready"  # the process reported ready
    DIED = "died"  # the process ended unasked; a restart is due
    GIVE_UP = "give_up"  # the process ended unasked and restarting it cannot help
    STOP = "stop"  # the supervisor asks it to stop
    STOPPED = "stopped"  # the process ended after STOP


class InvalidTransition(RuntimeError):
    """A move the state table does not allow: a supervisor bug."""


_TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.EXITED, Event.SPAWN): State.STARTING,
    (State.BACKOFF, Event.SPAWN): State.STARTING,
    (State.STARTING, Event.READY): State.RUNNING,
    (State.STARTING, Event.DIED): State.BACKOFF,
    (State.RUNNING, Event.DIED): State.BACKOFF,
    (State.STARTING, Event.GIVE_UP): State.FATAL,
    (State.RUNNING, Event.GIVE_UP): State.FATAL,
    (State.STARTING, Event.STOP): State.STOPPING,
    (State.RUNNING, Event.STOP): State.STOPPING,
    (State.BACKOFF, Event.STOP): State.EXITED,  # nothing runs: nothing to wait for
    (State.EXITED, Event.STOP): State.EXITED,
    (State.FATAL, Event.STOP): State.FATAL,
    (State.STOPPING, Event.STOP): State.STOPPING,
    (State.STOPPING, Event.STOPPED): State.EXITED,
}

#: States in which a process exists (the supervisor must reap it before it forgets it).
ALIVE = frozenset({State.STARTING, State.RUNNING, State.STOPPING})


def transition(state: State, event: Event) -> State:
    """The state after ``event`` in ``state``; :class:`InvalidTransition` if the table has no such move."""
    try:
        return _TRANSITIONS[(state, event)]
    except KeyError:
        raise InvalidTransition(f"no transition from {state.value} on {event.value}") from None


@dataclass(frozen=True)
class RestartPolicy:
    """How a dead child is restarted, and when the supervisor gives up on it.

    ``delay(n)`` for the n-th consecutive failure: the first restart is immediate (ingest is down, and
    clients are queueing), then ``backoff_base_s`` doubling up to ``backoff_max_s``. A child that stayed
    RUNNING for ``healthy_after_s`` starts the count again. A child that dies ``start_retries`` times in a
    row before it ever reports ready, or exits with one of ``give_up_codes``, is FATAL.
    """

    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0
    healthy_after_s: float = 10.0
    start_retries: int = 3
    give_up_codes: frozenset[int] = frozenset({exitcodes.CONFIG, exitcodes.UNAVAILABLE, exitcodes.IO_ERROR})

    def delay(self, failures: int) -> float:
        """Seconds in BACKOFF before restart number ``failures`` (1 = the first failure in a row)."""
        if failures <= 1:
            return 0.0
        return min(self.backoff_max_s, self.backoff_base_s * 2.0 ** min(failures - 2, 30))

    def verdict(self, exit_code: int, failed_starts: int) -> Event:
        """DIED (restart) or GIVE_UP for a process that ended unasked with ``exit_code``.

        ``failed_starts``: consecutive deaths before READY, this one included (0 if it had been ready).
        """
        if exit_code in self.give_up_codes:
            return Event.GIVE_UP
        if failed_starts >= self.start_retries:
            return Event.GIVE_UP
        return Event.DIED
