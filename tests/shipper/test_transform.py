"""Unit tests of automagik_telemetry_agent.clickhouse.rows: OTLP span lines -> rows of both profiles."""

from __future__ import annotations

import base64
import contextlib
import copy
import re
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from automagik_telemetry_agent.clickhouse.rows import (
    LIFTED_RESOURCE_ATTRIBUTES,
    Profile,
    Resource,
    TransformError,
    encode_rows,
    parse_resource,
    transform_span,
)

TRACE = "5b8efff798038103d269b633813fc60c"
SPAN = "eee19b7ec3c1b174"
PARENT = "eee19b7ec3c1b173"
START = 1729627200000000000  # 2024-10-22 20:00:00 UTC
END = 1729627200145000000


def sv(s: str) -> dict[str, Any]:
    return {"stringValue": s}


def kv(key: str, value: Any) -> dict[str, Any]:
    return {"key": key, "value": value}


RESOURCE_OBJ = {
    "attributes": [
        kv("service.name", sv("my-app")),
        kv("project.name", sv("automagik")),
        kv("project.version", sv("1.2.3")),
        kv("deployment.environment", sv("prod")),
        kv("host.name", sv("web-01")),
        kv("os.type", sv("linux")),
        kv("os.version", sv("6.1.0")),
        kv("process.pid", {"intValue": "4242"}),
        kv("process.runtime.name", sv("cpython")),
        kv("process.runtime.version", sv("3.11.7")),
        kv("telemetry.sdk.name", sv("automagik-telemetry")),
        kv("telemetry.sdk.version", sv("0.1.0")),
        kv("team", sv("core")),
    ]
}
RESOURCE_COLUMNS = {
    "service_name": "my-app",
    "project_name": "automagik",
    "project_version": "1.2.3",
    "environment": "prod",
    "hostname": "web-01",
    "os_type": "linux",
    "os_version": "6.1.0",
    "runtime_name": "cpython",
    "runtime_version": "3.11.7",
    "sdk_version": "0.1.0",
}
RESOURCE_REST = {"process.pid": "4242", "telemetry.sdk.name": "automagik-telemetry", "team": "core"}


def line(obj: Any) -> bytes:
    return orjson.dumps(obj) + b"\n"


def make_span(**over: Any) -> dict[str, Any]:
    span: dict[str, Any] = {
        "traceId": TRACE,
        "spanId": SPAN,
        "parentSpanId": PARENT,
        "name": "user.login",
        "kind": 1,
        "startTimeUnixNano": START,
        "endTimeUnixNano": END,
        "attributes": [kv("user.id", sv("123"))],
        "status": {"code": 1, "message": ""},
    }
    for key, value in over.items():
        if value is ...:
            span.pop(key, None)
        else:
            span[key] = value
    return span


@pytest.fixture(scope="module")
def resource() -> Resource:
    return parse_resource(line(RESOURCE_OBJ))


def modern(span: dict[str, Any], resource: Resource) -> dict[str, Any]:
    return transform_span(line(span), resource, Profile.MODERN)


def render(value: Any, resource: Resource) -> str:
    """One attribute value rendered through the whole transform."""
    row = modern(make_span(attributes=[kv("k", value)]), resource)
    return row["attributes"]["k"]


# ----------------------------------------------------------------------------------------- full rows
#: Migration 0004's columns of a span with no scope, no links, and a resource without 0.1.4's attributes.
NO_V014 = {
    "user_id": "",
    "session_id": "",
    "cloud_provider": "",
    "cloud_region": "",
    "cloud_availability_zone": "",
    "instrumentation_library_name": "",
    "instrumentation_library_version": "",
    "links": "[]",
}


def test_modern_row(resource: Resource) -> None:
    span = make_span(
        events=[
            {
                "timeUnixNano": "1729627200100000000",
                "name": "exception",
                "attributes": [kv("exception.type", sv("ValueError"))],
            }
        ]
    )
    row = modern(span, resource)
    assert row == {
        "trace_id": TRACE,
        "span_id": SPAN,
        "parent_span_id": PARENT,
        "span_name": "user.login",
        "span_kind": "INTERNAL",
        "timestamp": "2024-10-22 20:00:00.000000000",
        "timestamp_ns": START,
        "duration_ns": 145_000_000,
        "duration_ms": 145.0,
        "status_code": "OK",
        "status_message": "",
        "events": '[{"time_unix_nano":1729627200100000000,"name":"exception",'
        '"attributes":{"exception.type":"ValueError"}}]',
        **RESOURCE_COLUMNS,
        **NO_V014,
        "attributes": {"user.id": "123"},
        "resource_attributes": RESOURCE_REST,
    }


