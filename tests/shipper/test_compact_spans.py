"""Compact span lines (docs/protocol.md, "Compact span lines") store exactly the rows their OTLP/JSON
spelling stores, in both schema profiles, and a bad compact line is refused with a reason."""

from __future__ import annotations

import enum
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from automagik_telemetry.span import Span
from automagik_telemetry.transport import compact_resource_line, line_formats
from automagik_telemetry_agent.clickhouse.rows import (
    LineFormat,
    Profile,
    TransformError,
    parse_resource,
    transform_span,
)

RESOURCE = (
    b'{"attributes":[{"key":"service.name","value":{"stringValue":"svc"}},'
    b'{"key":"host.name","value":{"stringValue":"h1"}},{"key":"region","value":{"stringValue":"eu"}}]}\n'
)
MAX_LENGTH = 64


class Owner:
    """The SpanOwner a span needs: collects ended spans."""

    def __init__(self) -> None:
        self.ended: list[Span] = []

    @property
    def _enqueue(self) -> Any:
        return self.ended.append

    def _internal_error(self) -> None:
        raise AssertionError("internal error")


class Colour(enum.IntEnum):
    RED = 3


scalars = st.one_of(
    st.text(max_size=80),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.binary(max_size=8),
    st.just(Colour.RED),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
attribute_maps = st.dictionaries(st.text(max_size=12), values, max_size=5)


@st.composite
def span_plans(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "child": draw(st.booleans()),
        "name": draw(st.text(min_size=1, max_size=40)),
        "attributes": draw(attribute_maps),
        "kind": draw(st.integers(0, 7)),
        "events": draw(st.lists(st.tuples(st.text(max_size=10), attribute_maps), max_size=2)),
        "status": draw(st.none() | st.tuples(st.integers(0, 2), st.text(max_size=30))),
    }


def build(plan: dict[str, Any]) -> Span:
    owner = Owner()
    parent = Span(owner, "parent") if plan["child"] else None
    if parent is not None:
        parent.__enter__()
    try:
        span = Span(owner, plan["name"], plan["attributes"], plan["kind"])
    finally:
        if parent is not None:
            parent.__exit__(None, None, None)
    for name, attributes in plan["events"]:
        span.add_event(name, attributes)
    if plan["status"] is not None:
        span.set_status(*plan["status"])
    span.end()
    return span


def rows_of(span: Span, profile: Profile) -> tuple[dict[str, Any], dict[str, Any]]:
    otlp = transform_span(span.to_line(MAX_LENGTH).rstrip(b"\n"), parse_resource(RESOURCE), profile)
    compact_resource = parse_resource(compact_resource_line(RESOURCE))
    assert compact_resource.line_format is LineFormat.COMPACT
    compact = transform_span(span.to_compact_line(MAX_LENGTH).rstrip(b"\n"), compact_resource, profile)
    return otlp, compact


@settings(max_examples=300, deadline=None)
@given(plan=span_plans(), profile=st.sampled_from(list(Profile)))
def test_a_compact_line_stores_the_row_of_its_otlp_spelling(plan: dict[str, Any], profile: Profile) -> None:
    otlp, compact = rows_of(build(plan), profile)
    assert compact == otlp


def test_non_finite_floats_big_ints_and_nested_values_keep_their_otlp_rendering() -> None:
    span = Span(Owner(), "x", {"nan": math.nan, "inf": -math.inf, "big": 2**64, "list": [1, "a"], "map": {"k": 1.5}})
    span.end()
    for profile in Profile:
        otlp, compact = rows_of(span, profile)
        assert compact == otlp


def test_the_compact_resource_line_differs_only_by_its_line_format() -> None:
    plain, compact = parse_resource(RESOURCE), parse_resource(compact_resource_line(RESOURCE))
    assert (plain.columns, plain.attributes, plain.keys) == (compact.columns, compact.attributes, compact.keys)
    assert parse_resource(compact_resource_line(b"{}\n")).line_format is LineFormat.COMPACT


def compact(**fields: str) -> bytes:
    """A compact line, valid but for ``fields`` (JSON texts by element name)."""
    line = {
        "trace": '"' + "1" * 32 + '"',
        "span": '"0000000000000001"',
        "name": '"n"',
        "kind": "1",
        "attributes": "{}",
        "code": "0",
        "events": "0",
        **fields,
    }
    return (
        f'[{line["trace"]},{line["span"]},"",{line["name"]},{line["kind"]},1700000000000000000,'
        f'1700000000000000001,{line["attributes"]},{line["code"]},"",{line["events"]}]'
    ).encode()


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b'{"traceId":"x"}', "compact span: not an array of 11 elements"),
        (b'["a","b"]', "compact span: not an array of 11 elements"),
        (compact(trace='"zz"'), "invalid traceId"),
        (compact(span='"0000000000000000"'), "invalid spanId"),
        (compact(name='""'), "missing name"),
        (compact(kind="9"), "invalid kind"),
        (compact(attributes="[]"), "invalid attributes: not an object"),
        (compact(attributes='{"k":[1]}'), "attributes"),
        (compact(code="7"), "invalid status.code"),
        (compact(events='[["e"]]'), "invalid events[0]"),
        (b"[1,", "invalid JSON"),
    ],
)
def test_a_bad_compact_line_is_refused_with_a_reason(line: bytes, reason: str) -> None:
    assert transform_span(
        compact(), parse_resource(compact_resource_line(RESOURCE)), Profile.LEGACY
    )  # the base is valid
    resource = parse_resource(compact_resource_line(RESOURCE))
    with pytest.raises(TransformError) as caught:
        transform_span(line, resource, Profile.LEGACY)
    assert reason in caught.value.reason


def test_an_unknown_line_format_is_refused_not_guessed() -> None:
    with pytest.raises(TransformError, match="unknown lineFormat"):
        parse_resource(b'{"lineFormat":"compact-9","attributes":[]}')


def test_the_client_reads_the_line_formats_an_agent_announces() -> None:
    assert line_formats(b'{"line_formats":["otlp","compact-1"],"uptime_seconds":1}') == ["otlp", "compact-1"]
    assert line_formats(b'{"uptime_seconds":1}') == []  # an agent from before compact lines
    assert line_formats(b"not json") == [] and line_formats(b"[1]") == []


def test_elements_after_the_eleventh_are_ignored() -> None:
    resource = parse_resource(compact_resource_line(RESOURCE))
    longer = compact()[:-1] + b',"a later addition",[1,2]]'
    assert transform_span(longer, resource, Profile.LEGACY) == transform_span(compact(), resource, Profile.LEGACY)
