"""Turn WAL span records (OTLP-shaped JSON lines) into rows of our ClickHouse ``traces`` table.

This module owns the mapping from the wire shape to the table shape and nothing else: no I/O, no
ClickHouse client. It is the shipper's hot path, so it trades a little elegance for speed (plain
``type(x) is T`` checks, one dict literal per row, cached timestamp prefixes).

Input, per WAL record: the first line is the OTLP ``resource`` object (:func:`parse_resource`), each
further line one OTLP span (:func:`transform_span`). OTLP/JSON spells 64-bit integers as decimal
strings and enums as names; both those and plain JSON numbers are accepted. Anything that cannot
become a row raises :class:`TransformError` with a short reason, which the shipper dead-letters.
No other exception escapes :func:`parse_resource` or :func:`transform_span`.

Output: one ``dict`` per span, in the column shape of a :class:`Profile`:

* ``MODERN`` (ClickHouse >= 22.2): ``attributes`` and ``resource_attributes`` are maps, and
  ``timestamp`` is ``'YYYY-MM-DD hh:mm:ss.nnnnnnnnn'`` (UTC) for a ``DateTime64(9, 'UTC')`` column.
  ClickHouse reads a JSON *number* for a DateTime64 as seconds, so the nanosecond integer would be
  rejected as out of range; the 9-decimal string round-trips exactly.
* ``LEGACY`` (ClickHouse 18.16): parallel ``attribute_keys``/``attribute_values`` and
  ``resource_keys``/``resource_values`` arrays sorted by key, ``timestamp`` is
  ``'YYYY-MM-DD hh:mm:ss'`` (UTC) for a ``DateTime('UTC')`` column. ``timestamp_ns`` carries the
  exact time in both profiles.

Attribute values (OTLP ``AnyValue``) are rendered to strings deterministically: strings as they are,
ints in decimal, doubles as ``repr(float)`` (``NaN``/``Inf``/``-Inf`` for non-finite), bools as
``true``/``false``, bytes as the base64 text given, arrays and kvlists as compact JSON whose nested
values take their natural JSON types (non-finite doubles nested become the strings above, an empty
AnyValue ``null``). Duplicate keys: the last one wins. The same input bytes always give the same row.
"""

from __future__ import annotations

import enum
import re
import time
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import orjson

__all__ = [
    "LIFTED_RESOURCE_ATTRIBUTES",
    "Profile",
    "Resource",
    "TransformError",
    "encode_rows",
    "parse_resource",
    "transform_span",
]


class Profile(enum.Enum):
    """The table shape rows are produced for (see ``deploy/clickhouse/README.md``)."""

    MODERN = "modern"
    LEGACY = "legacy"


