"""``application/x-protobuf`` export requests -> :class:`~.export.Export` (OTLP/JSON lines).

Decoded with ``opentelemetry-proto``'s generated classes on the upb runtime; the conversion to OTLP/JSON
is ours, because protobuf's own JSON mapping writes ids as base64 where OTLP/JSON wants hex
(docs/otlp.md). Ids become lower-case hex, 64-bit integers JSON numbers, enums their numbers, doubles
that JSON cannot hold ``"NaN"``/``"Infinity"``/``"-Infinity"``, bytes base64.
"""

from __future__ import annotations

import base64
import math
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from .export import Export, Refusal
from .signals import OtlpSignal

__all__ = ["BodyError", "decode_protobuf"]

_REQUEST: dict[OtlpSignal, Any] = {
    OtlpSignal.TRACES: ExportTraceServiceRequest,
    OtlpSignal.LOGS: ExportLogsServiceRequest,
    OtlpSignal.METRICS: ExportMetricsServiceRequest,
}


class BodyError(ValueError):
    """A body that cannot be decoded at all (answered 400 with this message)."""


def decode_protobuf(signal: OtlpSignal, body: bytes) -> Export:
    request = _REQUEST[signal]()
    try:
        request.ParseFromString(body)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise BodyError(f"the body is not a valid protobuf {type(request).__name__}: {exc}") from None
    export = Export(signal)
    if signal is OtlpSignal.TRACES:
        for rs in request.resource_spans:
            _spans(export, rs)
    elif signal is OtlpSignal.LOGS:
        for rl in request.resource_logs:
            _logs(export, rl)
    else:
        for rm in request.resource_metrics:
            _metrics(export, rm)
    return export


# ---- values ------------------------------------------------------------------------------------
def _double(x: float) -> float | str:
    if math.isfinite(x):
        return x
    return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")


def any_value(v: Any) -> dict[str, Any]:
    which = v.WhichOneof("value")
    if which == "string_value":
        return {"stringValue": v.string_value}
    if which == "int_value":
        return {"intValue": v.int_value}
    if which == "double_value":
        return {"doubleValue": _double(v.double_value)}
    if which == "bool_value":
        return {"boolValue": v.bool_value}
    if which == "array_value":
        return {"arrayValue": {"values": [any_value(x) for x in v.array_value.values]}}
    if which == "kvlist_value":
        return {"kvlistValue": {"values": attributes(v.kvlist_value.values)}}
    if which == "bytes_value":
        return {"bytesValue": base64.b64encode(v.bytes_value).decode()}
    return {}  # an empty AnyValue


def attributes(kvs: Any) -> list[dict[str, Any]]:
    """KeyValues as OTLP/JSON. The hot path of the receiver (most attributes are strings or integers:
    those are handled inline, without a call per value)."""
    out: list[dict[str, Any]] = []
    append = out.append
    for kv in kvs:
        value = kv.value
        which = value.WhichOneof("value")
        if which == "string_value":
            append({"key": kv.key, "value": {"stringValue": value.string_value}})
        elif which == "int_value":
            append({"key": kv.key, "value": {"intValue": value.int_value}})
        else:
            append({"key": kv.key, "value": any_value(value)})
    return out


def _resource(r: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"attributes": attributes(r.resource.attributes)}
    if r.resource.dropped_attributes_count:
        out["droppedAttributesCount"] = r.resource.dropped_attributes_count
    return out


def _scope(s: Any) -> dict[str, Any]:
    scope = s.scope
    out: dict[str, Any] = {"name": scope.name, "version": scope.version}
    if len(scope.attributes):
        out["attributes"] = attributes(scope.attributes)
    return out


def scope_attributes(scope: dict[str, Any]) -> list[dict[str, Any]]:
    """The instrumentation scope as span attributes (``otel.scope.name``/``.version``, as OpenTelemetry
    maps it for formats without scopes), besides the span line's ``scope`` member: a traces table
    without migration 0004's ``instrumentation_library_*`` columns still keeps it."""
    out = []
    if scope.get("name"):
        out.append({"key": "otel.scope.name", "value": {"stringValue": scope["name"]}})
    if scope.get("version"):
        out.append({"key": "otel.scope.version", "value": {"stringValue": scope["version"]}})
    return out


