"""The scalar fields of OTLP/JSON span lines, checked for :mod:`.rows`, and the :class:`TransformError` they raise.

64-bit integers (OTLP/JSON spells them as decimal strings or plain numbers), doubles, hex trace/span ids
(with a bounded cache of valid ones) and start/end times (with the cached ``'YYYY-MM-DD hh:mm:ss'``
prefix of a second). Part of the shipper's hot path, like :mod:`.rows`: plain ``type(x) is T`` checks,
and the caches are mutated in place (``clear()``, never rebound), so the modules importing them share them.
"""

from __future__ import annotations

import re
import time
from typing import Any, TypeGuard

__all__ = [
    "I64_MAX",
    "I64_MIN",
    "MAX_START_NS",
    "MIN_START_NS",
    "SECOND_CACHE",
    "U64_MAX",
    "VALID_IDS",
    "ZERO_SPAN",
    "ZERO_TRACE",
    "TransformError",
    "cached_second",
    "checked_end_ns",
    "checked_id",
    "checked_start_ns",
    "double",
    "double_str",
    "int64",
    "is_hex",
    "known_id",
    "remember_id",
    "scope_of",
    "second_str",
    "shown",
    "uint64",
]


class TransformError(ValueError):
    """A record that cannot become a row; ``reason`` says why in a few words (dead-letter label)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_HEX = frozenset("0123456789abcdefABCDEF")
_fromhex = bytes.fromhex
ZERO_TRACE = "0" * 32  # an all-zero id is invalid (OTLP)
ZERO_SPAN = "0" * 16
U64_MAX = (1 << 64) - 1
I64_MIN = -(1 << 63)
I64_MAX = (1 << 63) - 1
#: Start times must fit a ``DateTime``. Its type spans 1970-01-01 .. 2106-02-07 06:28:15 UTC, but
#: ClickHouse 18.16 parses text only up to 2105-12-31 23:59:59 (later values silently wrap to 1970 or
#: to zero), and the modern table orders and expires by ``toDateTime(timestamp)``: one range for both.
MAX_START_NS = 4_291_747_200 * 1_000_000_000 - 1  # 2105-12-31 23:59:59.999999999 UTC
#: DateTime 0 is ClickHouse's "zero date" (18.16 shows it as 0000-00-00 00:00:00): start at 1 s.
MIN_START_NS = 1_000_000_000  # 1970-01-01 00:00:01 UTC
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_NONFINITE_IN = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}
_KEY_SHOWN = 64  # characters of an attribute key quoted in a reason


def shown(key: str) -> str:
    """An attribute key as quoted in a reason (cut to its first 64 characters)."""
    return repr(key if len(key) <= _KEY_SHOWN else key[:_KEY_SHOWN] + "...")


# -------------------------------------------------------------------------------------------- numbers


def int64(x: object) -> int | None:
    """A signed 64-bit integer given as a JSON number or a decimal string; ``None`` if it is not one."""
    if type(x) is int:
        return x if I64_MIN <= x <= I64_MAX else None
    if type(x) is str and x and x.isascii() and len(x) <= 20:  # longer: no int64 (and int() of 5000 digits raises)
        digits = x[1:] if x[0] == "-" else x
        if digits.isdigit():
            v = int(x)
            return v if I64_MIN <= v <= I64_MAX else None
    return None


def uint64(x: object) -> int | None:
    """An unsigned 64-bit integer given as a JSON number or a decimal string; ``None`` if it is not one."""
    if type(x) is int:
        return x if 0 <= x <= U64_MAX else None
    if type(x) is str and x.isascii() and x.isdigit() and len(x) <= 20:  # longer: no uint64
        v = int(x)
        return v if v <= U64_MAX else None
    return None


def double(x: Any) -> float | None:
    """A double given as a JSON number, a JSON number's text or ``NaN``/``Infinity``/``-Infinity``."""
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


def double_str(v: float) -> str:
    """``repr(v)``, or ``NaN``/``Inf``/``-Inf`` for a non-finite double."""
    if v != v:
        return "NaN"
    if v == float("inf"):
        return "Inf"
    if v == float("-inf"):
        return "-Inf"
    return repr(v)