class TransformError(ValueError):
    """A record that cannot become a row; ``reason`` says why in a few words (dead-letter label)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


#: Resource attributes that become columns of their own; the rest go to ``resource_attributes``.
LIFTED_RESOURCE_ATTRIBUTES: dict[str, str] = {
    "service.name": "service_name",
    "project.name": "project_name",
    "project.version": "project_version",
    "deployment.environment": "environment",
    "host.name": "hostname",
    "os.type": "os_type",
    "os.version": "os_version",
    "process.runtime.name": "runtime_name",
    "process.runtime.version": "runtime_version",
    "telemetry.sdk.version": "sdk_version",
}

_KINDS = ("UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
_KIND: dict[Any, str] = {}
for _i, _k in enumerate(_KINDS):
    _KIND[_i] = _k
    _KIND[_k] = _k
    _KIND["SPAN_KIND_" + _k] = _k

_STATUSES = ("UNSET", "OK", "ERROR")
_STATUS: dict[Any, str] = {}
for _i, _k in enumerate(_STATUSES):
    _STATUS[_i] = _k
    _STATUS[_k] = _k
    _STATUS["STATUS_CODE_" + _k] = _k

_HEX = frozenset("0123456789abcdefABCDEF")
_fromhex = bytes.fromhex
_ZERO_TRACE = "0" * 32  # an all-zero id is invalid (OTLP)
_ZERO_SPAN = "0" * 16
_U64_MAX = (1 << 64) - 1
_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1
#: Start times must fit a ``DateTime``. Its type spans 1970-01-01 .. 2106-02-07 06:28:15 UTC, but
#: ClickHouse 18.16 parses text only up to 2105-12-31 23:59:59 (later values silently wrap to 1970 or
#: to zero), and the modern table orders and expires by ``toDateTime(timestamp)``: one range for both.
_MAX_START_NS = 4_291_747_200 * 1_000_000_000 - 1  # 2105-12-31 23:59:59.999999999 UTC
#: DateTime 0 is ClickHouse's "zero date" (18.16 shows it as 0000-00-00 00:00:00): start at 1 s.
_MIN_START_NS = 1_000_000_000  # 1970-01-01 00:00:01 UTC
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_NONFINITE_IN = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}
_MAX_DEPTH = 32  # nesting of arrayValue/kvlistValue inside one attribute value
_KEY_SHOWN = 64  # characters of an attribute key quoted in a reason


@dataclass(frozen=True, slots=True)
class Resource:
    """The resource shared by the spans of one record, pre-split into lifted columns and the rest."""

    #: Lifted columns by column name (``service_name`` ...), always all of them ("" when absent).
    columns: dict[str, str]
    #: The remaining attributes, rendered, in first-seen key order.
    attributes: dict[str, str]
    #: The same, sorted by key, for the legacy profile's parallel arrays.
    keys: list[str]
    values: list[str]
    #: Per profile (index ``profile is Profile.LEGACY``: no Enum hashing per span), a row with every
    #: column in output order, the resource's already filled in (:func:`_row_template`; ``None`` until
    #: built); each span copies it. Not part of the value.
    templates: list[dict[str, Any] | bool | None] = field(
        default_factory=lambda: [None, None], repr=False, compare=False
    )


# --------------------------------------------------------------------------------------------- values


def _shown(key: str) -> str:
    return repr(key if len(key) <= _KEY_SHOWN else key[:_KEY_SHOWN] + "...")


def _int64(x: object) -> int | None:
    if type(x) is int:
        return x if _I64_MIN <= x <= _I64_MAX else None
    if type(x) is str and x and x.isascii():
        digits = x[1:] if x[0] == "-" else x
        if digits.isdigit():
            v = int(x)
            return v if _I64_MIN <= v <= _I64_MAX else None
    return None


def _uint64(x: object) -> int | None:
    if type(x) is int:
        return x if 0 <= x <= _U64_MAX else None
    if type(x) is str and x.isascii() and x.isdigit():
        v = int(x)
        return v if v <= _U64_MAX else None
    return None


def _double(x: Any) -> float | None:
    t = type(x)
    if t is float:
        return float(x)
    if t is int:
        return float(x)  # orjson ints fit in 64 bits: no OverflowError
    if t is str:
        if x in _NONFINITE_IN:
            return _NONFINITE_IN[x]
        if _JSON_NUMBER.fullmatch(x):
            return float(x)
    return None


def _double_str(v: float) -> str:
    if v != v:
        return "NaN"
    if v == float("inf"):
        return "Inf"
    if v == float("-inf"):
        return "-Inf"
    return repr(v)


def _anyvalue_item(value: object) -> tuple[str, object] | None:
    """The single (type, payload) pair of an AnyValue, ``None`` for an empty one; raises if malformed."""
    if type(value) is not dict:
        raise TransformError("not an AnyValue object")
    if not value:
        return None
    if len(value) != 1:
        raise TransformError("AnyValue with several values")
    return next(iter(value.items()))


def _render(value: object) -> str:
    """An AnyValue as the string stored in a Map/Array(String) column."""
    if type(value) is dict and len(value) == 1:
        s = value.get("stringValue")
        if type(s) is str:
            return s
    item = _anyvalue_item(value)
    if item is None:
        return ""
    kind, x = item
    if kind == "stringValue":
        if type(x) is str:
            return x
    elif kind == "intValue":
        i = _int64(x)
        if i is not None:
            return str(i)
    elif kind == "doubleValue":
        d = _double(x)
        if d is not None:
            return _double_str(d)
    elif kind == "boolValue":
        if x is True:
            return "true"
        if x is False:
            return "false"
    elif kind == "bytesValue":
        if type(x) is str:
            return x
    elif kind == "arrayValue":
        return orjson.dumps(_json_array(x, 1)).decode()
    elif kind == "kvlistValue":
        return orjson.dumps(_json_kvlist(x, 1)).decode()
    else:
        raise TransformError(f"unknown AnyValue type {_shown(kind)}")
    raise TransformError(f"invalid {kind}")


def _json_value(value: object, depth: int) -> object:
    """An AnyValue nested in an array/kvlist, as its natural JSON value."""
    item = _anyvalue_item(value)
    if item is None:
        return None
    kind, x = item
    if kind == "stringValue" or kind == "bytesValue":
        if type(x) is str:
            return x
    elif kind == "intValue":
        i = _int64(x)
        if i is not None:
            return i
    elif kind == "doubleValue":
        d = _double(x)
        if d is not None:
            return d if d - d == 0.0 else _double_str(d)
    elif kind == "boolValue":
        if type(x) is bool:
            return x
    elif kind == "arrayValue":
        return _json_array(x, depth + 1)
    elif kind == "kvlistValue":
        return _json_kvlist(x, depth + 1)
    else:
        raise TransformError(f"unknown AnyValue type {_shown(kind)}")
    raise TransformError(f"invalid {kind}")


def _values_list(x: object, what: str, depth: int) -> list[Any]:
    if depth > _MAX_DEPTH:
        raise TransformError("AnyValue nested too deeply")
    if type(x) is not dict or (x and (len(x) != 1 or "values" not in x)):
        raise TransformError(f"invalid {what}")
    values = x.get("values", [])
    if type(values) is not list:
        raise TransformError(f"invalid {what}")
    return values


def _json_array(x: object, depth: int) -> list[object]:
    return [_json_value(v, depth) for v in _values_list(x, "arrayValue", depth)]


def _json_kvlist(x: object, depth: int) -> dict[str, object]:
    out: dict[str, object] = {}
    for kv in _values_list(x, "kvlistValue", depth):
        key, value = _key_value(kv, "kvlistValue")
        out[key] = None if value is None else _json_value(value, depth)
    return out


def _key_value(kv: object, what: str) -> tuple[str, object]:
    if type(kv) is not dict:
        raise TransformError(f"invalid {what}: entry is not an object")
    key = kv.get("key")
    if type(key) is not str:
        raise TransformError(f"invalid {what}: entry without a string key")
    return key, kv.get("value")


def _attributes(attrs: object, what: str) -> dict[str, str]:
    """An OTLP KeyValue list as {key: rendered value}, last duplicate winning."""
    if attrs is None:
        return {}
    if type(attrs) is not list:
        raise TransformError(f"invalid {what}: not a list")
    out: dict[str, str] = {}
    for kv in attrs:
        if type(kv) is dict:
            key = kv.get("key")
            if type(key) is str:
                value = kv.get("value")
                # Fast paths: the overwhelmingly common plain string, then ints and bools.
                if type(value) is dict and len(value) == 1:
                    x = value.get("stringValue")
                    if type(x) is str:
                        out[key] = x
                        continue
                    x = value.get("intValue")
                    if type(x) is int:
                        if _I64_MIN <= x <= _I64_MAX:
                            out[key] = str(x)
                            continue
                    elif type(x) is str and x.isdigit() and x.isascii() and len(x) < 19:
                        out[key] = str(int(x))
                        continue
                    x = value.get("boolValue")
                    if x is True or x is False:
                        out[key] = "true" if x else "false"
                        continue
                if value is None:
                    out[key] = ""
                    continue
                try:
                    out[key] = _render(value)
                except TransformError as e:
                    raise TransformError(f"{what}[{_shown(key)}]: {e.reason}") from None
                continue
        _key_value(kv, what)  # raises the precise reason
    return out


# ------------------------------------------------------------------------------------------ timestamps

_SECOND_CACHE: dict[int, str] = {}


def _second_str(sec: int) -> str:
    s = _SECOND_CACHE.get(sec)
    if s is None:
        if len(_SECOND_CACHE) >= 4096:
            _SECOND_CACHE.clear()
        t = time.gmtime(sec)
        s = f"{t[0]:04d}-{t[1]:02d}-{t[2]:02d} {t[3]:02d}:{t[4]:02d}:{t[5]:02d}"
        _SECOND_CACHE[sec] = s
    return s


# ---------------------------------------------------------------------------------------------- public


def parse_resource(line: bytes) -> Resource:
    """Parse a record's first line, the OTLP resource object, into a :class:`Resource`."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise TransformError("resource: invalid JSON") from None
    if type(obj) is not dict:
        raise TransformError("resource: not a JSON object")
    attrs = _attributes(obj.get("attributes"), "resource.attributes")
    columns = dict.fromkeys(LIFTED_RESOURCE_ATTRIBUTES.values(), "")
    rest: dict[str, str] = {}
    for key, value in attrs.items():
        column = LIFTED_RESOURCE_ATTRIBUTES.get(key)
        if column is None:
            rest[key] = value
        else:
            columns[column] = value
    keys = sorted(rest)
    return Resource(columns=columns, attributes=rest, keys=keys, values=[rest[k] for k in keys])


