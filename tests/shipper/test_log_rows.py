"""Unit tests of automagik_telemetry_agent.clickhouse.log_rows: OTLP logRecord lines -> rows of both profiles."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from automagik_telemetry_agent.clickhouse.log_rows import (
    LIFTED_LOG_ATTRIBUTES,
    log_row_keys,
    severity_text_of,
    transform_log,
)
from automagik_telemetry_agent.clickhouse.rows import Profile, Resource, encode_rows, parse_resource
from automagik_telemetry_agent.clickhouse.scalars import MAX_START_NS, MIN_START_NS, TransformError

TRACE = "5B8EFFF798038103D269B633813FC60C"  # upper case on purpose: rows hold it lower-cased
SPAN = "EEE19B7EC3C1B174"
TIME = 1729627200123456789  # 2024-10-22 20:00:00.123456789 UTC
OBSERVED = 1729627200200000000
U32_MAX = 2**32 - 1


def sv(s: str) -> dict[str, Any]:
    return {"stringValue": s}


def kv(key: str, value: Any) -> dict[str, Any]:
    return {"key": key, "value": value}


def line(obj: Any) -> bytes:
    return orjson.dumps(obj) + b"\n"


RESOURCE_OBJ = {
    "attributes": [
        kv("service.name", sv("shop")),
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
    "service_name": "shop",
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


def make_log(**over: Any) -> dict[str, Any]:
    """A log record as the Python client's logging handler writes it; ``member=...`` removes a member."""
    record: dict[str, Any] = {
        "timeUnixNano": TIME,
        "observedTimeUnixNano": OBSERVED,
        "severityNumber": 13,
        "severityText": "WARNING",
        "body": sv("payment declined"),
        "attributes": [
            kv("logger.name", sv("shop.payments")),
            kv("code.filepath", sv("/srv/shop/payments.py")),
            kv("code.lineno", {"intValue": 42}),
            kv("code.function", sv("charge")),
            kv("exception.type", sv("ValueError")),
            kv("exception.message", sv("card declined")),
            kv("exception.stacktrace", sv('Traceback (most recent call last):\n  File "x", line 1')),
            kv("retries", {"intValue": "3"}),
        ],
        "traceId": TRACE,
        "spanId": SPAN,
        "scope": {"name": "shop.payments", "version": "2.0"},
    }
    for key, value in over.items():
        if value is ...:
            record.pop(key, None)
        else:
            record[key] = value
    return record


@pytest.fixture(scope="module")
def resource() -> Resource:
    return parse_resource(line(RESOURCE_OBJ))


def modern(record: dict[str, Any], resource: Resource) -> dict[str, Any]:
    return transform_log(line(record), resource, Profile.MODERN)


def both(record: dict[str, Any] | bytes, resource: Resource) -> list[dict[str, Any]]:
    raw = record if isinstance(record, bytes) else line(record)
    return [transform_log(raw, resource, profile) for profile in Profile]


def refused(record: dict[str, Any] | bytes, resource: Resource) -> str:
    """The reason both profiles give for refusing ``record`` (they must agree)."""
    raw = record if isinstance(record, bytes) else line(record)
    reasons = set()
    for profile in Profile:
        with pytest.raises(TransformError) as e:
            transform_log(raw, resource, profile)
        assert str(e.value) == e.value.reason
        reasons.add(e.value.reason)
    (reason,) = reasons
    return reason


# ----------------------------------------------------------------------------------------- full rows


def test_a_full_record_becomes_the_documented_modern_row(resource: Resource) -> None:
    assert modern(make_log(), resource) == {
        "timestamp": "2024-10-22 20:00:00.123456789",
        "timestamp_ns": TIME,
        "observed_timestamp": "2024-10-22 20:00:00.200000000",
        "trace_id": TRACE.lower(),
        "span_id": SPAN.lower(),
        "severity_text": "WARNING",
        "severity_number": 13,
        "body": "payment declined",
        **RESOURCE_COLUMNS,
        "scope_name": "shop.payments",
        "scope_version": "2.0",
        "attributes": {"logger.name": "shop.payments", "retries": "3"},
        "resource_attributes": RESOURCE_REST,
        "is_exception": 1,
        "exception_type": "ValueError",
        "exception_message": "card declined",
        "exception_stacktrace": 'Traceback (most recent call last):\n  File "x", line 1',
        "source_file": "/srv/shop/payments.py",
        "source_line": 42,
        "source_function": "charge",
    }