# ------------------------------------------------------------------------------------------------ ids


def checked_id(x: object, field: str, length: int, zero: str) -> str:
    """The id ``x`` (a span's ``field``), lower-cased, or the precise reason it is missing or invalid."""
    if x is None or x == "":
        raise TransformError(f"missing {field}")
    if type(x) is not str or len(x) != length or not _HEX.issuperset(x):
        raise TransformError(f"invalid {field}: not {length} hex characters")
    if x == zero:
        raise TransformError(f"invalid {field}: all zeros")
    return x.lower()


#: Valid non-zero trace/span ids seen lately (as given -> lower-cased), bounded.
VALID_IDS: dict[str, str] = {}
#: ``VALID_IDS.get``, bound once for the per-span lookups of :mod:`.rows`: there ``VALID_IDS.get(x)`` would
#: be slower, CPython compiling a method call on an imported name as an attribute load (it assumes a module).
known_id = VALID_IDS.get


def remember_id(x: str) -> str:
    """``x.lower()``, remembered in :data:`VALID_IDS` (``x`` is a valid id)."""
    if len(VALID_IDS) >= 4096:
        VALID_IDS.clear()
    lower = VALID_IDS[x] = x.lower()
    return lower


def is_hex(value: object, chars: int) -> TypeGuard[str]:
    """A str of exactly ``chars`` hex digits (fromhex skips whitespace; the byte count rules that out)."""
    try:
        return type(value) is str and len(value) == chars and len(_fromhex(value)) == chars // 2
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------- times

#: ``'YYYY-MM-DD hh:mm:ss'`` (UTC) by Unix second, bounded.
SECOND_CACHE: dict[int, str] = {}
#: ``SECOND_CACHE.get``, bound once (see :data:`known_id`).
cached_second = SECOND_CACHE.get


def second_str(sec: int) -> str:
    """A Unix second as ``'YYYY-MM-DD hh:mm:ss'`` (UTC), through :data:`SECOND_CACHE`."""
    s = SECOND_CACHE.get(sec)
    if s is None:
        if len(SECOND_CACHE) >= 4096:
            SECOND_CACHE.clear()
        t = time.gmtime(sec)
        s = f"{t[0]:04d}-{t[1]:02d}-{t[2]:02d} {t[3]:02d}:{t[4]:02d}:{t[5]:02d}"
        SECOND_CACHE[sec] = s
    return s


def checked_start_ns(start: object) -> int:
    """``startTimeUnixNano`` when the fast path did not take it: the value or the precise reason."""
    if start is None:
        raise TransformError("missing startTimeUnixNano")
    start_ns = uint64(start)
    if start_ns is None:
        raise TransformError("invalid startTimeUnixNano: not an unsigned 64-bit integer")
    if start_ns == 0:  # proto3: zero is "not set"
        raise TransformError("missing startTimeUnixNano")
    if start_ns < MIN_START_NS or start_ns > MAX_START_NS:
        raise TransformError("startTimeUnixNano out of DateTime range")
    return start_ns


def checked_end_ns(end: object, start_ns: int) -> int:
    """``endTimeUnixNano`` when the fast path did not take it: the value or the precise reason."""
    if end is None:
        return start_ns
    end_ns = uint64(end)
    if end_ns is None:
        raise TransformError("invalid endTimeUnixNano: not an unsigned 64-bit integer")
    if end_ns == 0:  # not set: a zero-length span
        return start_ns
    if end_ns < start_ns:
        raise TransformError("endTimeUnixNano before startTimeUnixNano")
    return end_ns


def scope_of(record: dict[str, Any]) -> tuple[str, str]:
    """(name, version) of a span, log record or metric line's optional ``scope`` member."""
    scope = record.get("scope")
    if scope is None:
        return "", ""
    if type(scope) is not dict:
        raise TransformError("invalid scope: not an object")
    name, version = scope.get("name", ""), scope.get("version", "")
    if type(name) is not str or type(version) is not str:
        raise TransformError("invalid scope: name and version must be strings")
    return name, version