def _span_id(span: dict[str, Any], field: str, length: int, zero: str) -> str:
    x = span.get(field)
    if x is None or x == "":
        raise TransformError(f"missing {field}")
    if type(x) is not str or len(x) != length or not _HEX.issuperset(x):
        raise TransformError(f"invalid {field}: not {length} hex characters")
    if x == zero:
        raise TransformError(f"invalid {field}: all zeros")
    return x.lower()


def _events(events: object) -> str:
    if events is None or events == []:
        return "[]"
    if type(events) is not list:
        raise TransformError("invalid events: not a list")
    out = []
    for i, ev in enumerate(events):
        if type(ev) is not dict:
            raise TransformError(f"invalid events[{i}]: not an object")
        t = ev.get("timeUnixNano", 0)
        ts = _uint64(t)
        if ts is None:
            raise TransformError(f"invalid events[{i}].timeUnixNano")
        name = ev.get("name", "")
        if type(name) is not str:
            raise TransformError(f"invalid events[{i}].name")
        attrs = _attributes(ev.get("attributes"), f"events[{i}].attributes")
        out.append({"time_unix_nano": ts, "name": name, "attributes": attrs})
    return orjson.dumps(out).decode()


_SPAN_COLUMNS = (
    "trace_id",
    "span_id",
    "parent_span_id",
    "span_name",
    "span_kind",
    "timestamp",
    "timestamp_ns",
    "duration_ns",
    "duration_ms",
    "status_code",
    "status_message",
    "events",
)