def test_a_full_record_becomes_the_documented_legacy_row(resource: Resource) -> None:
    row = transform_log(line(make_log()), resource, Profile.LEGACY)
    assert row == {
        "timestamp": "2024-10-22 20:00:00",
        "timestamp_ns": TIME,
        "observed_timestamp_ns": OBSERVED,
        "trace_id": TRACE.lower(),
        "span_id": SPAN.lower(),
        "severity_text": "WARNING",
        "severity_number": 13,
        "body": "payment declined",
        **RESOURCE_COLUMNS,
        "scope_name": "shop.payments",
        "scope_version": "2.0",
        "attribute_keys": ["logger.name", "retries"],
        "attribute_values": ["shop.payments", "3"],
        "resource_keys": sorted(RESOURCE_REST),
        "resource_values": [RESOURCE_REST[k] for k in sorted(RESOURCE_REST)],
        "is_exception": 1,
        "exception_type": "ValueError",
        "exception_message": "card declined",
        "exception_stacktrace": 'Traceback (most recent call last):\n  File "x", line 1',
        "source_file": "/srv/shop/payments.py",
        "source_line": 42,
        "source_function": "charge",
    }


def test_every_row_fills_exactly_the_columns_log_row_keys_names(resource: Resource) -> None:
    minimal = {"observedTimeUnixNano": TIME}
    for profile in Profile:
        for record in (make_log(), minimal):
            assert set(transform_log(line(record), resource, profile)) == log_row_keys(profile)
    assert log_row_keys(Profile.MODERN) - log_row_keys(Profile.LEGACY) == {
        "observed_timestamp",
        "attributes",
        "resource_attributes",
    }
    assert log_row_keys(Profile.LEGACY) - log_row_keys(Profile.MODERN) == {
        "observed_timestamp_ns",
        "attribute_keys",
        "attribute_values",
        "resource_keys",
        "resource_values",
    }


def test_a_minimal_record_gets_empty_defaults_in_every_column(resource: Resource) -> None:
    empty = parse_resource(b"{}")
    row = modern({"timeUnixNano": str(TIME)}, empty)
    assert row == {
        "timestamp": "2024-10-22 20:00:00.123456789",
        "timestamp_ns": TIME,
        "observed_timestamp": "2024-10-22 20:00:00.123456789",
        "trace_id": "",
        "span_id": "",
        "severity_text": "",
        "severity_number": 0,
        "body": "",
        **dict.fromkeys(RESOURCE_COLUMNS, ""),
        "scope_name": "",
        "scope_version": "",
        "attributes": {},
        "resource_attributes": {},
        "is_exception": 0,
        "exception_type": "",
        "exception_message": "",
        "exception_stacktrace": "",
        "source_file": "",
        "source_line": 0,
        "source_function": "",
    }


def test_rows_encode_as_json_lines_that_read_back_equal(resource: Resource) -> None:
    rows = [modern(make_log(timeUnixNano=TIME + i, body=sv(f'line {i}\n"\x00é')), resource) for i in range(3)]
    body = encode_rows(rows)
    assert body.count(b"\n") == 3
    assert [orjson.loads(x) for x in body.splitlines()] == rows
    legacy = transform_log(line(make_log()), resource, Profile.LEGACY)
    assert orjson.loads(encode_rows([legacy])) == legacy


# --------------------------------------------------------------------------------------------- times


@pytest.mark.parametrize("time", [..., 0, "0", None])
def test_the_time_falls_back_to_the_observed_time_when_absent_or_zero(time: Any, resource: Resource) -> None:
    modern_row, legacy_row = both(make_log(timeUnixNano=time), resource)
    assert modern_row["timestamp_ns"] == legacy_row["timestamp_ns"] == OBSERVED
    assert modern_row["timestamp"] == modern_row["observed_timestamp"] == "2024-10-22 20:00:00.200000000"
    assert legacy_row["timestamp"] == "2024-10-22 20:00:00"
    assert legacy_row["observed_timestamp_ns"] == OBSERVED