def test_legacy_row(resource: Resource) -> None:
    span = make_span(
        startTimeUnixNano=START + 999_999_999,
        endTimeUnixNano=START + 999_999_999,
        attributes=[kv("b", sv("2")), kv("a", {"intValue": 1}), kv("c", {"boolValue": True})],
        events=...,
    )
    row = transform_span(line(span), resource, Profile.LEGACY)
    assert row == {
        "trace_id": TRACE,
        "span_id": SPAN,
        "parent_span_id": PARENT,
        "span_name": "user.login",
        "span_kind": "INTERNAL",
        "timestamp": "2024-10-22 20:00:00",
        "timestamp_ns": START + 999_999_999,
        "duration_ns": 0,
        "duration_ms": 0.0,
        "status_code": "OK",
        "status_message": "",
        "events": "[]",
        **RESOURCE_COLUMNS,
        **NO_V014,
        "attribute_keys": ["a", "b", "c"],
        "attribute_values": ["1", "2", "true"],
        "resource_keys": sorted(RESOURCE_REST),
        "resource_values": [RESOURCE_REST[k] for k in sorted(RESOURCE_REST)],
    }
    assert "attributes" not in row and "resource_attributes" not in row


@pytest.mark.parametrize("profile", list(Profile))
def test_014_columns_come_from_the_resource_the_scope_and_the_links_and_lose_nothing(profile: Profile) -> None:
    resource = parse_resource(
        line(
            {
                "attributes": [
                    kv("service.name", sv("shop")),
                    kv("user.id", sv("anon-42")),
                    kv("session.id", sv("s-1")),
                    kv("cloud.provider", sv("aws")),
                    kv("cloud.region", sv("eu-west-1")),
                    kv("cloud.availability_zone", sv("eu-west-1a")),
                ]
            }
        )
    )
    span = make_span(
        scope={"name": "my.lib", "version": "1.0"},
        links=[{"traceId": "AB" * 16, "spanId": "cd" * 8, "attributes": [kv("why", sv("retry"))]}],
    )
    row = transform_span(line(span), resource, profile)
    assert {k: row[k] for k in NO_V014} == {
        "user_id": "anon-42",
        "session_id": "s-1",
        "cloud_provider": "aws",
        "cloud_region": "eu-west-1",
        "cloud_availability_zone": "eu-west-1a",
        "instrumentation_library_name": "my.lib",
        "instrumentation_library_version": "1.0",
        "links": '[{"trace_id":"'
        + "ab" * 16
        + '","span_id":"'
        + "cd" * 8
        + '","trace_state":"","attributes":{"why":"retry"}}]',
    }
    # The resource attributes stay where they were too: a table without migration 0004 keeps them.
    kept = (
        row["resource_attributes"]
        if profile is Profile.MODERN
        else dict(zip(row["resource_keys"], row["resource_values"], strict=True))
    )
    assert kept["user.id"] == "anon-42" and kept["cloud.region"] == "eu-west-1"


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("scope", "lib", "invalid scope: not an object"),
        ("scope", {"name": 1}, "invalid scope"),
        ("links", {}, "invalid links: not a list"),
        ("links", [1], "invalid links[0]: not an object"),
        ("links", [{"traceId": 5}], "invalid links[0]"),
    ],
)
def test_bad_scope_or_links_are_transform_errors(field: str, value: Any, reason: str, resource: Resource) -> None:
    with pytest.raises(TransformError, match=re.escape(reason)):
        modern(make_span(**{field: value}), resource)


def test_modern_timestamp_has_nine_decimals(resource: Resource) -> None:
    row = modern(make_span(startTimeUnixNano=START + 145_000_001, endTimeUnixNano=...), resource)
    assert row["timestamp"] == "2024-10-22 20:00:00.145000001"
    assert row["duration_ns"] == 0


# ------------------------------------------------------------------------------------------- resource


def test_resource_split(resource: Resource) -> None:
    assert resource.columns == RESOURCE_COLUMNS
    assert resource.attributes == RESOURCE_REST
    assert resource.keys == sorted(RESOURCE_REST)
    assert set(LIFTED_RESOURCE_ATTRIBUTES.values()) == set(RESOURCE_COLUMNS)


