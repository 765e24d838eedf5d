"""automagik_telemetry.events.StandardEvents carries 0.1.4's event names (from its schema module) unchanged."""

from __future__ import annotations

from automagik_telemetry.events import StandardEvents

EXPECTED = {
    "FEATURE_USED": "automagik.feature.used",
    "API_REQUEST": "automagik.api.request",
    "COMMAND_EXECUTED": "automagik.cli.command",
    "OPERATION_LATENCY": "automagik.performance.latency",
    "ERROR_OCCURRED": "automagik.error",
    "SERVICE_HEALTH": "automagik.health",
}


def test_standard_events_defines_exactly_the_six_names_of_0_1_4_with_their_values() -> None:
    public = {name: value for name, value in vars(StandardEvents).items() if not name.startswith("_")}
    assert public == EXPECTED


def test_standard_event_names_are_plain_strings_usable_as_event_names() -> None:
    assert type(StandardEvents.FEATURE_USED) is str
    assert f"{StandardEvents.ERROR_OCCURRED}" == "automagik.error"
    assert {StandardEvents.API_REQUEST: 1}["automagik.api.request"] == 1


def test_standard_event_names_are_all_distinct_and_in_the_automagik_namespace() -> None:
    assert len(set(EXPECTED.values())) == len(EXPECTED)
    assert all(getattr(StandardEvents, name).startswith("automagik.") for name in EXPECTED)