@pytest.mark.parametrize("observed", [..., 0, "0", None])
def test_the_observed_time_falls_back_to_the_time_when_absent_or_zero(observed: Any, resource: Resource) -> None:
    modern_row, legacy_row = both(make_log(observedTimeUnixNano=observed), resource)
    assert modern_row["timestamp_ns"] == legacy_row["observed_timestamp_ns"] == TIME
    assert modern_row["observed_timestamp"] == modern_row["timestamp"] == "2024-10-22 20:00:00.123456789"


def test_the_time_and_the_observed_time_are_kept_apart_when_both_are_set(resource: Resource) -> None:
    modern_row, legacy_row = both(make_log(timeUnixNano=OBSERVED, observedTimeUnixNano=TIME), resource)
    assert (modern_row["timestamp_ns"], modern_row["observed_timestamp"]) == (
        OBSERVED,
        "2024-10-22 20:00:00.123456789",
    )
    assert (legacy_row["timestamp_ns"], legacy_row["observed_timestamp_ns"]) == (OBSERVED, TIME)


@pytest.mark.parametrize(("time", "observed"), [(..., ...), (0, 0), ("0", ...), (None, None), (..., "0")])
def test_a_record_without_either_time_is_refused(time: Any, observed: Any, resource: Resource) -> None:
    record = make_log(timeUnixNano=time, observedTimeUnixNano=observed)
    assert refused(record, resource) == "missing timeUnixNano and observedTimeUnixNano"


def test_times_may_be_numbers_or_decimal_strings(resource: Resource) -> None:
    as_numbers = both(make_log(), resource)
    as_strings = both(make_log(timeUnixNano=str(TIME), observedTimeUnixNano=str(OBSERVED)), resource)
    assert as_numbers == as_strings


@pytest.mark.parametrize(
    ("ns", "modern_text", "legacy_text"),
    [
        (MIN_START_NS, "1970-01-01 00:00:01.000000000", "1970-01-01 00:00:01"),
        (MAX_START_NS, "2105-12-31 23:59:59.999999999", "2105-12-31 23:59:59"),
        (1_000_000_000_000_000_001, "2001-09-09 01:46:40.000000001", "2001-09-09 01:46:40"),
    ],
)
def test_the_accepted_time_range_and_its_text_in_each_profile(
    ns: int, modern_text: str, legacy_text: str, resource: Resource
) -> None:
    for member in ("timeUnixNano", "observedTimeUnixNano"):
        record = make_log(**{"timeUnixNano": ..., "observedTimeUnixNano": ..., member: ns})
        modern_row, legacy_row = both(record, resource)
        assert (modern_row["timestamp"], modern_row["timestamp_ns"]) == (modern_text, ns)
        assert modern_row["observed_timestamp"] == modern_text
        assert (legacy_row["timestamp"], legacy_row["timestamp_ns"], legacy_row["observed_timestamp_ns"]) == (
            legacy_text,
            ns,
            ns,
        )


@pytest.mark.parametrize("member", ["timeUnixNano", "observedTimeUnixNano"])
@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (1, "{} out of DateTime range"),
        (MIN_START_NS - 1, "{} out of DateTime range"),
        (MAX_START_NS + 1, "{} out of DateTime range"),
        (str((1 << 64) - 1), "{} out of DateTime range"),
        (str(1 << 64), "invalid {}: not an unsigned 64-bit integer"),
        (-1, "invalid {}: not an unsigned 64-bit integer"),
        (1.7e18, "invalid {}: not an unsigned 64-bit integer"),
        ("1.7e18", "invalid {}: not an unsigned 64-bit integer"),
        ("", "invalid {}: not an unsigned 64-bit integer"),
        (" 1", "invalid {}: not an unsigned 64-bit integer"),
        ("٣", "invalid {}: not an unsigned 64-bit integer"),
        (True, "invalid {}: not an unsigned 64-bit integer"),
        ([TIME], "invalid {}: not an unsigned 64-bit integer"),
    ],
)
def test_a_time_out_of_range_or_not_an_integer_is_refused_even_with_the_other_valid(
    member: str, value: Any, reason: str, resource: Resource
) -> None:
    assert refused(make_log(**{member: value}), resource) == reason.format(member)