@pytest.mark.parametrize("obj", [{}, {"attributes": []}, {"attributes": None}, {"droppedAttributesCount": 3}])
def test_empty_resource(obj: dict[str, Any]) -> None:
    r = parse_resource(line(obj))
    assert r.columns == dict.fromkeys(RESOURCE_COLUMNS, "")
    assert r.attributes == {} and r.keys == [] and r.values == []


def test_resource_duplicate_last_wins() -> None:
    r = parse_resource(
        line({"attributes": [kv("service.name", sv("a")), kv("x", sv("1")), kv("service.name", sv("b"))]})
    )
    assert r.columns["service_name"] == "b"
    assert r.attributes == {"x": "1"}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{", "resource: invalid JSON"),
        (b"\xff\n", "resource: invalid JSON"),
        (b"[]", "resource: not a JSON object"),
        (b'"x"', "resource: not a JSON object"),
        (b'{"attributes": {}}', "invalid resource.attributes: not a list"),
        (b'{"attributes": [1]}', "invalid resource.attributes: entry is not an object"),
        (b'{"attributes": [{"value": {}}]}', "invalid resource.attributes: entry without a string key"),
        (
            b'{"attributes": [{"key": "a", "value": {"intValue": "x"}}]}',
            "resource.attributes['a']: invalid intValue",
        ),
    ],
)
def test_resource_errors(raw: bytes, reason: str) -> None:
    with pytest.raises(TransformError) as e:
        parse_resource(raw)
    assert e.value.reason == reason


# --------------------------------------------------------------------------------------- any values


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (sv("x"), "x"),
        (sv(""), ""),
        (sv('uni "ç" \\ \n \x00'), 'uni "ç" \\ \n \x00'),
        ({"intValue": 42}, "42"),
        ({"intValue": "42"}, "42"),
        ({"intValue": "-9223372036854775808"}, "-9223372036854775808"),
        ({"intValue": 9223372036854775807}, "9223372036854775807"),
        ({"intValue": "007"}, "7"),
        ({"doubleValue": 1.5}, "1.5"),
        ({"doubleValue": 3}, "3.0"),
        ({"doubleValue": 0.1}, "0.1"),
        ({"doubleValue": 1e20}, "1e+20"),
        ({"doubleValue": -0.0}, "-0.0"),
        ({"doubleValue": 1.7976931348623157e308}, "1.7976931348623157e+308"),
        ({"doubleValue": "2.5"}, "2.5"),
        ({"doubleValue": "NaN"}, "NaN"),
        ({"doubleValue": "Infinity"}, "Inf"),
        ({"doubleValue": "-Infinity"}, "-Inf"),
        ({"boolValue": True}, "true"),
        ({"boolValue": False}, "false"),
        ({"bytesValue": base64.b64encode(b"\x00\x01\xff").decode()}, "AAH/"),
        ({}, ""),
        (None, ""),
        ({"arrayValue": {}}, "[]"),
        ({"arrayValue": {"values": []}}, "[]"),
        (
            {
                "arrayValue": {
                    "values": [
                        sv("a"),
                        {"intValue": "1"},
                        {"doubleValue": 1.5},
                        {"doubleValue": 2},
                        {"boolValue": False},
                        {"doubleValue": "NaN"},
                        {"doubleValue": "-Infinity"},
                        {"bytesValue": "AAE="},
                        {},
                    ]
                }
            },
            '["a",1,1.5,2.0,false,"NaN","-Inf","AAE=",null]',
        ),
        ({"kvlistValue": {}}, "{}"),
        (
            {
                "kvlistValue": {
                    "values": [
                        kv("b", {"intValue": 1}),
                        kv(
                            "a",
                            {"arrayValue": {"values": [sv("x"), {"kvlistValue": {"values": [kv("z", {})]}}]}},
                        ),
                        {"key": "n"},
                        kv("b", {"intValue": 2}),
                    ]
                }
            },
            '{"b":2,"a":["x",{"z":null}],"n":null}',
        ),
    ],
)
def test_anyvalue_rendering(value: Any, expected: str, resource: Resource) -> None:
    assert render(value, resource) == expected
    legacy = transform_span(line(make_span(attributes=[kv("k", value)])), resource, Profile.LEGACY)
    assert legacy["attribute_values"] == [expected]


