"""OTLP/JSON ``AnyValue`` encoding of attribute values, written straight to JSON text.

Runs only in the sender thread (never on the application's hot path). It builds the JSON text
directly instead of dicts for ``json.dumps``: several times faster, and the sender holds the GIL
while it works. Strings go through the stdlib JSON string escaper, so the output is exactly what
``json.dumps(..., ensure_ascii=False)`` would produce and never contains a raw newline.

Total: any Python object encodes to *something*; nothing here raises, whatever the value's
``__str__`` does.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from json.encoder import encode_basestring as quote
from typing import Any

UNREPRESENTABLE = "<unrepresentable>"
#: Containers nested deeper than this (e.g. a list containing itself) are encoded as a string.
MAX_DEPTH = 8
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_UNREPRESENTABLE_JSON = '{"stringValue":"<unrepresentable>"}'


def safe_str(value: object) -> str:
    """``str(value)``, or ``"<unrepresentable>"`` if that raises or returns a non-str."""
    try:
        text = str(value)
    except Exception:
        return UNREPRESENTABLE
    return text if isinstance(text, str) else UNREPRESENTABLE


def _string(text: str, max_length: int) -> str:
    return '{"stringValue":' + quote(text[:max_length]) + "}"


def any_value(value: object, max_length: int, _depth: int = 0) -> str | None:
    """The ``AnyValue`` of ``value`` as JSON text; ``None`` for ``None`` (the attribute is omitted)."""
    try:
        return _any_value(value, max_length, _depth)
    except Exception:  # a hostile __class__, __iter__, items(), __index__, ...
        return _UNREPRESENTABLE_JSON


def _any_value(value: object, max_length: int, depth: int) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return _string(value, max_length)
    if isinstance(value, bool):  # before int: bool is an int subclass
        return '{"boolValue":true}' if value else '{"boolValue":false}'
    if isinstance(value, int):
        number = int(value)
        if _INT64_MIN <= number <= _INT64_MAX:
            return '{"intValue":' + str(number) + "}"
        return _string(str(number), max_length)  # OTLP intValue is an int64
    if isinstance(value, float):
        real = float(value)
        if math.isfinite(real):
            return '{"doubleValue":' + repr(real) + "}"
        return _string(repr(real), max_length)  # JSON has no NaN/Infinity
    if depth >= MAX_DEPTH:
        return _string(safe_str(value), max_length)
    if isinstance(value, bytes | bytearray | memoryview):
        return '{"bytesValue":"' + base64.b64encode(bytes(value)).decode("ascii") + '"}'
    if isinstance(value, list | tuple):
        items = [any_value(item, max_length, depth + 1) for item in value]
        return '{"arrayValue":{"values":[' + ",".join(item for item in items if item is not None) + "]}}"
    if isinstance(value, Mapping):
        return '{"kvlistValue":{"values":' + key_values(value, max_length, depth + 1) + "}}"
    return _string(safe_str(value), max_length)


def _items(attributes: Mapping[Any, object] | None) -> list[tuple[Any, object]]:
    """The attributes' (key, value) pairs; none for an empty mapping or one whose ``items()`` fails."""
    if not attributes:
        return []
    try:
        return list(attributes.items())
    except Exception:
        return []


def key_values(attributes: Mapping[Any, object] | None, max_length: int, _depth: int = 0) -> str:
    """An OTLP ``KeyValue`` list as JSON text: ``[{"key":k,"value":AnyValue},...]``, ``None`` left out.

    Keys are typed ``Any`` because ``Mapping`` is invariant in its key type: a ``dict[str, int]``
    must be accepted, and so must a nested mapping with non-str keys (they are stringified).
    """
    out = []
    for key, value in _items(attributes):
        encoded = any_value(value, max_length, _depth)
        if encoded is not None:
            name = key if isinstance(key, str) else safe_str(key)
            out.append('{"key":' + quote(name) + ',"value":' + encoded + "}")
    return "[" + ",".join(out) + "]"


def flat_values(attributes: Mapping[Any, object] | None, max_length: int) -> str:
    """Attributes as one JSON object for a compact span line: ``{"key": value, ...}``, ``None`` left out.

    Strings, int64 integers, finite floats and bools are written as plain JSON values; anything else
    as its ``AnyValue`` object (:func:`any_value`), which the agent stores exactly as the OTLP spelling.
    """
    out = []
    for key, value in _items(attributes):
        if value is None:
            continue
        name = quote(key if isinstance(key, str) else safe_str(key))
        if isinstance(value, str):
            out.append(name + ":" + quote(value[:max_length]))
        elif isinstance(value, bool):
            out.append(name + (":true" if value else ":false"))
        elif type(value) is int and _INT64_MIN <= value <= _INT64_MAX:
            out.append(name + ":" + str(value))
        elif type(value) is float and math.isfinite(value):
            out.append(name + ":" + repr(value))
        else:
            encoded = any_value(value, max_length)
            if encoded is not None:
                out.append(name + ":" + encoded)
    return "{" + ",".join(out) + "}"