# ------------------------------------------------------------------------------------------ severity


@pytest.mark.parametrize(
    ("number", "name"),
    [
        (0, ""),
        (1, "TRACE"),
        (4, "TRACE"),
        (5, "DEBUG"),
        (8, "DEBUG"),
        (9, "INFO"),
        (12, "INFO"),
        (13, "WARN"),
        (16, "WARN"),
        (17, "ERROR"),
        (20, "ERROR"),
        (21, "FATAL"),
        (24, "FATAL"),
    ],
)
def test_a_missing_severity_text_is_the_name_of_the_numbers_range(number: int, name: str, resource: Resource) -> None:
    assert severity_text_of(number) == name
    for text in (..., "", None):
        for row in both(make_log(severityNumber=number, severityText=text), resource):
            assert (row["severity_number"], row["severity_text"]) == (number, name)


@pytest.mark.parametrize(
    ("given", "number"),
    [
        ("SEVERITY_NUMBER_UNSPECIFIED", 0),
        ("SEVERITY_NUMBER_TRACE", 1),
        ("SEVERITY_NUMBER_TRACE4", 4),
        ("SEVERITY_NUMBER_DEBUG2", 6),
        ("SEVERITY_NUMBER_INFO", 9),
        ("SEVERITY_NUMBER_WARN", 13),
        ("SEVERITY_NUMBER_ERROR3", 19),
        ("SEVERITY_NUMBER_FATAL", 21),
        ("SEVERITY_NUMBER_FATAL4", 24),
        ("17", 17),
        ("0", 0),
        (..., 0),
    ],
)
def test_the_severity_number_may_be_its_enum_name_or_a_decimal_string(
    given: Any, number: int, resource: Resource
) -> None:
    for row in both(make_log(severityNumber=given, severityText=...), resource):
        assert (row["severity_number"], row["severity_text"]) == (number, severity_text_of(number))


def test_a_given_severity_text_is_kept_as_is(resource: Resource) -> None:
    for text in ("WARNING", "warn", "CRITICAL", "É ✓ \n"):
        for row in both(make_log(severityNumber=21, severityText=text), resource):
            assert (row["severity_number"], row["severity_text"]) == (21, text)
    assert modern(make_log(severityNumber=..., severityText="custom"), resource)["severity_number"] == 0


@pytest.mark.parametrize(
    "number", [25, -1, 255, "25", "-1", "SEVERITY_NUMBER_WARN5", "WARN", "warn", "", True, 13.0, None, [13], {}]
)
def test_a_severity_number_outside_0_to_24_or_not_an_enum_name_is_refused(number: Any, resource: Resource) -> None:
    reason = refused(make_log(severityNumber=number), resource)
    assert reason == "invalid severityNumber: not 0..24 or a SEVERITY_NUMBER_ name"


@pytest.mark.parametrize("text", [5, True, ["WARN"], {"x": 1}])
def test_a_severity_text_that_is_not_a_string_is_refused(text: Any, resource: Resource) -> None:
    assert refused(make_log(severityText=text), resource) == "invalid severityText: not a string"


# ---------------------------------------------------------------------------------------------- body


