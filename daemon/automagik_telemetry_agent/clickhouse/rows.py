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

Here the row is assembled; :mod:`.anyvalue` renders attributes, :mod:`.scalars` checks ids, times and
numbers and defines :class:`TransformError` (re-exported here).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import orjson

from automagik_telemetry.protocol import COMPACT_SPANS, OTLP_SPANS

from .anyvalue import render_attributes, render_flat_attributes
from .scalars import (
    MAX_START_NS,
    MIN_START_NS,
    U64_MAX,
    ZERO_SPAN,
    ZERO_TRACE,
    TransformError,
    cached_second,
    checked_end_ns,
    checked_id,
    checked_start_ns,
    is_hex,
    known_id,
    remember_id,
    scope_of,
    second_str,
    uint64,
)

__all__ = [
    "LIFTED_RESOURCE_ATTRIBUTES",
    "LineFormat",
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


class LineFormat(enum.Enum):
    """How the span lines of a record are written (the resource line's ``lineFormat`` member).

    ``OTLP``: each line one OTLP/JSON span object (no ``lineFormat``: every client and the OTLP receiver).
    ``COMPACT``: each line a positional JSON array (``"lineFormat": "compact-1"``, see
    ``docs/protocol.md``): cheaper to write in a client and to read here, and the same row."""

    OTLP = OTLP_SPANS
    COMPACT = COMPACT_SPANS


_LINE_FORMATS = {f.value: f for f in LineFormat}

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

#: Columns of 0.1.4's traces table (migration 0004), filled from resource attributes that stay in
#: ``resource_attributes`` too: a table not migrated yet loses nothing (the insert skips unknown keys).
V014_RESOURCE_COLUMNS: dict[str, str] = {
    "user.id": "user_id",
    "session.id": "session_id",
    "cloud.provider": "cloud_provider",
    "cloud.region": "cloud_region",
    "cloud.availability_zone": "cloud_availability_zone",
}
#: The columns of migration 0004: rows fill them, a table may lack them (``shipper`` keeps working and
#: ``doctor``/``schema apply`` say what to run). The scope's are filled from a span line's ``scope``
#: member, ``links`` from its ``links`` (the OTLP receiver writes both).
OPTIONAL_SPAN_COLUMNS = frozenset(
    {*V014_RESOURCE_COLUMNS.values(), "instrumentation_library_name", "instrumentation_library_version", "links"}
)

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


@dataclass(frozen=True, slots=True)
class Resource:
    """The resource shared by the spans of one record, pre-split into lifted columns and the rest."""

    #: Lifted columns by column name (``service_name`` ...), always all of them ("" when absent).
    columns: dict[str, str]
    #: The span rows' 0.1.4 columns from resource attributes (:data:`V014_RESOURCE_COLUMNS`), all of them.
    span_columns: dict[str, str]
    #: The remaining attributes, rendered, in first-seen key order.
    attributes: dict[str, str]
    #: The same, sorted by key, for the legacy profile's parallel arrays.
    keys: list[str]
    values: list[str]
    #: How this record's span lines are written.
    line_format: LineFormat = LineFormat.OTLP
    #: Per profile (index ``profile is Profile.LEGACY``: no Enum hashing per span), a row with every
    #: column in output order, the resource's already filled in (:func:`_row_template`; ``None`` until
    #: built); each span copies it. Not part of the value.
    templates: list[dict[str, Any] | bool | None] = field(
        default_factory=lambda: [None, None], repr=False, compare=False
    )


# ---------------------------------------------------------------------------------------------- public


def parse_resource(line: bytes) -> Resource:
    """Parse a record's first line, the OTLP resource object, into a :class:`Resource`."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise TransformError("resource: invalid JSON") from None
    if type(obj) is not dict:
        raise TransformError("resource: not a JSON object")
    line_format = LineFormat.OTLP
    named = obj.get("lineFormat")
    if named is not None:
        found = _LINE_FORMATS.get(named) if type(named) is str else None
        if found is None:
            raise TransformError(f"resource: unknown lineFormat {str(named)[:40]!r} (this agent reads compact-1)")
        line_format = found
    attrs = render_attributes(obj.get("attributes"), "resource.attributes")
    columns = dict.fromkeys(LIFTED_RESOURCE_ATTRIBUTES.values(), "")
    rest: dict[str, str] = {}
    for key, value in attrs.items():
        column = LIFTED_RESOURCE_ATTRIBUTES.get(key)
        if column is None:
            rest[key] = value
        else:
            columns[column] = value
    keys = sorted(rest)
    span_columns = {column: attrs.get(key, "") for key, column in V014_RESOURCE_COLUMNS.items()}
    return Resource(
        columns=columns,
        span_columns=span_columns,
        attributes=rest,
        keys=keys,
        values=[rest[k] for k in keys],
        line_format=line_format,
    )


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
        ts = uint64(t)
        if ts is None:
            raise TransformError(f"invalid events[{i}].timeUnixNano")
        name = ev.get("name", "")
        if type(name) is not str:
            raise TransformError(f"invalid events[{i}].name")
        attrs = render_attributes(ev.get("attributes"), f"events[{i}].attributes")
        out.append({"time_unix_nano": ts, "name": name, "attributes": attrs})
    return orjson.dumps(out).decode()


def _links(links: object) -> str:
    """A span's ``links`` as the ``links`` column's JSON array: trace and span ids, trace state, attributes."""
    if type(links) is not list:
        raise TransformError("invalid links: not a list")
    out = []
    for i, link in enumerate(links):
        if type(link) is not dict:
            raise TransformError(f"invalid links[{i}]: not an object")
        trace_id, span_id, state = link.get("traceId", ""), link.get("spanId", ""), link.get("traceState", "")
        if not (type(trace_id) is str and type(span_id) is str and type(state) is str):
            raise TransformError(f"invalid links[{i}]: traceId, spanId and traceState must be strings")
        attrs = render_attributes(link.get("attributes"), f"links[{i}].attributes")
        out.append(
            {"trace_id": trace_id.lower(), "span_id": span_id.lower(), "trace_state": state, "attributes": attrs}
        )
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
    "instrumentation_library_name",
    "instrumentation_library_version",
    "links",
)


def _row_template(resource: Resource, profile: Profile) -> dict[str, Any] | bool:
    """A row with every column in output order and the resource's filled in; ``False`` if the resource's
    columns collide with the span's (never from :func:`parse_resource`: then rows are built key by key)."""
    row: dict[str, Any] = dict.fromkeys(_SPAN_COLUMNS)
    if not row.keys().isdisjoint(resource.columns):
        return False
    row.update(resource.columns)
    row.update(resource.span_columns)
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


def _ids(trace_id: object, span_id: object, parent: object) -> tuple[str, str, str]:
    """A span's trace, span and parent ids, lower-cased and checked (``""`` for no parent).

    Inline fast paths for valid ids (fromhex skips whitespace, but n//2 bytes from n characters means
    all are hex digits); checked_id gives the precise reason otherwise. Trace and parent ids repeat
    across the spans of a trace: valid ones are remembered.
    """
    valid = known_id(trace_id) if type(trace_id) is str else None
    if valid is not None and len(valid) == 32:
        trace = valid
    elif is_hex(trace_id, 32) and trace_id != ZERO_TRACE:
        trace = remember_id(trace_id)
    else:
        trace = checked_id(trace_id, "traceId", 32, ZERO_TRACE)
    if is_hex(span_id, 16) and span_id != ZERO_SPAN:
        span = span_id.lower()
    else:
        span = checked_id(span_id, "spanId", 16, ZERO_SPAN)
    if parent is None or parent == "" or parent == ZERO_SPAN:
        return trace, span, ""
    valid = known_id(parent) if type(parent) is str else None
    if valid is not None and len(valid) == 16:
        return trace, span, valid
    if not is_hex(parent, 16):
        raise TransformError("invalid parentSpanId: not 16 hex characters")
    return trace, span, remember_id(parent)


def transform_span(line: bytes, resource: Resource, profile: Profile) -> dict[str, Any]:
    """One OTLP span line as one row of the ``profile`` table shape; raises :class:`TransformError`.

    Rows share the resource's dicts and lists (``resource_attributes``, ``resource_keys`` ...): treat
    them as read-only. A record whose resource says ``lineFormat: compact-1`` has compact lines
    (:func:`_compact_span`): the same row from fewer bytes.
    """
    if resource.line_format is LineFormat.COMPACT:
        return _compact_span(line, resource, profile)
    try:
        span = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise TransformError("invalid JSON") from None
    if type(span) is not dict:
        raise TransformError("span is not a JSON object")
    get = span.get

    trace_id, span_id, parent = _ids(get("traceId"), get("spanId"), get("parentSpanId"))

    name = get("name")
    if type(name) is not str or name == "":
        if name is None or name == "":
            raise TransformError("missing name")
        raise TransformError("invalid name: not a string")

    start_ns = get("startTimeUnixNano")
    if type(start_ns) is not int or start_ns < MIN_START_NS or start_ns > MAX_START_NS:
        start_ns = checked_start_ns(start_ns)
    end_ns = get("endTimeUnixNano")
    if type(end_ns) is not int or end_ns < start_ns or end_ns > U64_MAX:
        end_ns = checked_end_ns(end_ns, start_ns)

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

    attributes = render_attributes(get("attributes"), "attributes")
    events = get("events")
    events = "[]" if events is None or events == [] else _events(events)
    scope_name, scope_version = scope_of(span)
    links = get("links")
    links = "[]" if links is None or links == [] else _links(links)
    ids, status = (trace_id, span_id, parent), (status_code, status_message)
    return _row(
        resource,
        profile,
        ids,
        name,
        span_kind,
        (start_ns, end_ns),
        status,
        attributes,
        events,
        (scope_name, scope_version, links),
    )


def _row(
    resource: Resource,
    profile: Profile,
    ids: tuple[str, str, str],
    name: str,
    span_kind: str,
    times: tuple[int, int],
    status: tuple[str, str],
    attributes: dict[str, str],
    events: str,
    v014: tuple[str, str, str],
) -> dict[str, Any]:
    """The row of checked span fields: the resource's template copied, the span's columns set.

    ``ids``: trace, span and parent ids; ``times``: start and end (ns); ``status``: code and message;
    ``v014``: the scope's name and version and the links (migration 0004's span columns)."""
    trace_id, span_id, parent = ids
    start_ns, end_ns = times
    status_code, status_message = status
    sec, frac = divmod(start_ns, 1_000_000_000)
    second = cached_second(sec)
    if second is None:
        second = second_str(sec)
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
            v014,
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
    row["instrumentation_library_name"], row["instrumentation_library_version"], row["links"] = v014
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


#: A compact line's elements (docs/protocol.md, "Compact span lines"); later elements are ignored.
_COMPACT_FIELDS = 11
_NO_SCOPE = ("", "", "[]")


def _compact_span(line: bytes, resource: Resource, profile: Profile) -> dict[str, Any]:
    """One compact span line, ``[traceId, spanId, parentSpanId, name, kind, startTimeUnixNano,
    endTimeUnixNano, attributes, statusCode, statusMessage, events]``, as the row its OTLP/JSON
    spelling gives (same checks, same reasons)."""
    try:
        span = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise TransformError("invalid JSON") from None
    if type(span) is not list or len(span) < _COMPACT_FIELDS:
        raise TransformError(f"compact span: not an array of {_COMPACT_FIELDS} elements")
    if len(span) > _COMPACT_FIELDS:
        span = span[:_COMPACT_FIELDS]  # later elements are ignored (room for additions)
    trace_id, span_id, parent, name, kind, start_ns, end_ns, attrs, code, message, events = span
    trace_id, span_id, parent = _ids(trace_id, span_id, parent)
    if type(name) is not str or name == "":
        raise TransformError("missing name" if name is None or name == "" else "invalid name: not a string")
    if type(start_ns) is not int or start_ns < MIN_START_NS or start_ns > MAX_START_NS:
        start_ns = checked_start_ns(start_ns)
    if type(end_ns) is not int or end_ns < start_ns or end_ns > U64_MAX:
        end_ns = checked_end_ns(end_ns, start_ns)
    span_kind = _KIND.get(kind) if type(kind) is int or type(kind) is str else None
    if span_kind is None:
        raise TransformError("invalid kind")
    status_code = _STATUS.get(code) if type(code) is int or type(code) is str else None
    if status_code is None:
        raise TransformError("invalid status.code")
    if type(message) is not str:
        raise TransformError("invalid status.message: not a string")
    attributes = render_flat_attributes(attrs, "attributes")
    rendered_events = "[]" if events == 0 or events is None or events == [] else _compact_events(events)
    ids, status = (trace_id, span_id, parent), (status_code, message)
    return _row(
        resource, profile, ids, name, span_kind, (start_ns, end_ns), status, attributes, rendered_events, _NO_SCOPE
    )


def _compact_events(events: object) -> str:
    """A compact line's events, ``[[name, timeUnixNano, attributes], ...]``, as the ``events`` column."""
    if type(events) is not list:
        raise TransformError("invalid events: not a list")
    out = []
    for i, ev in enumerate(events):
        if type(ev) is not list or len(ev) < 3:
            raise TransformError(f"invalid events[{i}]: not an array [name, timeUnixNano, attributes]")
        name, t, attrs = ev[0], ev[1], ev[2]
        ts = uint64(t)
        if ts is None:
            raise TransformError(f"invalid events[{i}].timeUnixNano")
        if type(name) is not str:
            raise TransformError(f"invalid events[{i}].name")
        out.append(
            {"time_unix_nano": ts, "name": name, "attributes": render_flat_attributes(attrs, f"events[{i}].attributes")}
        )
    return orjson.dumps(out).decode()


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
    v014: tuple[str, str, str],
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
        "instrumentation_library_name": v014[0],
        "instrumentation_library_version": v014[1],
        "links": v014[2],
    }
    row.update(resource.span_columns)
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