def test_missing_value_is_empty(resource: Resource) -> None:
    assert modern(make_span(attributes=[{"key": "k"}]), resource)["attributes"] == {"k": ""}


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("plain", "not an AnyValue object"),
        ([], "not an AnyValue object"),
        ({"stringValue": 1}, "invalid stringValue"),
        ({"stringValue": None}, "invalid stringValue"),
        ({"stringValue": "a", "intValue": 1}, "AnyValue with several values"),
        ({"intValue": "1.5"}, "invalid intValue"),
        ({"intValue": 1.0}, "invalid intValue"),
        ({"intValue": True}, "invalid intValue"),
        ({"intValue": " 1"}, "invalid intValue"),
        ({"intValue": "1_0"}, "invalid intValue"),
        ({"intValue": "-"}, "invalid intValue"),
        ({"intValue": "٣"}, "invalid intValue"),
        ({"intValue": 9223372036854775808}, "invalid intValue"),
        ({"intValue": "-9223372036854775809"}, "invalid intValue"),
        ({"doubleValue": "inf"}, "invalid doubleValue"),
        ({"doubleValue": " 1.5"}, "invalid doubleValue"),
        ({"doubleValue": True}, "invalid doubleValue"),
        ({"doubleValue": None}, "invalid doubleValue"),
        ({"boolValue": "true"}, "invalid boolValue"),
        ({"boolValue": 1}, "invalid boolValue"),
        ({"bytesValue": 5}, "invalid bytesValue"),
        ({"fooValue": 1}, "unknown AnyValue type 'fooValue'"),
        ({"arrayValue": []}, "invalid arrayValue"),
        ({"arrayValue": {"values": "x"}}, "invalid arrayValue"),
        ({"arrayValue": {"values": [], "x": 1}}, "invalid arrayValue"),
        ({"arrayValue": {"values": [1]}}, "not an AnyValue object"),
        ({"arrayValue": {"values": [{"intValue": "x"}]}}, "invalid intValue"),
        ({"arrayValue": {"values": [{"boolValue": 0}]}}, "invalid boolValue"),
        ({"arrayValue": {"values": [{"nope": 0}]}}, "unknown AnyValue type 'nope'"),
        ({"kvlistValue": {"values": [{"value": {}}]}}, "invalid kvlistValue: entry without a string key"),
        ({"kvlistValue": {"values": [1]}}, "invalid kvlistValue: entry is not an object"),
        ({"kvlistValue": {"values": [kv("a", "x")]}}, "not an AnyValue object"),
    ],
)
def test_anyvalue_errors(value: Any, reason: str, resource: Resource) -> None:
    with pytest.raises(TransformError) as e:
        render(value, resource)
    assert e.value.reason == f"attributes['k']: {reason}"


def test_deep_nesting_is_a_transform_error(resource: Resource) -> None:
    value: Any = sv("leaf")
    for _ in range(40):
        value = {"arrayValue": {"values": [value]}}
    with pytest.raises(TransformError) as e:
        render(value, resource)
    assert e.value.reason == "attributes['k']: AnyValue nested too deeply"
    value = sv("leaf")
    for _ in range(30):
        value = {"arrayValue": {"values": [value]}}
    assert render(value, resource) == "[" * 30 + '"leaf"' + "]" * 30


def test_long_key_is_shortened_in_reason(resource: Resource) -> None:
    with pytest.raises(TransformError) as e:
        modern(make_span(attributes=[kv("k" * 1000, {"intValue": "x"})]), resource)
    assert e.value.reason == f"attributes[{'k' * 64 + '...'!r}]: invalid intValue"


def test_duplicate_attributes_last_wins(resource: Resource) -> None:
    span = make_span(attributes=[kv("b", sv("1")), kv("a", sv("1")), kv("b", sv("2"))])
    assert modern(span, resource)["attributes"] == {"b": "2", "a": "1"}
    legacy = transform_span(line(span), resource, Profile.LEGACY)
    assert (legacy["attribute_keys"], legacy["attribute_values"]) == (["a", "b"], ["1", "2"])