@pytest.mark.parametrize(
    ("body", "stored"),
    [
        (..., ""),
        (None, ""),
        ({}, ""),
        (sv(""), ""),
        (sv("plain text"), "plain text"),
        (sv('multi\nline "quoted" \\ \x00 é✓😀'), 'multi\nline "quoted" \\ \x00 é✓😀'),
        ({"intValue": "007"}, "7"),
        ({"intValue": -9223372036854775808}, "-9223372036854775808"),
        ({"doubleValue": 0.1}, "0.1"),
        ({"doubleValue": 1}, "1.0"),
        ({"doubleValue": "NaN"}, "NaN"),
        ({"doubleValue": "-Infinity"}, "-Inf"),
        ({"boolValue": True}, "true"),
        ({"boolValue": False}, "false"),
        ({"bytesValue": "AQID"}, "AQID"),
        (
            {
                "arrayValue": {
                    "values": [sv("a"), {"intValue": 1}, {"doubleValue": "Infinity"}, {}, {"boolValue": False}]
                }
            },
            '["a",1,"Inf",null,false]',
        ),
        ({"arrayValue": {}}, "[]"),
        (
            {"kvlistValue": {"values": [kv("user", sv("ann")), kv("n", {"intValue": "2"}), kv("none", {})]}},
            '{"user":"ann","n":2,"none":null}',
        ),
        (
            {"kvlistValue": {"values": [kv("event", sv("login")), kv("tags", {"arrayValue": {"values": [sv("x")]}})]}},
            '{"event":"login","tags":["x"]}',
        ),
    ],
)
def test_the_body_of_each_anyvalue_kind_is_stored_as_text(body: Any, stored: str, resource: Resource) -> None:
    for row in both(make_log(body=body), resource):
        assert row["body"] == stored


@pytest.mark.parametrize(
    ("body", "inner"),
    [
        ("plain", "not an AnyValue object"),
        (5, "not an AnyValue object"),
        ({"intValue": "z"}, "invalid intValue"),
        ({"intValue": str(1 << 63)}, "invalid intValue"),
        ({"boolValue": 1}, "invalid boolValue"),
        ({"stringValue": 5}, "invalid stringValue"),
        ({"htmlValue": "<b>"}, "unknown AnyValue type 'htmlValue'"),
        ({"stringValue": "a", "intValue": 1}, "AnyValue with several values"),
        ({"arrayValue": {"values": "x"}}, "invalid arrayValue"),
    ],
)
def test_a_malformed_body_is_refused_with_the_reason(body: Any, inner: str, resource: Resource) -> None:
    reason = refused(make_log(body=body), resource)
    assert reason.startswith("body") and reason.endswith(inner), reason


# ---------------------------------------------------------------------------------- lifted attributes


def test_the_lifted_attributes_are_the_semantic_conventions_exception_and_code_ones() -> None:
    assert LIFTED_LOG_ATTRIBUTES == {
        "exception.type": "exception_type",
        "exception.message": "exception_message",
        "exception.stacktrace": "exception_stacktrace",
        "code.filepath": "source_file",
        "code.lineno": "source_line",
        "code.function": "source_function",
    }


def test_exception_and_code_attributes_become_columns_and_leave_the_attributes(resource: Resource) -> None:
    modern_row, legacy_row = both(make_log(), resource)
    for row in (modern_row, legacy_row):
        assert {column: row[column] for column in LIFTED_LOG_ATTRIBUTES.values()} == {
            "exception_type": "ValueError",
            "exception_message": "card declined",
            "exception_stacktrace": 'Traceback (most recent call last):\n  File "x", line 1',
            "source_file": "/srv/shop/payments.py",
            "source_line": 42,
            "source_function": "charge",
        }
    assert modern_row["attributes"] == {"logger.name": "shop.payments", "retries": "3"}
    assert legacy_row["attribute_keys"] == ["logger.name", "retries"]
    assert not set(LIFTED_LOG_ATTRIBUTES) & set(legacy_row["attribute_keys"])


def test_lifted_attributes_that_are_not_strings_are_rendered_like_any_attribute(resource: Resource) -> None:
    attributes = [
        kv("exception.type", {"intValue": 7}),
        kv("exception.message", {"kvlistValue": {"values": [kv("a", {"boolValue": True})]}}),
        kv("code.function", {"doubleValue": 0.5}),
        kv("code.filepath", {}),
    ]
    row = modern(make_log(attributes=attributes), resource)
    assert (row["exception_type"], row["exception_message"], row["source_function"], row["source_file"]) == (
        "7",
        '{"a":true}',
        "0.5",
        "",
    )
    assert row["attributes"] == {}


