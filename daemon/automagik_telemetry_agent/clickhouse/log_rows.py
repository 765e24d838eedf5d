"""Turn WAL log records (OTLP ``logRecord`` JSON lines) into rows of the ``logs`` table.

The companion of :mod:`.rows` (which does spans) and :mod:`.metric_rows`: the same resource line,
the same attribute rendering and the same two profiles. Members of a log line (any order, unknown ones
ignored; 64-bit integers as numbers or decimal strings):

* ``timeUnixNano`` (when it happened; 0 or absent: ``observedTimeUnixNano`` is used), and
  ``observedTimeUnixNano`` (when it was recorded; absent: the same as the time). One of them is
  required, within ClickHouse's DateTime range.
* ``severityNumber`` 0..24, or its enum name (``"SEVERITY_NUMBER_WARN"``); ``severityText`` a string
  (absent: the name of the number's range, ``WARN`` for 13..16).
* ``body``: any AnyValue; a string is stored as is, any other value as its rendering (JSON for arrays
  and maps), an empty or absent body as ``""``.
* ``attributes``; the ``exception.type/message/stacktrace`` and ``code.filepath/lineno/function``
  attributes (OpenTelemetry's semantic conventions, which the Python client's handler writes) become
  columns of their own and leave the attributes map.
* ``traceId`` (32 hex digits) and ``spanId`` (16), or ``""``/absent; other values are refused.
* ``scope``: optional ``{"name": ..., "version": ...}`` (the instrumentation scope).

A line that breaks these rules raises :class:`~.scalars.TransformError` (the shipper dead-letters it).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import orjson

from .anyvalue import render_attributes
from .resource import Profile, Resource, parse_resource
from .scalars import MAX_START_NS, MIN_START_NS, TransformError, is_hex, scope_of, second_str, uint64

__all__ = ["LIFTED_LOG_ATTRIBUTES", "log_row_keys", "transform_log"]

#: Log attributes that become columns of their own.
LIFTED_LOG_ATTRIBUTES: dict[str, str] = {
    "exception.type": "exception_type",
    "exception.message": "exception_message",
    "exception.stacktrace": "exception_stacktrace",
    "code.filepath": "source_file",
    "code.lineno": "source_line",
    "code.function": "source_function",
}
_SEVERITY_NAMES = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")
_SEVERITY_BY_NAME: dict[str, int] = {}
for _i, _name in enumerate(_SEVERITY_NAMES):
    for _j in range(4):
        _suffix = "" if _j == 0 else str(_j + 1)
        _SEVERITY_BY_NAME[f"SEVERITY_NUMBER_{_name}{_suffix}"] = 1 + 4 * _i + _j
_SEVERITY_BY_NAME["SEVERITY_NUMBER_UNSPECIFIED"] = 0
U32_MAX = 2**32 - 1


def severity_text_of(number: int) -> str:
    """The severity name of an OTLP severity number's range (``""`` for 0, unspecified)."""
    return _SEVERITY_NAMES[(number - 1) // 4] if 1 <= number <= 24 else ""


def _time_ns(x: object, field: str) -> int:
    """An optional timestamp member: 0 when absent or 0 (proto3: not set), else checked."""
    if x is None:
        return 0
    ns = uint64(x)
    if ns is None:
        raise TransformError(f"invalid {field}: not an unsigned 64-bit integer")
    if ns and (ns < MIN_START_NS or ns > MAX_START_NS):
        raise TransformError(f"{field} out of DateTime range")
    return ns


def _optional_id(record: dict[str, Any], field: str, length: int) -> str:
    x = record.get(field)
    if x is None or x == "":
        return ""
    if not is_hex(x, length):
        raise TransformError(f"invalid {field}: not {length} hex characters")
    return x.lower() if x.strip("0") else ""  # all zeros: "no span" (OTLP), as absent


def _severity(record: dict[str, Any]) -> tuple[int, str]:
    raw = record.get("severityNumber", 0)
    if type(raw) is str:
        number = _SEVERITY_BY_NAME.get(raw)
        if number is None:
            parsed = uint64(raw)
            number = parsed if parsed is not None else -1
    elif type(raw) is int:
        number = raw
    else:
        number = -1
    if not 0 <= number <= 24:
        raise TransformError("invalid severityNumber: not 0..24 or a SEVERITY_NUMBER_ name")
    text = record.get("severityText")
    if text is None or text == "":
        return number, severity_text_of(number)
    if type(text) is not str:
        raise TransformError("invalid severityText: not a string")
    return number, text


def _body(value: object) -> str:
    if value is None:
        return ""
    if type(value) is dict and len(value) == 1:
        s = value.get("stringValue")
        if type(s) is str:
            return s
    return render_attributes([{"key": "body", "value": value}], "body").get("body", "")


def timestamp_of(ns: int, profile: Profile) -> str:
    """The ``timestamp`` column's text for ``ns``: 9 decimals (modern), whole seconds (legacy)."""
    second = second_str(ns // 1_000_000_000)
    return f"{second}.{ns % 1_000_000_000:09d}" if profile is Profile.MODERN else second


def put_attributes(row: dict[str, Any], attributes: dict[str, str], resource: Resource, profile: Profile) -> None:
    """The attribute and resource columns of either profile (maps, or parallel sorted arrays)."""
    if profile is Profile.MODERN:
        row["attributes"] = attributes
        row["resource_attributes"] = resource.attributes
    else:
        keys = sorted(attributes)
        row["attribute_keys"] = keys
        row["attribute_values"] = [attributes[k] for k in keys]
        row["resource_keys"] = resource.keys
        row["resource_values"] = resource.values


def transform_log(line: bytes, resource: Resource, profile: Profile) -> dict[str, Any]:
    """One OTLP log record line as one row of the ``profile`` logs table; raises :class:`TransformError`."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise TransformError("invalid JSON") from None
    if type(record) is not dict:
        raise TransformError("not a JSON object")
    time_ns = _time_ns(record.get("timeUnixNano"), "timeUnixNano")
    observed_ns = _time_ns(record.get("observedTimeUnixNano"), "observedTimeUnixNano")
    if not time_ns and not observed_ns:
        raise TransformError("missing timeUnixNano and observedTimeUnixNano")
    time_ns = time_ns or observed_ns
    observed_ns = observed_ns or time_ns
    number, text = _severity(record)
    attributes = render_attributes(record.get("attributes"), "attributes")
    lifted = {column: attributes.pop(key, "") for key, column in LIFTED_LOG_ATTRIBUTES.items()}
    line_text = lifted["source_line"]
    # ASCII digits only ("²".isdigit() is true, and int() refuses it), and short enough for int().
    digits = len(line_text) <= 10 and line_text.isascii() and line_text.isdigit()
    source_line = int(line_text) if digits and int(line_text) <= U32_MAX else 0
    scope_name, scope_version = scope_of(record)
    row: dict[str, Any] = {
        "timestamp": timestamp_of(time_ns, profile),
        "timestamp_ns": time_ns,
        "trace_id": _optional_id(record, "traceId", 32),
        "span_id": _optional_id(record, "spanId", 16),
        "severity_text": text,
        "severity_number": number,
        "body": _body(record.get("body")),
        **resource.columns,
        "scope_name": scope_name,
        "scope_version": scope_version,
        "is_exception": 1 if lifted["exception_type"] or lifted["exception_message"] else 0,
        "exception_type": lifted["exception_type"],
        "exception_message": lifted["exception_message"],
        "exception_stacktrace": lifted["exception_stacktrace"],
        "source_file": lifted["source_file"],
        "source_line": source_line,
        "source_function": lifted["source_function"],
    }
    if profile is Profile.MODERN:
        row["observed_timestamp"] = timestamp_of(observed_ns, profile)
    else:
        row["observed_timestamp_ns"] = observed_ns
    put_attributes(row, attributes, resource, profile)
    return row


@cache
def log_row_keys(profile: Profile) -> frozenset[str]:
    """The columns a log row of ``profile`` fills (what the logs table must have)."""
    sample = b'{"timeUnixNano":"1700000000000000000","body":{"stringValue":"x"}}'
    return frozenset(transform_log(sample, parse_resource(b'{"attributes":[]}'), profile))
