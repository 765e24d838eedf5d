"""Attribute values encode to OTLP/JSON AnyValue for every type, and never raise."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from automagik_telemetry.attributes import UNREPRESENTABLE, any_value, key_values


def encode(value: Any, max_length: int = 4096) -> Any:
    text = any_value(value, max_length)
    return None if text is None else json.loads(text)


class StrRaises:
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


class StrReturnsNonStr:
    def __str__(self) -> Any:
        return 42


class ClassRaises:
    @property  # type: ignore[misc]
    def __class__(self) -> Any:
        raise RuntimeError("hostile")


class ItemsRaises(dict):  # type: ignore[type-arg]
    def items(self) -> Any:
        raise RuntimeError("no items")


class Point:
    def __str__(self) -> str:
        return "Point(1, 2)"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("hi", {"stringValue": "hi"}),
        ("", {"stringValue": ""}),
        (True, {"boolValue": True}),
        (False, {"boolValue": False}),
        (0, {"intValue": 0}),
        (-(2**63), {"intValue": -(2**63)}),
        (2**63 - 1, {"intValue": 2**63 - 1}),
        (2**63, {"stringValue": str(2**63)}),  # beyond int64
        (1.5, {"doubleValue": 1.5}),
        (-0.0, {"doubleValue": -0.0}),
        (1e300, {"doubleValue": 1e300}),
        (float("nan"), {"stringValue": "nan"}),
        (float("inf"), {"stringValue": "inf"}),
        (float("-inf"), {"stringValue": "-inf"}),
        (b"\x00\xffab", {"bytesValue": base64.b64encode(b"\x00\xffab").decode()}),
        (bytearray(b"xy"), {"bytesValue": base64.b64encode(b"xy").decode()}),
        (
            [1, "a", None, 2.5],
            {"arrayValue": {"values": [{"intValue": 1}, {"stringValue": "a"}, {"doubleValue": 2.5}]}},
        ),
        ((True,), {"arrayValue": {"values": [{"boolValue": True}]}}),
        (
            {"k": 1, "n": None, 3: "x"},
            {
                "kvlistValue": {
                    "values": [{"key": "k", "value": {"intValue": 1}}, {"key": "3", "value": {"stringValue": "x"}}]
                }
            },
        ),
        (Point(), {"stringValue": "Point(1, 2)"}),
        (StrRaises(), {"stringValue": UNREPRESENTABLE}),
        (StrReturnsNonStr(), {"stringValue": UNREPRESENTABLE}),
        (
            {"bad": ItemsRaises(a=1)},
            {"kvlistValue": {"values": [{"key": "bad", "value": {"kvlistValue": {"values": []}}}]}},
        ),
        ('line\nbreak\u2028"quoted"', {"stringValue": 'line\nbreak\u2028"quoted"'}),
    ],
)
def test_any_value_encoding_of_every_type(value: Any, expected: Any) -> None:
    assert encode(value) == expected


def test_object_whose_class_lookup_raises_is_unrepresentable() -> None:
    assert encode(ClassRaises()) == {"stringValue": UNREPRESENTABLE}
    assert json.loads(key_values({"x": ClassRaises()}, 10)) == [{"key": "x", "value": {"stringValue": UNREPRESENTABLE}}]


def test_none_is_omitted() -> None:
    assert any_value(None, 10) is None
    assert json.loads(key_values({"a": None, "b": 1}, 10)) == [{"key": "b", "value": {"intValue": 1}}]


def test_long_strings_are_truncated_to_max_attribute_length() -> None:
    assert encode("x" * 100, max_length=10) == {"stringValue": "x" * 10}
    assert encode(["y" * 50], max_length=5) == {"arrayValue": {"values": [{"stringValue": "yyyyy"}]}}
    assert encode(Point(), max_length=5) == {"stringValue": "Point"}


def test_self_referencing_containers_are_cut_off_not_recursed_forever() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    encoded = encode(loop)
    depth = 0
    while "arrayValue" in encoded:
        encoded = encoded["arrayValue"]["values"][-1]
        depth += 1
    assert depth >= 2 and "stringValue" in encoded


def test_empty_attributes_encode_as_empty_list() -> None:
    assert key_values(None, 10) == "[]"
    assert key_values({}, 10) == "[]"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(max_size=10), json_values, max_size=6))
def test_any_attributes_encode_to_single_line_valid_json(attributes: dict[str, Any]) -> None:
    text = key_values(attributes, 64)
    assert "\n" not in text and "\r" not in text
    decoded = json.loads(text)
    assert [item["key"] for item in decoded] == [k for k, v in attributes.items() if v is not None]
    for item, value in zip(decoded, [v for v in attributes.values() if v is not None], strict=True):
        if isinstance(value, float) and not math.isfinite(value):
            assert item["value"] == {"stringValue": repr(value)}
        elif isinstance(value, bool):
            assert item["value"] == {"boolValue": value}