# ------------------------------------------------------------------------------------- kind / status


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (0, "UNSPECIFIED"),
        (1, "INTERNAL"),
        (2, "SERVER"),
        (3, "CLIENT"),
        (4, "PRODUCER"),
        (5, "CONSUMER"),
        ("SPAN_KIND_UNSPECIFIED", "UNSPECIFIED"),
        ("SPAN_KIND_INTERNAL", "INTERNAL"),
        ("SPAN_KIND_SERVER", "SERVER"),
        ("SPAN_KIND_CLIENT", "CLIENT"),
        ("SPAN_KIND_PRODUCER", "PRODUCER"),
        ("SPAN_KIND_CONSUMER", "CONSUMER"),
        ("SERVER", "SERVER"),
        (..., "UNSPECIFIED"),
    ],
)
def test_kind(kind: Any, expected: str, resource: Resource) -> None:
    assert modern(make_span(kind=kind), resource)["span_kind"] == expected


@pytest.mark.parametrize("kind", [6, -1, "SPAN_KIND_FOO", "server", True, 1.0, None, [1], "1"])
def test_bad_kind(kind: Any, resource: Resource) -> None:
    with pytest.raises(TransformError) as e:
        modern(make_span(kind=kind), resource)
    assert e.value.reason == "invalid kind"


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (..., "UNSET", ""),
        ({}, "UNSET", ""),
        ({"code": 0}, "UNSET", ""),
        ({"code": 1}, "OK", ""),
        ({"code": 2, "message": "boom"}, "ERROR", "boom"),
        ({"code": "STATUS_CODE_UNSET"}, "UNSET", ""),
        ({"code": "STATUS_CODE_OK"}, "OK", ""),
        ({"code": "STATUS_CODE_ERROR", "message": "x"}, "ERROR", "x"),
        ({"message": "only"}, "UNSET", "only"),
    ],
)
def test_status(status: Any, code: str, message: str, resource: Resource) -> None:
    row = modern(make_span(status=status), resource)
    assert (row["status_code"], row["status_message"]) == (code, message)


# ------------------------------------------------------------------------------------ ints and times


def test_int64_string_and_number_forms_agree(resource: Resource) -> None:
    as_numbers = make_span(startTimeUnixNano=START, endTimeUnixNano=END)
    as_strings = make_span(startTimeUnixNano=str(START), endTimeUnixNano=str(END))
    for profile in Profile:
        a = transform_span(line(as_numbers), resource, profile)
        b = transform_span(line(as_strings), resource, profile)
        assert a == b


def test_time_range_edges(resource: Resource) -> None:
    last = 4_291_747_200 * 1_000_000_000 - 1  # 2105-12-31 23:59:59.999999999
    row = modern(make_span(startTimeUnixNano=str(last), endTimeUnixNano=str((1 << 64) - 1)), resource)
    assert row["timestamp"] == "2105-12-31 23:59:59.999999999"
    assert row["duration_ns"] == (1 << 64) - 1 - last
    legacy = transform_span(line(make_span(startTimeUnixNano=last, endTimeUnixNano=...)), resource, Profile.LEGACY)
    assert legacy["timestamp"] == "2105-12-31 23:59:59"
    first = modern(make_span(startTimeUnixNano=10**9, endTimeUnixNano=10**9 + 1), resource)
    assert first["timestamp"] == "1970-01-01 00:00:01.000000000"
    assert first["duration_ms"] == 1e-6


@pytest.mark.parametrize("end", [..., 0, "0"])
def test_missing_end_is_zero_duration(end: Any, resource: Resource) -> None:
    row = modern(make_span(endTimeUnixNano=end), resource)
    assert (row["duration_ns"], row["duration_ms"]) == (0, 0.0)


def test_ids_normalized(resource: Resource) -> None:
    row = modern(make_span(traceId=TRACE.upper(), spanId=SPAN.upper(), parentSpanId=PARENT.upper()), resource)
    assert (row["trace_id"], row["span_id"], row["parent_span_id"]) == (TRACE, SPAN, PARENT)
    for parent in (..., "", "0" * 16, None):
        assert modern(make_span(parentSpanId=parent), resource)["parent_span_id"] == ""


# ------------------------------------------------------------------------------------------- errors

