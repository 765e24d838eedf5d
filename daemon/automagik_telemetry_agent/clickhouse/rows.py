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

Here the row is assembled; :mod:`.resource` parses the record's first line and defines
:class:`Profile`, :mod:`.span_fields` checks ids, kinds, status codes, events and links,
:mod:`.anyvalue` renders attributes, :mod:`.scalars` checks times and numbers and defines
:class:`TransformError` (all re-exported here).
"""

from __future__ import annotations

from typing import Any

import orjson

from .anyvalue import render_attributes, render_flat_attributes
from .resource import (
    LIFTED_RESOURCE_ATTRIBUTES,
    OPTIONAL_SPAN_COLUMNS,
    V014_RESOURCE_COLUMNS,
    LineFormat,
    Profile,
    Resource,
    parse_resource,
)
from .scalars import (
    MAX_START_NS,
    MIN_START_NS,
    U64_MAX,
    TransformError,
    cached_second,
    checked_end_ns,
    checked_start_ns,
    scope_of,
    second_str,
)
from .span_fields import (
    SPAN_KINDS,
    STATUS_CODES,
    checked_ids,
    compact_events_column,
    events_column,
    links_column,
)

__all__ = [
    "LIFTED_RESOURCE_ATTRIBUTES",
    "OPTIONAL_SPAN_COLUMNS",
    "V014_RESOURCE_COLUMNS",
    "LineFormat",
    "Profile",
    "Resource",
    "TransformError",
    "encode_rows",
    "parse_resource",
    "transform_span",
]


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

    trace_id, span_id, parent = checked_ids(get("traceId"), get("spanId"), get("parentSpanId"))

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
    span_kind = SPAN_KINDS.get(kind) if type(kind) is int or type(kind) is str else None
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
        status_code = STATUS_CODES.get(code) if type(code) is int or type(code) is str else None
        if status_code is None:
            raise TransformError("invalid status.code")
        status_message = status.get("message", "")
        if type(status_message) is not str:
            raise TransformError("invalid status.message: not a string")

    attributes = render_attributes(get("attributes"), "attributes")
    events = get("events")
    events = "[]" if events is None or events == [] else events_column(events)
    scope_name, scope_version = scope_of(span)
    links = get("links")
    links = "[]" if links is None or links == [] else links_column(links)
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
    trace_id, span_id, parent = checked_ids(trace_id, span_id, parent)
    if type(name) is not str or name == "":
        raise TransformError("missing name" if name is None or name == "" else "invalid name: not a string")
    if type(start_ns) is not int or start_ns < MIN_START_NS or start_ns > MAX_START_NS:
        start_ns = checked_start_ns(start_ns)
    if type(end_ns) is not int or end_ns < start_ns or end_ns > U64_MAX:
        end_ns = checked_end_ns(end_ns, start_ns)
    span_kind = SPAN_KINDS.get(kind) if type(kind) is int or type(kind) is str else None
    if span_kind is None:
        raise TransformError("invalid kind")
    status_code = STATUS_CODES.get(code) if type(code) is int or type(code) is str else None
    if status_code is None:
        raise TransformError("invalid status.code")
    if type(message) is not str:
        raise TransformError("invalid status.message: not a string")
    attributes = render_flat_attributes(attrs, "attributes")
    rendered_events = "[]" if events == 0 or events is None or events == [] else compact_events_column(events)
    ids, status = (trace_id, span_id, parent), (status_code, message)
    return _row(
        resource, profile, ids, name, span_kind, (start_ns, end_ns), status, attributes, rendered_events, _NO_SCOPE
    )


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
