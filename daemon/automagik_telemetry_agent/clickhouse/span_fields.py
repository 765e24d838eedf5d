"""The checked fields of one span line, shared by its OTLP/JSON and its compact spelling: ids, kind and
status code names, and the ``events`` and ``links`` columns (compact JSON arrays).

Each function raises :class:`~.scalars.TransformError` with a short reason for a value that cannot
become a column; :mod:`.rows` assembles the row from what they return.
"""

from __future__ import annotations

from typing import Any

import orjson

from .anyvalue import render_attributes, render_flat_attributes
from .scalars import ZERO_SPAN, ZERO_TRACE, TransformError, checked_id, is_hex, known_id, remember_id, uint64

__all__ = ["SPAN_KINDS", "STATUS_CODES", "checked_ids", "compact_events_column", "events_column", "links_column"]

_KIND_NAMES = ("UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
SPAN_KINDS: dict[Any, str] = {}
for _i, _k in enumerate(_KIND_NAMES):
    SPAN_KINDS[_i] = _k
    SPAN_KINDS[_k] = _k
    SPAN_KINDS["SPAN_KIND_" + _k] = _k

_STATUS_NAMES = ("UNSET", "OK", "ERROR")
STATUS_CODES: dict[Any, str] = {}
for _i, _k in enumerate(_STATUS_NAMES):
    STATUS_CODES[_i] = _k
    STATUS_CODES[_k] = _k
    STATUS_CODES["STATUS_CODE_" + _k] = _k


def checked_ids(trace_id: object, span_id: object, parent: object) -> tuple[str, str, str]:
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


def events_column(events: object) -> str:
    if events is None or events == []:
        return "[]"
    if type(events) is not list:
        raise TransformError("invalid events: not a list")
    out = []
    for i, ev in enumerate(events):
        if type(ev) is not dict:
            raise TransformError(f"invalid events[{i}]: not an object")
        name = ev.get("name", "")
        ts = _event_time(i, ev.get("timeUnixNano", 0), name)
        attrs = render_attributes(ev.get("attributes"), f"events[{i}].attributes")
        out.append({"time_unix_nano": ts, "name": name, "attributes": attrs})
    return orjson.dumps(out).decode()


def links_column(links: object) -> str:
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


def compact_events_column(events: object) -> str:
    """A compact line's events, ``[[name, timeUnixNano, attributes], ...]``, as the ``events`` column."""
    if type(events) is not list:
        raise TransformError("invalid events: not a list")
    out = []
    for i, ev in enumerate(events):
        if type(ev) is not list or len(ev) < 3:
            raise TransformError(f"invalid events[{i}]: not an array [name, timeUnixNano, attributes]")
        name, t, attrs = ev[0], ev[1], ev[2]
        ts = _event_time(i, t, name)
        out.append(
            {"time_unix_nano": ts, "name": name, "attributes": render_flat_attributes(attrs, f"events[{i}].attributes")}
        )
    return orjson.dumps(out).decode()


def _event_time(i: int, t: object, name: object) -> int:
    """Event ``i``'s time in ns, its time and name checked (the same reasons in both spellings)."""
    ts = uint64(t)
    if ts is None:
        raise TransformError(f"invalid events[{i}].timeUnixNano")
    if type(name) is not str:
        raise TransformError(f"invalid events[{i}].name")
    return ts