ERROR_CASES: list[tuple[Any, str]] = [
    (b"", "invalid JSON"),
    (b"{", "invalid JSON"),
    (b"\xff\xfe", "invalid JSON"),
    (b'{"a": NaN}', "invalid JSON"),
    (b"[1]", "span is not a JSON object"),
    (b"null", "span is not a JSON object"),
    ({"traceId": ...}, "missing traceId"),
    ({"traceId": ""}, "missing traceId"),
    ({"traceId": None}, "missing traceId"),
    ({"traceId": TRACE[:-1]}, "invalid traceId: not 32 hex characters"),
    ({"traceId": TRACE + "0"}, "invalid traceId: not 32 hex characters"),
    ({"traceId": "g" + TRACE[1:]}, "invalid traceId: not 32 hex characters"),
    ({"traceId": "0x" + TRACE[2:]}, "invalid traceId: not 32 hex characters"),
    ({"traceId": base64.b64encode(bytes.fromhex(TRACE)).decode()}, "invalid traceId: not 32 hex characters"),
    ({"traceId": 123}, "invalid traceId: not 32 hex characters"),
    ({"traceId": "0" * 32}, "invalid traceId: all zeros"),
    ({"spanId": ...}, "missing spanId"),
    ({"spanId": SPAN[:-1]}, "invalid spanId: not 16 hex characters"),
    ({"spanId": "é" * 16}, "invalid spanId: not 16 hex characters"),
    ({"spanId": "0" * 16}, "invalid spanId: all zeros"),
    ({"parentSpanId": "xyz"}, "invalid parentSpanId: not 16 hex characters"),
    ({"parentSpanId": 1}, "invalid parentSpanId: not 16 hex characters"),
    ({"name": ...}, "missing name"),
    ({"name": ""}, "missing name"),
    ({"name": 5}, "invalid name: not a string"),
    ({"startTimeUnixNano": ...}, "missing startTimeUnixNano"),
    ({"startTimeUnixNano": 0}, "missing startTimeUnixNano"),
    ({"startTimeUnixNano": "0"}, "missing startTimeUnixNano"),
    ({"startTimeUnixNano": ""}, "invalid startTimeUnixNano: not an unsigned 64-bit integer"),
    ({"startTimeUnixNano": -1}, "invalid startTimeUnixNano: not an unsigned 64-bit integer"),
    ({"startTimeUnixNano": 1.7e18}, "invalid startTimeUnixNano: not an unsigned 64-bit integer"),
    ({"startTimeUnixNano": "1e18"}, "invalid startTimeUnixNano: not an unsigned 64-bit integer"),
    ({"startTimeUnixNano": True}, "invalid startTimeUnixNano: not an unsigned 64-bit integer"),
    ({"startTimeUnixNano": str(1 << 64)}, "invalid startTimeUnixNano: not an unsigned 64-bit integer"),
    ({"startTimeUnixNano": 4_291_747_200 * 10**9}, "startTimeUnixNano out of DateTime range"),
    ({"startTimeUnixNano": 1}, "startTimeUnixNano out of DateTime range"),
    ({"startTimeUnixNano": 999_999_999}, "startTimeUnixNano out of DateTime range"),
    ({"startTimeUnixNano": str((1 << 64) - 1)}, "startTimeUnixNano out of DateTime range"),
    ({"endTimeUnixNano": START - 1}, "endTimeUnixNano before startTimeUnixNano"),
    ({"endTimeUnixNano": "x"}, "invalid endTimeUnixNano: not an unsigned 64-bit integer"),
    ({"endTimeUnixNano": str(1 << 64)}, "invalid endTimeUnixNano: not an unsigned 64-bit integer"),
    (
        line(make_span())[:-2] + b',"endTimeUnixNano":18446744073709551616}',
        "invalid endTimeUnixNano: not an unsigned 64-bit integer",
    ),
    ({"status": "OK"}, "invalid status: not an object"),
    ({"status": {"code": 3}}, "invalid status.code"),
    ({"status": {"code": "ERROR_X"}}, "invalid status.code"),
    ({"status": {"code": None}}, "invalid status.code"),
    ({"status": {"code": 1, "message": 5}}, "invalid status.message: not a string"),
    ({"attributes": {"a": "b"}}, "invalid attributes: not a list"),
    ({"attributes": ["a"]}, "invalid attributes: entry is not an object"),
    ({"attributes": [{"key": 1, "value": {}}]}, "invalid attributes: entry without a string key"),
    ({"attributes": [kv("a", {"intValue": "z"})]}, "attributes['a']: invalid intValue"),
    ({"events": {}}, "invalid events: not a list"),
    ({"events": [1]}, "invalid events[0]: not an object"),
    ({"events": [{"name": "e"}, {"timeUnixNano": "x"}]}, "invalid events[1].timeUnixNano"),
    ({"events": [{"name": 1}]}, "invalid events[0].name"),
    (
        {"events": [{"attributes": [kv("x", {"boolValue": 1})]}]},
        "events[0].attributes['x']: invalid boolValue",
    ),
]