def _row_template(resource: Resource, profile: Profile) -> dict[str, Any] | bool:
    """A row with every column in output order and the resource's filled in; ``False`` if the resource's
    columns collide with the span's (never from :func:`parse_resource`: then rows are built key by key)."""
    row: dict[str, Any] = dict.fromkeys(_SPAN_COLUMNS)
    if not row.keys().isdisjoint(resource.columns):
        return False
    row.update(resource.columns)
    if profile is Profile.MODERN:
        row["attributes"] = None
        row["resource_attributes"] = resource.attributes
    elif profile is Profile.LEGACY:
        row["attribute_keys"] = None
        row["attribute_values"] = None
        row["resource_keys"] = resource.keys
        row["resource_values"] = resource.values
    else:  # pragma: no cover - a programming error, not a data error
        raise ValueError(f"unknown profile {profile!r}")
    return row


#: Valid non-zero trace/span ids seen lately (as given -> lower-cased), bounded.
_VALID_IDS: dict[str, str] = {}


def _remember_id(x: str) -> str:
    if len(_VALID_IDS) >= 4096:
        _VALID_IDS.clear()
    lower = _VALID_IDS[x] = x.lower()
    return lower


def _is_hex(value: object, chars: int) -> TypeGuard[str]:
    """A str of exactly ``chars`` hex digits (fromhex skips whitespace; the byte count rules that out)."""
    try:
        return type(value) is str and len(value) == chars and len(_fromhex(value)) == chars // 2
    except ValueError:
        return False