@pytest.mark.parametrize(
    ("present", "is_exception"),
    [
        ({"exception.type": "KeyError"}, 1),
        ({"exception.message": "boom"}, 1),
        ({"exception.type": "KeyError", "exception.message": "boom"}, 1),
        ({"exception.stacktrace": "Traceback ..."}, 0),
        ({"exception.type": ""}, 0),
        ({"code.function": "f"}, 0),
        ({}, 0),
    ],
)
def test_a_record_is_an_exception_when_it_has_an_exception_type_or_message(
    present: dict[str, str], is_exception: int, resource: Resource
) -> None:
    attributes = [kv(k, sv(v)) for k, v in present.items()]
    for row in both(make_log(attributes=attributes), resource):
        assert row["is_exception"] == is_exception
        assert row["exception_stacktrace"] == present.get("exception.stacktrace", "")


@pytest.mark.parametrize(
    ("lineno", "source_line"),
    [
        ({"intValue": 42}, 42),
        ({"intValue": "42"}, 42),
        (sv("42"), 42),
        (sv("0042"), 42),
        ({"intValue": U32_MAX}, U32_MAX),
        ({"intValue": U32_MAX + 1}, 0),
        ({"intValue": -1}, 0),
        ({"intValue": "9223372036854775807"}, 0),
        (sv("42a"), 0),
        (sv(" 42"), 0),
        (sv(""), 0),
        (sv("²"), 0),  # str.isdigit() says yes, int() says no
        (sv("٤٢"), 0),  # Arabic-Indic digits: not an ASCII line number
        (sv("1" * 5000), 0),  # longer than int() converts
        ({"doubleValue": 42.0}, 0),
        ({"boolValue": True}, 0),
        ({}, 0),
    ],
)
def test_the_source_line_is_a_uint32_from_an_int_or_decimal_text_else_0_and_leaves_the_attributes(
    lineno: Any, source_line: int, resource: Resource
) -> None:
    for row in both(make_log(attributes=[kv("code.lineno", lineno), kv("k", sv("v"))]), resource):
        assert row["source_line"] == source_line
        assert "code.lineno" not in row.get("attributes", {}) and "code.lineno" not in row.get("attribute_keys", [])


def test_attributes_render_like_span_attributes_and_the_last_duplicate_wins(resource: Resource) -> None:
    attributes = [
        kv("s", sv("x")),
        kv("i", {"intValue": "-5"}),
        kv("d", {"doubleValue": "1e16"}),
        kv("b", {"boolValue": False}),
        kv("arr", {"arrayValue": {"values": [sv("a"), {"doubleValue": "NaN"}]}}),
        kv("empty", {}),
        kv("no value", None),
        kv("s", sv("last")),
        kv("exception.type", sv("first")),
        kv("exception.type", sv("second")),
    ]
    modern_row, legacy_row = both(make_log(attributes=attributes), resource)
    expected = {"s": "last", "i": "-5", "d": "1e+16", "b": "false", "arr": '["a","NaN"]', "empty": "", "no value": ""}
    assert modern_row["attributes"] == expected
    assert modern_row["exception_type"] == "second"
    assert legacy_row["attribute_keys"] == sorted(expected)
    assert legacy_row["attribute_values"] == [expected[k] for k in sorted(expected)]


@pytest.mark.parametrize(
    ("attributes", "reason"),
    [
        ({"a": "b"}, "invalid attributes: not a list"),
        ("a", "invalid attributes: not a list"),
        (["a"], "invalid attributes: entry is not an object"),
        ([{"key": 1, "value": sv("x")}], "invalid attributes: entry without a string key"),
        ([kv("a", {"intValue": "z"})], "attributes['a']: invalid intValue"),
        ([kv("code.lineno", {"intValue": 1.5})], "attributes['code.lineno']: invalid intValue"),
    ],
)
def test_malformed_attributes_are_refused_with_the_key_in_the_reason(
    attributes: Any, reason: str, resource: Resource
) -> None:
    assert refused(make_log(attributes=attributes), resource) == reason