@pytest.mark.parametrize(("case", "reason"), ERROR_CASES)
def test_transform_errors(case: Any, reason: str, resource: Resource) -> None:
    raw = case if isinstance(case, bytes) else line(make_span(**case))
    for profile in Profile:
        with pytest.raises(TransformError) as e:
            transform_span(raw, resource, profile)
        assert e.value.reason == reason
        assert str(e.value) == reason


def test_transform_error_is_a_value_error() -> None:
    assert issubclass(TransformError, ValueError)


# -------------------------------------------------------------------------------------- determinism


def test_events_rendering(resource: Resource) -> None:
    events = [
        {"timeUnixNano": 5, "name": "a", "attributes": [kv("x", {"doubleValue": 0.5}), kv("x", sv("y"))]},
        {"name": "b", "droppedAttributesCount": 1},
        {},
    ]
    row = modern(make_span(events=events), resource)
    assert orjson.loads(row["events"]) == [
        {"time_unix_nano": 5, "name": "a", "attributes": {"x": "y"}},
        {"time_unix_nano": 0, "name": "b", "attributes": {}},
        {"time_unix_nano": 0, "name": "", "attributes": {}},
    ]
    assert modern(make_span(events=[]), resource)["events"] == "[]"


def test_same_bytes_same_output(resource: Resource) -> None:
    span = make_span(
        attributes=[
            kv("z", {"kvlistValue": {"values": [kv("b", {"doubleValue": 0.1}), kv("a", sv("x"))]}}),
            kv("a", {"arrayValue": {"values": [{"intValue": "3"}, {"doubleValue": "NaN"}]}}),
        ],
        events=[{"timeUnixNano": "7", "name": "e", "attributes": [kv("q", {"boolValue": True})]}],
    )
    raw = line(span)
    for profile in Profile:
        first = encode_rows([transform_span(raw, resource, profile)])
        for _ in range(3):
            assert encode_rows([transform_span(raw, parse_resource(line(RESOURCE_OBJ)), profile)]) == first


def test_span_field_order_does_not_matter(resource: Resource) -> None:
    span = make_span()
    reordered = dict(reversed(list(span.items())))
    assert modern(span, resource) == modern(reordered, resource)


def test_unknown_fields_are_ignored(resource: Resource) -> None:
    span = make_span(traceState="x=y", flags=1, droppedAttributesCount=3, somethingNew={"x": 1})
    assert modern(span, resource) == modern(make_span(), resource)


def test_rows_do_not_share_mutable_span_state(resource: Resource) -> None:
    a = modern(make_span(attributes=[kv("a", sv("1"))]), resource)
    b = modern(make_span(attributes=[kv("b", sv("2"))]), resource)
    assert a["attributes"] == {"a": "1"} and b["attributes"] == {"b": "2"}


# ----------------------------------------------------------------------------------------- encoding


def test_encode_rows(resource: Resource) -> None:
    assert encode_rows([]) == b""
    rows = [
        modern(make_span(spanId=f"{i + 1:016x}", attributes=[kv("s", sv('a\nb\x00"é'))]), resource) for i in range(3)
    ]
    body = encode_rows(rows)
    assert body.endswith(b"\n") and body.count(b"\n") == 3
    assert [orjson.loads(x) for x in body.splitlines()] == rows
    legacy = [transform_span(line(make_span()), resource, Profile.LEGACY)]
    assert orjson.loads(encode_rows(legacy)) == legacy[0]


# --------------------------------------------------------------------------------------- hypothesis

_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    _json_leaf,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
_int_like = st.one_of(
    st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1),  # what orjson can write
    st.integers(min_value=-(1 << 65), max_value=1 << 65).map(str),
    st.sampled_from(["", "-", "1.5", "1e3", " 1", "0x10", "NaN", "Infinity", "-Infinity", "٣"]),
    st.floats(),
    json_values,
)


def _ids(size: int) -> st.SearchStrategy[Any]:
    hex_digits = "0123456789abcdefABCDEF"
    return st.one_of(
        st.text(alphabet=hex_digits, min_size=size, max_size=size),
        st.text(alphabet=hex_digits, min_size=size, max_size=size),
        st.text(alphabet=hex_digits, min_size=size - 1, max_size=size + 1),
        json_values,
    )