# ---- spans -------------------------------------------------------------------------------------
def _spans(export: Export, rs: Any) -> None:
    group = export.group(_resource(rs))
    add = export.add
    for ss in rs.scope_spans:
        scope = _scope(ss)
        extra = scope_attributes(scope)
        for s in ss.spans:
            attrs = attributes(s.attributes)
            if extra:
                attrs += extra
            span: dict[str, Any] = {
                "traceId": s.trace_id.hex(),
                "spanId": s.span_id.hex(),
                "parentSpanId": s.parent_span_id.hex(),
                "name": s.name,
                "kind": s.kind,
                "startTimeUnixNano": s.start_time_unix_nano,
                "endTimeUnixNano": s.end_time_unix_nano,
                "attributes": attrs,
                "scope": scope,
            }
            if s.HasField("status"):
                span["status"] = {"code": s.status.code, "message": s.status.message}
            if s.events:
                span["events"] = [
                    {"timeUnixNano": e.time_unix_nano, "name": e.name, "attributes": attributes(e.attributes)}
                    for e in s.events
                ]
            if s.links:
                span["links"] = [
                    {
                        "traceId": link.trace_id.hex(),
                        "spanId": link.span_id.hex(),
                        "traceState": link.trace_state,
                        "attributes": attributes(link.attributes),
                    }
                    for link in s.links
                ]
            if s.trace_state:
                span["traceState"] = s.trace_state
            if s.flags:
                span["flags"] = s.flags
            add(group, span)


# ---- logs --------------------------------------------------------------------------------------
def _logs(export: Export, rl: Any) -> None:
    group = export.group(_resource(rl))
    for sl in rl.scope_logs:
        scope = _scope(sl)
        for r in sl.log_records:
            record: dict[str, Any] = {
                "timeUnixNano": r.time_unix_nano,
                "observedTimeUnixNano": r.observed_time_unix_nano,
                "severityNumber": r.severity_number,
                "severityText": r.severity_text,
                "body": any_value(r.body),
                "attributes": attributes(r.attributes),
                "traceId": r.trace_id.hex(),
                "spanId": r.span_id.hex(),
                "scope": scope,
            }
            if r.flags:
                record["flags"] = r.flags
            if r.event_name:
                record["eventName"] = r.event_name
            export.add(group, record)


# ---- metrics -----------------------------------------------------------------------------------
def _number_point(p: Any) -> dict[str, Any]:
    point: dict[str, Any] = {
        "startTimeUnixNano": p.start_time_unix_nano,
        "timeUnixNano": p.time_unix_nano,
        "attributes": attributes(p.attributes),
    }
    if p.WhichOneof("value") == "as_int":
        point["asInt"] = p.as_int
    else:
        point["asDouble"] = _double(p.as_double)
    return point


def _histogram_point(p: Any) -> dict[str, Any]:
    point: dict[str, Any] = {
        "startTimeUnixNano": p.start_time_unix_nano,
        "timeUnixNano": p.time_unix_nano,
        "attributes": attributes(p.attributes),
        "count": p.count,
        "bucketCounts": list(p.bucket_counts),
        "explicitBounds": [_double(b) for b in p.explicit_bounds],
    }
    for name in ("sum", "min", "max"):
        if p.HasField(name):
            point[name] = _double(getattr(p, name))
    return point


def _metrics(export: Export, rm: Any) -> None:
    group = export.group(_resource(rm))
    for sm in rm.scope_metrics:
        scope = _scope(sm)
        for m in sm.metrics:
            metric: dict[str, Any] = {"name": m.name, "unit": m.unit, "description": m.description, "scope": scope}
            which = m.WhichOneof("data")
            if which == "gauge":
                points = [_number_point(p) for p in m.gauge.data_points]
                metric["gauge"] = {"dataPoints": points}
            elif which == "sum":
                points = [_number_point(p) for p in m.sum.data_points]
                metric["sum"] = {
                    "dataPoints": points,
                    "aggregationTemporality": m.sum.aggregation_temporality,
                    "isMonotonic": m.sum.is_monotonic,
                }
            elif which == "histogram":
                points = [_histogram_point(p) for p in m.histogram.data_points]
                metric["histogram"] = {
                    "dataPoints": points,
                    "aggregationTemporality": m.histogram.aggregation_temporality,
                }
            elif which in ("exponential_histogram", "summary"):
                n = len(getattr(m, which).data_points)
                export.refuse(Refusal.UNSUPPORTED_METRIC, n, f"metric {m.name!r}: {which} is not stored (docs/otlp.md)")
                continue
            else:  # no data at all: nothing to store, nothing to refuse
                continue
            if points:
                export.add(group, metric, len(points))