def test_the_resource_fills_the_lifted_columns_and_the_rest_goes_to_the_resource_attributes(
    resource: Resource,
) -> None:
    modern_row, legacy_row = both(make_log(), resource)
    assert {k: modern_row[k] for k in RESOURCE_COLUMNS} == RESOURCE_COLUMNS
    assert modern_row["resource_attributes"] == RESOURCE_REST
    assert legacy_row["resource_keys"] == sorted(RESOURCE_REST)
    assert legacy_row["resource_values"] == [RESOURCE_REST[k] for k in sorted(RESOURCE_REST)]


# ----------------------------------------------------------------------------------------------- ids


def test_ids_are_optional_and_lower_cased(resource: Resource) -> None:
    for trace_id, span_id in ((..., ...), ("", ""), (None, None), ("0" * 32, "0" * 16)):
        for row in both(make_log(traceId=trace_id, spanId=span_id), resource):
            assert (row["trace_id"], row["span_id"]) == ("", "")
    for row in both(make_log(), resource):
        assert (row["trace_id"], row["span_id"]) == (TRACE.lower(), SPAN.lower())
    # Each id stands on its own: a span id without a trace id is kept.
    row = modern(make_log(traceId=..., spanId="00000000000000aB"), resource)
    assert (row["trace_id"], row["span_id"]) == ("", "00000000000000ab")


@pytest.mark.parametrize(
    ("member", "length"),
    [("traceId", 32), ("spanId", 16)],
)
@pytest.mark.parametrize(
    "make_bad",
    [
        lambda ok: ok[:-1],
        lambda ok: ok + "0",
        lambda ok: "g" + ok[1:],
        lambda ok: "0x" + ok[2:],
        lambda ok: " " + ok[1:],
        lambda ok: ok[:-2] + " 0",
        lambda ok: "é" * len(ok),
        lambda ok: int(ok[:8], 16),
        lambda ok: [ok],
        lambda ok: True,
    ],
)
def test_an_id_that_is_not_the_right_number_of_hex_digits_is_refused(
    member: str, length: int, make_bad: Any, resource: Resource
) -> None:
    ok = TRACE if member == "traceId" else SPAN
    assert refused(make_log(**{member: make_bad(ok)}), resource) == f"invalid {member}: not {length} hex characters"


# --------------------------------------------------------------------------------------------- scope


@pytest.mark.parametrize(
    ("scope", "name", "version"),
    [
        (..., "", ""),
        (None, "", ""),
        ({}, "", ""),
        ({"name": "shop.db"}, "shop.db", ""),
        ({"version": "1.0"}, "", "1.0"),
        ({"name": "shop.db", "version": "1.0", "attributes": [kv("x", sv("y"))]}, "shop.db", "1.0"),
    ],
)
def test_the_scope_gives_its_name_and_version(scope: Any, name: str, version: str, resource: Resource) -> None:
    for row in both(make_log(scope=scope), resource):
        assert (row["scope_name"], row["scope_version"]) == (name, version)


@pytest.mark.parametrize(
    ("scope", "reason"),
    [
        ("shop.db", "invalid scope: not an object"),
        ([{"name": "x"}], "invalid scope: not an object"),
        ({"name": 1}, "invalid scope: name and version must be strings"),
        ({"name": "x", "version": 2}, "invalid scope: name and version must be strings"),
        ({"name": None}, "invalid scope: name and version must be strings"),
    ],
)
def test_a_malformed_scope_is_refused(scope: Any, reason: str, resource: Resource) -> None:
    assert refused(make_log(scope=scope), resource) == reason


# ------------------------------------------------------------------------------------------ the line


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "invalid JSON"),
        (b"{", "invalid JSON"),
        (b'{"timeUnixNano": NaN}', "invalid JSON"),
        (b"\xff", "invalid JSON"),
        (b"[1]", "not a JSON object"),
        (b"null", "not a JSON object"),
        (b'"log"', "not a JSON object"),
        (b"17", "not a JSON object"),
    ],
)
def test_a_line_that_is_not_a_json_object_is_refused(raw: bytes, reason: str, resource: Resource) -> None:
    assert refused(raw, resource) == reason