_any_value = st.recursive(
    st.one_of(
        st.builds(lambda s: {"stringValue": s}, st.one_of(st.text(max_size=10), json_values)),
        st.builds(lambda i: {"intValue": i}, _int_like),
        st.builds(lambda d: {"doubleValue": d}, st.one_of(st.floats(allow_nan=False), _int_like)),
        st.builds(lambda b: {"boolValue": b}, st.one_of(st.booleans(), json_values)),
        st.builds(lambda b: {"bytesValue": b}, st.one_of(st.text(max_size=10), json_values)),
        st.just({}),
        json_values,
    ),
    lambda children: st.one_of(
        st.builds(lambda vs: {"arrayValue": {"values": vs}}, st.lists(children, max_size=3)),
        st.builds(
            lambda kvs: {"kvlistValue": {"values": [{"key": k, "value": v} for k, v in kvs]}},
            st.lists(st.tuples(st.one_of(st.text(max_size=5), json_values), children), max_size=3),
        ),
    ),
    max_leaves=10,
)
_attrs = st.one_of(
    st.lists(
        st.one_of(
            st.builds(lambda k, v: {"key": k, "value": v}, st.text(max_size=5), _any_value),
            json_values,
        ),
        max_size=4,
    ),
    json_values,
)
span_like = st.fixed_dictionaries(
    {},
    optional={
        "traceId": _ids(32),
        "spanId": _ids(16),
        "parentSpanId": _ids(16),
        "name": st.one_of(st.text(max_size=10), json_values),
        "kind": st.one_of(st.integers(-2, 7), st.sampled_from(["SPAN_KIND_SERVER", "X"]), json_values),
        "startTimeUnixNano": _int_like,
        "endTimeUnixNano": _int_like,
        "attributes": _attrs,
        "status": st.one_of(
            st.fixed_dictionaries(
                {}, optional={"code": st.one_of(st.integers(-1, 3), json_values), "message": json_values}
            ),
            json_values,
        ),
        "events": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={"timeUnixNano": _int_like, "name": json_values, "attributes": _attrs},
                ),
                max_size=3,
            ),
            json_values,
        ),
    },
)


def _check_only_transform_errors(raw: bytes, resource: Resource) -> None:
    for profile in Profile:
        try:
            row = transform_span(raw, resource, profile)
        except TransformError as e:
            assert e.reason and len(e.reason) < 200
        else:
            body = encode_rows([row])  # whatever transforms must encode
            assert orjson.loads(body) == row


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_only_raise_transform_error(raw: bytes) -> None:
    resource = parse_resource(line(RESOURCE_OBJ))
    _check_only_transform_errors(raw, resource)
    with contextlib.suppress(TransformError):
        parse_resource(raw)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(json_values)
def test_arbitrary_json_only_raises_transform_error(value: Any) -> None:
    resource = parse_resource(line(RESOURCE_OBJ))
    _check_only_transform_errors(orjson.dumps(value), resource)
    with contextlib.suppress(TransformError):
        parse_resource(orjson.dumps(value))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(span_like, st.sampled_from(["bare", "over_valid", "over_valid_keep_ids"]))
def test_span_shaped_json_only_raises_transform_error(span: dict[str, Any], mode: str) -> None:
    resource = parse_resource(line(RESOURCE_OBJ))
    if mode != "bare":  # start from a valid span so that the later fields are reached too
        merged = make_span()
        for key, value in copy.deepcopy(span).items():
            if mode == "over_valid" or key not in ("traceId", "spanId", "parentSpanId", "name"):
                merged[key] = value
        span = merged
    _check_only_transform_errors(line(span), resource)
    with contextlib.suppress(TransformError):
        parse_resource(line({"attributes": span.get("attributes")}))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=8), _any_value), max_size=6))
def test_valid_attributes_are_deterministic(pairs: list[tuple[str, Any]]) -> None:
    resource = parse_resource(line(RESOURCE_OBJ))
    raw = line(make_span(attributes=[{"key": k, "value": v} for k, v in pairs]))
    try:
        first = transform_span(raw, resource, Profile.MODERN)
    except TransformError:
        return
    assert transform_span(raw, resource, Profile.MODERN) == first
    legacy = transform_span(raw, resource, Profile.LEGACY)
    assert legacy["attribute_keys"] == sorted(first["attributes"])
    assert legacy["attribute_values"] == [first["attributes"][k] for k in legacy["attribute_keys"]]
