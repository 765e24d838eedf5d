"""OTLP ``KeyValue`` lists and ``AnyValue`` objects rendered to the strings :mod:`.rows` stores.

:func:`render_attributes` turns a KeyValue list into ``{key: rendered value}`` (the last duplicate key
wins), with inline fast paths for plain strings, ints and bools. The rendering rules are those of
:mod:`.rows`' docstring: strings as they are, ints in decimal, doubles as ``repr(float)``
(``NaN``/``Inf``/``-Inf`` for non-finite), bools as ``true``/``false``, bytes as the base64 text given,
arrays and kvlists as compact JSON whose nested values take their natural JSON types (non-finite
doubles nested become the strings above, an empty AnyValue ``null``). Anything malformed raises
:class:`~.scalars.TransformError` with a short reason.
"""

from __future__ import annotations

from typing import Any

import orjson

from .scalars import I64_MAX, I64_MIN, TransformError, double, double_str, int64, shown

__all__ = ["render_attributes"]

_MAX_DEPTH = 32  # nesting of arrayValue/kvlistValue inside one attribute value


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
        i = int64(x)
        if i is not None:
            return str(i)
    elif kind == "doubleValue":
        d = double(x)
        if d is not None:
            return double_str(d)
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
        raise TransformError(f"unknown AnyValue type {shown(kind)}")
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
        i = int64(x)
        if i is not None:
            return i
    elif kind == "doubleValue":
        d = double(x)
        if d is not None:
            return d if d - d == 0.0 else double_str(d)
    elif kind == "boolValue":
        if type(x) is bool:
            return x
    elif kind == "arrayValue":
        return _json_array(x, depth + 1)
    elif kind == "kvlistValue":
        return _json_kvlist(x, depth + 1)
    else:
        raise TransformError(f"unknown AnyValue type {shown(kind)}")
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


def render_attributes(attrs: object, what: str) -> dict[str, str]:
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
                        if I64_MIN <= x <= I64_MAX:
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
                    raise TransformError(f"{what}[{shown(key)}]: {e.reason}") from None
                continue
        _key_value(kv, what)  # raises the precise reason
    return out


def render_flat_attributes(attrs: object, what: str) -> dict[str, str]:
    """A compact span line's attributes, ``{key: value}``, rendered like :func:`render_attributes`.

    A value is a JSON string, integer (int64), float, ``true``/``false``, ``null`` (stored as ``""``, as
    an empty AnyValue is), or an OTLP ``AnyValue`` object for anything else (arrays, kvlists, bytes,
    out-of-range numbers). So ``{"k": 5}`` stores what ``[{"key": "k", "value": {"intValue": 5}}]`` does.
    The object (freshly decoded, the caller's to give away) is rendered in place and returned.
    """
    if type(attrs) is not dict:
        if attrs is None or attrs == 0:
            return {}
        raise TransformError(f"invalid {what}: not an object")
    for key, value in attrs.items():
        if type(value) is not str:  # replacing a value while iterating is safe: the keys do not change
            attrs[key] = _flat_value(key, value, what)
    return attrs


def _flat_value(key: str, value: object, what: str) -> str:
    """One non-string compact attribute value (values are as orjson decoded them: exact types)."""
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "true" if value else "false"
    if isinstance(value, int):
        if not I64_MIN <= value <= I64_MAX:
            raise TransformError(f"{what}[{shown(key)}]: integer out of the int64 range")
        return str(value)
    if isinstance(value, float):
        return double_str(value)
    if value is None:
        return ""
    if isinstance(value, dict):
        try:
            return _render(value)
        except TransformError as e:
            raise TransformError(f"{what}[{shown(key)}]: {e.reason}") from None
    raise TransformError(f"{what}[{shown(key)}]: a list is not a value (use an arrayValue AnyValue)")