def transform_span(line: bytes, resource: Resource, profile: Profile) -> dict[str, Any]:
    """One OTLP span line as one row of the ``profile`` table shape; raises :class:`TransformError`.

    Rows share the resource's dicts and lists (``resource_attributes``, ``resource_keys`` ...): treat
    them as read-only.
    """
    try:
        span = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise TransformError("invalid JSON") from None
    if type(span) is not dict:
        raise TransformError("span is not a JSON object")
    get = span.get

    # Inline fast paths for valid ids (fromhex skips whitespace, but n//2 bytes from n characters means
    # all are hex digits); _span_id gives the precise reason otherwise.
    # Trace and parent ids repeat across the spans of a trace: valid ones are remembered.
    trace_id = get("traceId")
    valid = _VALID_IDS.get(trace_id) if type(trace_id) is str else None
    if valid is not None and len(valid) == 32:
        trace_id = valid
    else:
        if _is_hex(trace_id, 32) and trace_id != _ZERO_TRACE:
            trace_id = _remember_id(trace_id)
        else:
            trace_id = _span_id(span, "traceId", 32, _ZERO_TRACE)
    span_id = get("spanId")
    if _is_hex(span_id, 16) and span_id != _ZERO_SPAN:
        span_id = span_id.lower()
    else:
        span_id = _span_id(span, "spanId", 16, _ZERO_SPAN)
    parent = get("parentSpanId")
    if parent is None or parent == "" or parent == _ZERO_SPAN:
        parent = ""
    else:
        valid = _VALID_IDS.get(parent) if type(parent) is str else None
        if valid is not None and len(valid) == 16:
            parent = valid
        else:
            if not _is_hex(parent, 16):
                raise TransformError("invalid parentSpanId: not 16 hex characters")
            parent = _remember_id(parent)

    name = get("name")
    if type(name) is not str or name == "":
        if name is None or name == "":
            raise TransformError("missing name")
        raise TransformError("invalid name: not a string")

    start_ns = get("startTimeUnixNano")
    if type(start_ns) is not int or start_ns < _MIN_START_NS or start_ns > _MAX_START_NS:
        start_ns = _start_ns(start_ns)
    end_ns = get("endTimeUnixNano")
    if type(end_ns) is not int or end_ns < start_ns or end_ns > _U64_MAX:
        end_ns = _end_ns(end_ns, start_ns)

    kind = get("kind", 0)
    span_kind = _KIND.get(kind) if type(kind) is int or type(kind) is str else None
    if span_kind is None:
        raise TransformError("invalid kind")

    status = get("status")
    status_code: str | None
    if status is None:
        status_code, status_message = "UNSET", ""
    else:
        if type(status) is not dict:
            raise TransformError("invalid status: not an object")
        code = status.get("code", 0)
        status_code = _STATUS.get(code) if type(code) is int or type(code) is str else None
        if status_code is None:
            raise TransformError("invalid status.code")
        status_message = status.get("message", "")
        if type(status_message) is not str:
            raise TransformError("invalid status.message: not a string")

    attributes = _attributes(get("attributes"), "attributes")
    events = get("events")
    events = "[]" if events is None or events == [] else _events(events)

    sec, frac = divmod(start_ns, 1_000_000_000)
    second = _SECOND_CACHE.get(sec)
    if second is None:
        second = _second_str(sec)
    duration_ns = end_ns - start_ns

    legacy = profile is Profile.LEGACY
    template = resource.templates[legacy]
    if template is None:
        template = resource.templates[legacy] = _row_template(resource, profile)
    if template is False:
        return _slow_row(
            resource,
            profile,
            trace_id,
            span_id,
            parent,
            name,
            span_kind,
            start_ns,
            duration_ns,
            status_code,
            status_message,
            events,
            attributes,
            second,
            frac,
        )
    assert type(template) is dict  # not None (built above), not False (the slow path above)
    row = template.copy()
    row["trace_id"] = trace_id
    row["span_id"] = span_id
    row["parent_span_id"] = parent
    row["span_name"] = name
    row["span_kind"] = span_kind
    row["timestamp_ns"] = start_ns
    row["duration_ns"] = duration_ns
    row["duration_ms"] = duration_ns / 1e6
    row["status_code"] = status_code
    row["status_message"] = status_message
    row["events"] = events
    if legacy:
        row["timestamp"] = second
        if len(attributes) > 1:
            keys = sorted(attributes)
            row["attribute_keys"] = keys
            row["attribute_values"] = list(map(attributes.__getitem__, keys))
        else:
            row["attribute_keys"] = list(attributes)
            row["attribute_values"] = list(attributes.values())
    else:
        row["timestamp"] = f"{second}.{frac:09d}"
        row["attributes"] = attributes
    return row


