"""``application/json`` export requests (OTLP/JSON) -> :class:`~.export.Export`.

Lenient the way real SDKs need: enums as names or numbers, 64-bit integers as strings or numbers, ids
as hex in either case (written lower-case), unknown members kept (the shipper ignores them), the
pre-1.0 names ``instrumentationLibrarySpans``/``instrumentationLibrary`` accepted, and the 64-digit trace
ids of automagik-telemetry 0.1.4 cut to their first 32 digits. The values are
checked by the shipper with the same rules as the Python client's lines (docs/protocol.md); what is
refused here is only what can never become a row (:class:`~.export.Refusal`).
"""

from __future__ import annotations

from typing import Any

import orjson

from .export import Export, Group, Refusal
from .proto import BodyError, scope_attributes
from .signals import OtlpSignal

__all__ = ["decode_json"]

_OLD_SCOPE_KEY = {
    OtlpSignal.TRACES: "instrumentationLibrarySpans",
    OtlpSignal.LOGS: "instrumentationLibraryLogs",
    OtlpSignal.METRICS: "instrumentationLibraryMetrics",
}
_REQUEST_NAME = {
    OtlpSignal.TRACES: "ExportTraceServiceRequest",
    OtlpSignal.LOGS: "ExportLogsServiceRequest",
    OtlpSignal.METRICS: "ExportMetricsServiceRequest",
}
_METRIC_DATA = ("gauge", "sum", "histogram")
_REFUSED_DATA = ("exponentialHistogram", "summary")


def decode_json(signal: OtlpSignal, body: bytes) -> Export:
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BodyError(f"the body is not valid JSON: {exc}") from None
    if type(request) is not dict:
        raise BodyError(f"the body is not a JSON object (an OTLP/JSON {_REQUEST_NAME[signal]})")
    export = Export(signal)
    for rs in _list(request.get(signal.resource_key)):
        if type(rs) is not dict:
            export.refuse(Refusal.NOT_AN_OBJECT, 1, f"an entry of {signal.resource_key} is not an object")
            continue
        resource = rs.get("resource")
        group = export.group(resource if type(resource) is dict else {})
        scopes = rs.get(signal.scope_key)
        if scopes is None:
            scopes = rs.get(_OLD_SCOPE_KEY[signal])
        for ss in _list(scopes):
            if type(ss) is not dict:
                export.refuse(Refusal.NOT_AN_OBJECT, 1, f"an entry of {signal.scope_key} is not an object")
                continue
            _scope_items(export, group, signal, ss)
    return export


def _list(x: object) -> list[Any]:
    return x if type(x) is list else []


def _scope(ss: dict[str, Any]) -> dict[str, Any]:
    scope = ss.get("scope")
    if scope is None:
        scope = ss.get("instrumentationLibrary")
    if type(scope) is not dict:
        return {"name": "", "version": ""}
    name, version = scope.get("name", ""), scope.get("version", "")
    return {"name": name if type(name) is str else "", "version": version if type(version) is str else ""}


def _lower_ids(item: dict[str, Any], *names: str) -> None:
    for name in names:
        x = item.get(name)
        if type(x) is str:
            item[name] = x.lower()


def _legacy_trace_id(span: dict[str, Any]) -> None:
    """automagik-telemetry 0.1.4 writes trace ids of 64 hex digits (two UUIDs); OTLP's are 32. The first
    32 are one random UUID (122 random bits): kept, so its spans are stored instead of dead-lettered."""
    x = span.get("traceId")
    if type(x) is str and len(x) == 64:
        span["traceId"] = x[:32]


def _scope_items(export: Export, group: Group, signal: OtlpSignal, ss: dict[str, Any]) -> None:
    scope = _scope(ss)
    extra = scope_attributes(scope) if signal is OtlpSignal.TRACES else []
    for item in _list(ss.get(signal.item_key)):
        if type(item) is not dict:
            export.refuse(Refusal.NOT_AN_OBJECT, 1, f"an entry of {signal.item_key} is not an object")
            continue
        if signal is OtlpSignal.TRACES:
            _lower_ids(item, "traceId", "spanId", "parentSpanId")
            _legacy_trace_id(item)
            for link in _list(item.get("links")):
                if type(link) is dict:
                    _lower_ids(link, "traceId", "spanId")
            if extra:
                attrs = item.get("attributes")
                item["attributes"] = (attrs if type(attrs) is list else []) + extra
            item["scope"] = scope
            export.add(group, item)
        elif signal is OtlpSignal.LOGS:
            _lower_ids(item, "traceId", "spanId")
            item["scope"] = scope
            export.add(group, item)
        else:
            _metric(export, group, item, scope)


def _metric(export: Export, group: Group, metric: dict[str, Any], scope: dict[str, Any]) -> None:
    for key in _REFUSED_DATA:
        data = metric.get(key)
        if data is not None:
            points = len(_list(data.get("dataPoints"))) if type(data) is dict else 0
            export.refuse(Refusal.UNSUPPORTED_METRIC, points, f"metric {metric.get('name')!r}: {key} is not stored")
            return
    metric["scope"] = scope
    data = next((metric[k] for k in _METRIC_DATA if type(metric.get(k)) is dict), None)
    points = len(_list(data.get("dataPoints"))) if data is not None else 0
    if data is not None and not points:
        return  # no data points: nothing to store, nothing refused
    # A malformed metric goes on (counted as one item), for the shipper to dead-letter and count.
    export.add(group, metric, max(points, 1))