def test_unknown_members_are_ignored_and_member_order_does_not_matter(resource: Resource) -> None:
    record = make_log()
    extra = {**record, "droppedAttributesCount": 3, "flags": 1, "eventName": "x", "nested": {"a": [1]}}
    shuffled = dict(reversed(list(record.items())))
    assert both(extra, resource) == both(shuffled, resource) == both(record, resource)


def test_the_same_bytes_always_give_the_same_row(resource: Resource) -> None:
    raw = line(make_log())
    first = transform_log(raw, resource, Profile.MODERN)
    again = transform_log(raw, resource, Profile.MODERN)
    assert first == again and encode_rows([first]) == encode_rows([again])


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
    st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1),
    st.integers(min_value=MIN_START_NS, max_value=MAX_START_NS),
    st.integers(min_value=-(1 << 65), max_value=1 << 65).map(str),
    st.sampled_from(["", "-", "0", "1.5", "1e3", " 1", "0x10", "NaN", "Infinity", "٣", "²", "4294967296"]),
    st.floats(),
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
_keys = st.one_of(st.sampled_from([*LIFTED_LOG_ATTRIBUTES, "logger.name"]), st.text(max_size=5))
_attrs = st.one_of(
    st.lists(
        st.one_of(st.builds(lambda k, v: {"key": k, "value": v}, _keys, _any_value), json_values),
        max_size=5,
    ),
    json_values,
)


def _ids(size: int) -> st.SearchStrategy[Any]:
    hex_digits = "0123456789abcdefABCDEF"
    return st.one_of(
        st.text(alphabet=hex_digits, min_size=size, max_size=size),
        st.text(alphabet=hex_digits, min_size=size - 1, max_size=size + 1),
        st.just("0" * size),
        json_values,
    )


log_like = st.fixed_dictionaries(
    {},
    optional={
        "timeUnixNano": _int_like,
        "observedTimeUnixNano": _int_like,
        "severityNumber": st.one_of(
            st.integers(-2, 26), st.sampled_from(["SEVERITY_NUMBER_WARN", "SEVERITY_NUMBER_FATAL4", "13"]), json_values
        ),
        "severityText": st.one_of(st.text(max_size=8), json_values),
        "body": _any_value,
        "attributes": _attrs,
        "traceId": _ids(32),
        "spanId": _ids(16),
        "scope": st.one_of(
            st.fixed_dictionaries({}, optional={"name": json_values, "version": json_values}), json_values
        ),
    },
)


def _check_only_transform_errors(raw: bytes, resource: Resource) -> None:
    for profile in Profile:
        try:
            row = transform_log(raw, resource, profile)
        except TransformError as e:
            assert e.reason and len(e.reason) < 200
        else:
            assert set(row) == log_row_keys(profile)
            assert 0 <= row["severity_number"] <= 24 and 0 <= row["source_line"] <= U32_MAX
            assert MIN_START_NS <= row["timestamp_ns"] <= MAX_START_NS
            body = encode_rows([row])  # whatever transforms must encode
            assert orjson.loads(body) == row


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_only_raise_transform_error(raw: bytes) -> None:
    _check_only_transform_errors(raw, parse_resource(line(RESOURCE_OBJ)))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(json_values)
def test_arbitrary_json_only_raises_transform_error(value: Any) -> None:
    _check_only_transform_errors(orjson.dumps(value), parse_resource(line(RESOURCE_OBJ)))


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(log_like, st.booleans())
def test_log_shaped_json_only_raises_transform_error(record: dict[str, Any], over_valid: bool) -> None:
    if over_valid:  # start from a valid record so that the later members are reached too
        record = {**make_log(), **copy.deepcopy(record)}
    _check_only_transform_errors(line(record), parse_resource(line(RESOURCE_OBJ)))


def test_a_time_of_thousands_of_digits_is_a_transform_error(resource: Resource) -> None:
    with pytest.raises(TransformError):  # not int()'s ValueError past 4300 digits
        transform_log(line(make_log(timeUnixNano="1" * 5000)), resource, Profile.MODERN)