def _start_ns(start: object) -> int:
    """``startTimeUnixNano`` when the fast path did not take it: the value or the precise reason."""
    if start is None:
        raise TransformError("missing startTimeUnixNano")
    start_ns = _uint64(start)
    if start_ns is None:
        raise TransformError("invalid startTimeUnixNano: not an unsigned 64-bit integer")
    if start_ns == 0:  # proto3: zero is "not set"
        raise TransformError("missing startTimeUnixNano")
    if start_ns < _MIN_START_NS or start_ns > _MAX_START_NS:
        raise TransformError("startTimeUnixNano out of DateTime range")
    return start_ns


def _end_ns(end: object, start_ns: int) -> int:
    """``endTimeUnixNano`` when the fast path did not take it: the value or the precise reason."""
    if end is None:
        return start_ns
    end_ns = _uint64(end)
    if end_ns is None:
        raise TransformError("invalid endTimeUnixNano: not an unsigned 64-bit integer")
    if end_ns == 0:  # not set: a zero-length span
        return start_ns
    if end_ns < start_ns:
        raise TransformError("endTimeUnixNano before startTimeUnixNano")
    return end_ns


def _slow_row(
    resource: Resource,
    profile: Profile,
    trace_id: str,
    span_id: str,
    parent: str,
    name: str,
    span_kind: str,
    start_ns: int,
    duration_ns: int,
    status_code: str,
    status_message: str,
    events: str,
    attributes: dict[str, str],
    second: str,
    frac: int,
) -> dict[str, Any]:
    """The row built key by key, for a hand-made :class:`Resource` whose columns shadow span columns."""
    row: dict[str, Any] = {
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_span_id": parent,
        "span_name": name,
        "span_kind": span_kind,
        "timestamp": None,
        "timestamp_ns": start_ns,
        "duration_ns": duration_ns,
        "duration_ms": duration_ns / 1e6,
        "status_code": status_code,
        "status_message": status_message,
        "events": events,
    }
    row.update(resource.columns)
    if profile is Profile.MODERN:
        row["timestamp"] = f"{second}.{frac:09d}"
        row["attributes"] = attributes
        row["resource_attributes"] = resource.attributes
    elif profile is Profile.LEGACY:
        row["timestamp"] = second
        keys = sorted(attributes)
        row["attribute_keys"] = keys
        row["attribute_values"] = [attributes[k] for k in keys]
        row["resource_keys"] = resource.keys
        row["resource_values"] = resource.values
    else:  # pragma: no cover - a programming error, not a data error
        raise ValueError(f"unknown profile {profile!r}")
    return row


def encode_rows(rows: list[dict[str, Any]]) -> bytes:
    """Rows as a ``FORMAT JSONEachRow`` body: one compact JSON object per line, newline-terminated."""
    # Append each row to one buffer and drop its bytes at once: with orjson 3.13 keeping thousands of
    # dumps() results alive (a list to join) costs ~5 us/row more than the encoding itself.
    buf = bytearray()
    dumps = orjson.dumps
    newline = orjson.OPT_APPEND_NEWLINE
    for row in rows:
        buf += dumps(row, option=newline)
    return bytes(buf)
