"""Turn WAL metric records (OTLP ``Metric`` JSON lines) into rows of the ``metrics`` table, one per data point.

The companion of :mod:`.rows` and :mod:`.log_rows`. A metric line is an OTLP/JSON ``Metric``:
``name`` (required), ``unit``, ``description``, an optional ``scope`` (``{"name", "version"}``) and
exactly one of:

* ``gauge``: ``{"dataPoints": [...]}``;
* ``sum``: ``{"dataPoints": [...], "aggregationTemporality": 1|2 or its name, "isMonotonic": bool}``;
* ``histogram``: ``{"dataPoints": [...], "aggregationTemporality": ...}`` with explicit buckets.

A number data point has ``timeUnixNano`` (required), ``startTimeUnixNano``, ``attributes`` and
``asInt`` (int64, number or string) or ``asDouble`` (a number, or ``"NaN"``/``"Infinity"``); a
histogram point ``count``, ``sum``, ``min``, ``max``, ``bucketCounts`` (uint64s, one more than the
bounds) and ``explicitBounds``. ``exponentialHistogram`` and ``summary`` metrics are refused (the
schema has no columns for them): the shipper dead-letters and counts them. Anything else that breaks
these rules raises :class:`~.scalars.TransformError`.

``value_double`` holds every gauge or sum value; ``value_int`` also holds it for ``asInt`` points (0
for ``asDouble`` ones).
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

import orjson

from .anyvalue import render_attributes
from .log_rows import put_attributes, timestamp_of
from .resource import Profile, Resource, parse_resource
from .scalars import MAX_START_NS, MIN_START_NS, TransformError, double, int64, scope_of, uint64

__all__ = ["metric_row_keys", "transform_metric"]

_TEMPORALITY: dict[object, str] = {}
for _i, _name in enumerate(("UNSPECIFIED", "DELTA", "CUMULATIVE")):
    _TEMPORALITY[_i] = _name
    _TEMPORALITY[_name] = _name
    _TEMPORALITY["AGGREGATION_TEMPORALITY_" + _name] = _name
_REFUSED = ("exponentialHistogram", "summary")


def _time(point: dict[str, Any], field: str, required: bool) -> int:
    x = point.get(field)
    ns = uint64(x) if x is not None else 0
    if ns is None:
        raise TransformError(f"invalid {field}: not an unsigned 64-bit integer")
    if ns == 0:
        if required:
            raise TransformError(f"missing {field}")
        return 0
    if ns < MIN_START_NS or ns > MAX_START_NS:
        raise TransformError(f"{field} out of DateTime range")
    return ns


def _finite(x: object, field: str, default: float = 0.0) -> float:
    if x is None:
        return default
    d = double(x)
    if d is None:
        raise TransformError(f"invalid {field}: not a number")
    return d if math.isfinite(d) else 0.0


def _values(point: dict[str, Any]) -> tuple[int, float]:
    if "asInt" in point:
        i = int64(point["asInt"])
        if i is None:
            raise TransformError("invalid asInt: not a signed 64-bit integer")
        return i, float(i)
    if "asDouble" in point:
        d = double(point["asDouble"])
        if d is None:
            raise TransformError("invalid asDouble: not a number")
        return 0, d if math.isfinite(d) else 0.0
    raise TransformError("data point without asInt or asDouble")


def _histogram(point: dict[str, Any]) -> dict[str, Any]:
    count = uint64(point.get("count", 0))
    if count is None:
        raise TransformError("invalid count: not an unsigned 64-bit integer")
    counts_raw, bounds_raw = point.get("bucketCounts", []), point.get("explicitBounds", [])
    if type(counts_raw) is not list or type(bounds_raw) is not list:
        raise TransformError("invalid bucketCounts/explicitBounds: not lists")
    counts = [uint64(c) for c in counts_raw]
    bounds = [double(b) for b in bounds_raw]
    if any(c is None for c in counts) or any(b is None or not math.isfinite(b) for b in bounds):
        raise TransformError("invalid bucketCounts/explicitBounds: not unsigned integers / finite numbers")
    # OTLP: one more count than bounds, or neither (a histogram without buckets).
    if (counts or bounds) and len(counts) != len(bounds) + 1:
        raise TransformError("bucketCounts must have one more entry than explicitBounds")
    return {
        "histogram_count": count,
        "histogram_sum": _finite(point.get("sum"), "sum"),
        "histogram_min": _finite(point.get("min"), "min"),
        "histogram_max": _finite(point.get("max"), "max"),
        "histogram_bucket_counts": counts,
        "histogram_explicit_bounds": bounds,
    }


_NO_HISTOGRAM: dict[str, Any] = {
    "histogram_count": 0,
    "histogram_sum": 0.0,
    "histogram_min": 0.0,
    "histogram_max": 0.0,
    "histogram_bucket_counts": [],
    "histogram_explicit_bounds": [],
}


def transform_metric(line: bytes, resource: Resource, profile: Profile) -> list[dict[str, Any]]:
    """One OTLP metric line as its rows (one per data point) of the ``profile`` metrics table."""
    try:
        metric = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise TransformError("invalid JSON") from None
    if type(metric) is not dict:
        raise TransformError("not a JSON object")
    name, unit, description = metric.get("name"), metric.get("unit", ""), metric.get("description", "")
    if type(name) is not str or not name:
        raise TransformError("missing name")
    if type(unit) is not str or type(description) is not str:
        raise TransformError("invalid unit/description: not strings")
    for refused in _REFUSED:
        if refused in metric:
            raise TransformError(f"{refused} metrics are not stored (the schema has no columns for them)")
    kinds = [k for k in ("gauge", "sum", "histogram") if k in metric]
    if len(kinds) != 1:
        raise TransformError("a metric needs exactly one of gauge, sum, histogram")
    kind = kinds[0]
    data = metric[kind]
    if type(data) is not dict or type(data.get("dataPoints")) is not list:
        raise TransformError(f"invalid {kind}: no dataPoints list")
    temporality = "UNSPECIFIED"
    if kind != "gauge":
        raw = data.get("aggregationTemporality", 0)
        # type() first: a list or object is not a key (unhashable), and True/1.0 are not 1 here.
        found = _TEMPORALITY.get(raw) if type(raw) is int or type(raw) is str else None
        if found is None:
            raise TransformError("invalid aggregationTemporality")
        temporality = found
    monotonic = data.get("isMonotonic", False)
    if kind == "sum" and monotonic is not True and monotonic is not False:
        raise TransformError("invalid isMonotonic: not a boolean")
    scope_name, scope_version = scope_of(metric)
    rows = []
    for i, point in enumerate(data["dataPoints"]):
        if type(point) is not dict:
            raise TransformError(f"invalid dataPoints[{i}]: not an object")
        time_ns = _time(point, "timeUnixNano", required=True)
        row: dict[str, Any] = {
            "timestamp": timestamp_of(time_ns, profile),
            "timestamp_ns": time_ns,
            "start_timestamp_ns": _time(point, "startTimeUnixNano", required=False),
            "metric_name": name,
            "metric_type": kind.upper(),
            "metric_unit": unit,
            "metric_description": description,
            "is_monotonic": 1 if kind == "sum" and monotonic else 0,
            "aggregation_temporality": temporality,
        }
        if kind == "histogram":
            row["value_int"], row["value_double"] = 0, 0.0
            row.update(_histogram(point))
        else:
            row["value_int"], row["value_double"] = _values(point)
            row.update(_NO_HISTOGRAM)
        row.update(resource.columns)
        row["scope_name"], row["scope_version"] = scope_name, scope_version
        put_attributes(
            row, render_attributes(point.get("attributes"), f"dataPoints[{i}].attributes"), resource, profile
        )
        rows.append(row)
    return rows


@cache
def metric_row_keys(profile: Profile) -> frozenset[str]:
    """The columns a metric row of ``profile`` fills (what the metrics table must have)."""
    sample = b'{"name":"x","gauge":{"dataPoints":[{"timeUnixNano":"1700000000000000000","asInt":1}]}}'
    (row,) = transform_metric(sample, parse_resource(b'{"attributes":[]}'), profile)
    return frozenset(row)
