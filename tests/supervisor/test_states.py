"""The child state machine and the restart policy (pure logic: no processes)."""

from __future__ import annotations

import contextlib
import itertools

import pytest

from automagik_telemetry_agent import exitcodes
from automagik_telemetry_agent.supervisor.states import (
    ALIVE,
    Event,
    InvalidTransition,
    RestartPolicy,
    State,
    transition,
)


def test_a_child_lives_through_start_ready_crash_backoff_restart_and_stop() -> None:
    state = State.EXITED
    for event, expected in [
        (Event.SPAWN, State.STARTING),
        (Event.READY, State.RUNNING),
        (Event.DIED, State.BACKOFF),
        (Event.SPAWN, State.STARTING),
        (Event.READY, State.RUNNING),
        (Event.STOP, State.STOPPING),
        (Event.STOPPED, State.EXITED),
    ]:
        state = transition(state, event)
        assert state is expected


def test_giving_up_is_fatal_and_fatal_is_final() -> None:
    assert transition(State.STARTING, Event.GIVE_UP) is State.FATAL
    assert transition(State.RUNNING, Event.GIVE_UP) is State.FATAL
    assert transition(State.FATAL, Event.STOP) is State.FATAL
    for event in (Event.SPAWN, Event.READY, Event.DIED, Event.STOPPED):
        with pytest.raises(InvalidTransition):
            transition(State.FATAL, event)


def test_stopping_a_child_in_backoff_needs_no_process_to_wait_for() -> None:
    assert transition(State.BACKOFF, Event.STOP) is State.EXITED


def _drawn_moves() -> set[tuple[State, Event, State]]:
    """The moves the diagram in states.py's docstring draws: ``A --E--> B`` and ``B <--E-- C``."""
    import re

    from automagik_telemetry_agent.supervisor import states

    moves = set()
    for line in (states.__doc__ or "").splitlines():
        for a, e, b in re.findall(r"([A-Z]+)\s+--([A-Z_]+)-->\s+(?=([A-Z]+))", line):
            moves.add((State[a], Event[e.upper()], State[b]))
        for b, e, c in re.findall(r"([A-Z]+)\s+<--([A-Z_]+)--\s+(?=([A-Z]+))", line):
            moves.add((State[c], Event[e.upper()], State[b]))
    return moves


def test_every_move_transition_allows_is_drawn_in_the_diagram_or_is_an_idempotent_stop() -> None:
    allowed = set()
    for state, event in itertools.product(State, Event):
        with contextlib.suppress(InvalidTransition):
            allowed.add((state, event, transition(state, event)))
    drawn = _drawn_moves()
    assert drawn <= allowed, f"drawn but refused: {drawn - allowed}"
    undrawn = allowed - drawn
    assert all(event is Event.STOP and before is after for before, event, after in undrawn), undrawn


def test_a_move_outside_the_table_is_refused() -> None:
    with pytest.raises(InvalidTransition):
        transition(State.RUNNING, Event.READY)  # ready twice is a bug, not a no-op
    with pytest.raises(InvalidTransition):
        transition(State.STOPPING, Event.SPAWN)  # a second process while the first still runs


def test_alive_states_are_those_with_a_process() -> None:
    assert {State.STARTING, State.RUNNING, State.STOPPING} == ALIVE


def test_backoff_restarts_at_once_then_doubles_up_to_the_cap() -> None:
    policy = RestartPolicy(backoff_base_s=1.0, backoff_max_s=30.0)
    assert [policy.delay(n) for n in range(1, 9)] == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert policy.delay(10_000) == 30.0


def test_config_errors_give_up_at_once_and_crashes_before_ready_give_up_after_the_retries() -> None:
    policy = RestartPolicy(start_retries=3)
    for code in (exitcodes.CONFIG, exitcodes.UNAVAILABLE, exitcodes.IO_ERROR):
        assert policy.verdict(code, failed_starts=1) is Event.GIVE_UP
    assert policy.verdict(1, failed_starts=1) is Event.DIED
    assert policy.verdict(-9, failed_starts=2) is Event.DIED
    assert policy.verdict(1, failed_starts=3) is Event.GIVE_UP
    assert policy.verdict(1, failed_starts=0) is Event.DIED  # it had been ready: restart, however often
