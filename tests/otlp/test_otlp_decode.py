"""The receiver's pure parts: protobuf and JSON decoding into record lines, the split into RECORDS
messages, the dedup index, the responses and the capped decompression (no agent, no server)."""

from __future__ import annotations

import base64
import gzip
import math
import zlib

import orjson
import pytest
from google.protobuf import json_format
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from automagik_telemetry import protocol
from automagik_telemetry_agent.clickhouse.log_rows import transform_log
from automagik_telemetry_agent.clickhouse.metric_rows import transform_metric
from automagik_telemetry_agent.clickhouse.rows import Profile, parse_resource, transform_span
from automagik_telemetry_agent.ingest.otlp.body import Body, BodyTooLarge
from automagik_telemetry_agent.ingest.otlp.dedup import DurableParts, request_id
from automagik_telemetry_agent.ingest.otlp.export import MAX_LINE_BYTES, Export, Refusal, messages
from automagik_telemetry_agent.ingest.otlp.json_body import decode_json
from automagik_telemetry_agent.ingest.otlp.proto import BodyError, decode_protobuf
from automagik_telemetry_agent.ingest.otlp.responses import Encoding, export_response, status_body
from automagik_telemetry_agent.ingest.otlp.signals import OtlpSignal
from automagik_telemetry_agent.wal import WalOptions, WalWriter

T0 = 1_700_000_000_000_000_000
TRACE = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
SPAN = bytes.fromhex("b7ad6b7169203331")
PARENT = bytes.fromhex("00f067aa0ba902b7")


def _kv(key: str, **value: object) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(**value))  # type: ignore[arg-type]


def every_any_value() -> list[KeyValue]:
    return [
        _kv("s", string_value="text ü"),
        _kv("i", int_value=-(2**63)),
        _kv("imax", int_value=2**63 - 1),
        _kv("d", double_value=1.5),
        _kv("nan", double_value=math.nan),
        _kv("inf", double_value=-math.inf),
        _kv("b", bool_value=True),
        _kv("bytes", bytes_value=b"\x00\xff"),
        KeyValue(
            key="arr", value=AnyValue(array_value={"values": [AnyValue(int_value=1), AnyValue(string_value="x")]})
        ),
        KeyValue(key="kv", value=AnyValue(kvlist_value={"values": [_kv("inner", bool_value=False)]})),
        KeyValue(key="empty", value=AnyValue()),
    ]


def trace_request() -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.extend([_kv("service.name", string_value="checkout"), _kv("host.name", string_value="h1")])
    ss = rs.scope_spans.add()
    ss.scope.name, ss.scope.version = "my.lib", "1.2.3"
    span = ss.spans.add()
    span.trace_id, span.span_id, span.parent_span_id = TRACE, SPAN, PARENT
    span.name, span.kind = "GET /pay", 2
    span.start_time_unix_nano, span.end_time_unix_nano = T0, T0 + 1500
    span.attributes.extend(every_any_value())
    span.status.code, span.status.message = 2, "card declined"
    event = span.events.add()
    event.name, event.time_unix_nano = "retry", T0 + 10
    event.attributes.append(_kv("attempt", int_value=2))
    link = span.links.add()
    link.trace_id, link.span_id = bytes(range(16)), bytes(range(1, 9))
    root = ss.spans.add()
    root.trace_id, root.span_id, root.name = TRACE, PARENT, "root"
    root.start_time_unix_nano = T0
    return request


def lines_of(export: Export) -> list[dict[str, object]]:
    return [orjson.loads(line) for group in export.groups for line in group.lines]


def span_rows(export: Export, profile: Profile = Profile.MODERN) -> list[dict[str, object]]:
    out = []
    for group in export.groups:
        resource = parse_resource(orjson.dumps(group.resource))
        out += [transform_span(line, resource, profile) for line in group.lines]
    return out


# ---- protobuf -------------------------------------------------------------------------------------
def test_protobuf_spans_become_lines_with_hex_ids_every_anyvalue_kind_scope_events_and_links() -> None:
    export = decode_protobuf(OtlpSignal.TRACES, trace_request().SerializeToString())
    assert export.accepted == 2 and not export.refused
    span = lines_of(export)[0]
    assert (span["traceId"], span["spanId"], span["parentSpanId"]) == (TRACE.hex(), SPAN.hex(), PARENT.hex())
    values = {kv["key"]: kv["value"] for kv in span["attributes"]}  # type: ignore[index, union-attr, attr-defined]
    assert values["s"] == {"stringValue": "text ü"}
    assert values["i"] == {"intValue": -(2**63)} and values["imax"] == {"intValue": 2**63 - 1}
    assert values["nan"] == {"doubleValue": "NaN"} and values["inf"] == {"doubleValue": "-Infinity"}
    assert values["bytes"] == {"bytesValue": base64.b64encode(b"\x00\xff").decode()}
    assert values["arr"] == {"arrayValue": {"values": [{"intValue": 1}, {"stringValue": "x"}]}}
    assert values["kv"] == {"kvlistValue": {"values": [{"key": "inner", "value": {"boolValue": False}}]}}
    assert values["empty"] == {}
    assert values["otel.scope.name"] == {"stringValue": "my.lib"}
    assert values["otel.scope.version"] == {"stringValue": "1.2.3"}
    assert span["events"] == [
        {"timeUnixNano": T0 + 10, "name": "retry", "attributes": [{"key": "attempt", "value": {"intValue": 2}}]}
    ]
    assert span["links"][0]["traceId"] == bytes(range(16)).hex()  # type: ignore[index]
    assert span["status"] == {"code": 2, "message": "card declined"}


def test_protobuf_spans_become_the_rows_the_shipper_would_store() -> None:
    row, root = span_rows(decode_protobuf(OtlpSignal.TRACES, trace_request().SerializeToString()))
    assert row["trace_id"] == TRACE.hex() and row["parent_span_id"] == PARENT.hex()
    assert row["span_kind"] == "SERVER" and row["status_code"] == "ERROR" and row["duration_ns"] == 1500
    assert row["service_name"] == "checkout" and row["hostname"] == "h1"
    assert row["attributes"]["otel.scope.name"] == "my.lib"  # type: ignore[index]
    assert root["parent_span_id"] == "" and root["span_kind"] == "UNSPECIFIED"


def test_the_same_request_as_protobuf_and_as_otlp_json_gives_the_same_rows() -> None:
    request = trace_request()
    as_json = json_format.MessageToDict(request)  # protobuf's mapping: ids in base64, ints as strings, enum names
    for rs in as_json["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:  # OTLP/JSON wants hex: upper case, to check case does not matter
                        span[key] = base64.b64decode(span[key]).hex().upper()
                for link in span.get("links", []):
                    for key in ("traceId", "spanId"):
                        link[key] = base64.b64decode(link[key]).hex()
    from_json = span_rows(decode_json(OtlpSignal.TRACES, orjson.dumps(as_json)))
    assert from_json == span_rows(decode_protobuf(OtlpSignal.TRACES, request.SerializeToString()))


def test_protobuf_logs_keep_body_of_any_type_severity_trace_context_and_scope() -> None:
    request = ExportLogsServiceRequest()
    rl = request.resource_logs.add()
    rl.resource.attributes.append(_kv("service.name", string_value="api"))
    sl = rl.scope_logs.add()
    sl.scope.name, sl.scope.version = "app.logger", "0.1"
    record = sl.log_records.add()
    record.time_unix_nano, record.observed_time_unix_nano = T0, T0 + 5
    record.severity_number, record.severity_text = 17, "ERROR"
    record.body.kvlist_value.values.append(_kv("order", int_value=7))
    record.trace_id, record.span_id = TRACE, SPAN
    plain = sl.log_records.add()
    plain.observed_time_unix_nano = T0  # time unknown: the observed time stands in
    plain.body.string_value = "hello"
    export = decode_protobuf(OtlpSignal.LOGS, request.SerializeToString())
    resource = parse_resource(orjson.dumps(export.groups[0].resource))
    rows = [transform_log(line, resource, Profile.MODERN) for line in export.groups[0].lines]
    assert rows[0]["trace_id"] == TRACE.hex() and rows[0]["span_id"] == SPAN.hex()
    assert rows[0]["severity_number"] == 17 and rows[0]["body"] == '{"order":7}'
    assert rows[0]["scope_name"] == "app.logger" and rows[0]["scope_version"] == "0.1"
    assert rows[1]["body"] == "hello" and rows[1]["timestamp_ns"] == T0 and rows[1]["trace_id"] == ""


def metrics_request() -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    rm.resource.attributes.append(_kv("service.name", string_value="api"))
    sm = rm.scope_metrics.add()
    sm.scope.name = "meter"
    gauge = sm.metrics.add(name="temp", unit="C")
    point = gauge.gauge.data_points.add(time_unix_nano=T0, as_double=21.5)
    point.attributes.append(_kv("room", string_value="a"))
    counter = sm.metrics.add(name="reqs")
    counter.sum.aggregation_temporality, counter.sum.is_monotonic = 2, True
    counter.sum.data_points.add(start_time_unix_nano=T0 - 10, time_unix_nano=T0, as_int=40)
    counter.sum.data_points.add(start_time_unix_nano=T0 - 10, time_unix_nano=T0, as_int=2)
    hist = sm.metrics.add(name="latency", unit="ms")
    hist.histogram.aggregation_temporality = 2
    hist.histogram.data_points.add(
        time_unix_nano=T0, count=3, sum=12.0, min=1.0, max=8.0, bucket_counts=[1, 1, 1], explicit_bounds=[2.0, 5.0]
    )
    expo = sm.metrics.add(name="expo")
    expo.exponential_histogram.data_points.add(time_unix_nano=T0, count=1)
    expo.exponential_histogram.data_points.add(time_unix_nano=T0, count=2)
    summary = sm.metrics.add(name="sum")
    summary.summary.data_points.add(time_unix_nano=T0, count=1)
    return request


def test_protobuf_metrics_gauge_sum_histogram_stored_exponential_and_summary_refused_and_counted() -> None:
    export = decode_protobuf(OtlpSignal.METRICS, metrics_request().SerializeToString())
    assert export.accepted == 4  # data points: 1 gauge, 2 sum, 1 histogram
    assert export.refused == {Refusal.UNSUPPORTED_METRIC: 3}
    assert "exponential_histogram" in export.problem
    resource = parse_resource(orjson.dumps(export.groups[0].resource))
    rows = [r for line in export.groups[0].lines for r in transform_metric(line, resource, Profile.MODERN)]
    assert [(r["metric_name"], r["value_double"]) for r in rows[:3]] == [("temp", 21.5), ("reqs", 40.0), ("reqs", 2.0)]
    assert rows[3]["histogram_count"] == 3 and rows[3]["histogram_max"] == 8.0
    assert rows[0]["scope_name"] == "meter"


def test_protobuf_garbage_and_truncated_bodies_are_body_errors() -> None:
    body = trace_request().SerializeToString()
    for bad in (body[: len(body) // 2], b"\xff" * 64, b"\x0a\xff\xff\xff\xff\x0f"):
        with pytest.raises(BodyError, match="not a valid protobuf"):
            decode_protobuf(OtlpSignal.TRACES, bad)


# ---- JSON -----------------------------------------------------------------------------------------
def test_json_is_lenient_with_enum_names_string_integers_and_old_scope_names() -> None:
    body = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "js"}}]},
                "instrumentationLibrarySpans": [
                    {
                        "instrumentationLibrary": {"name": "old.lib"},
                        "spans": [
                            {
                                "traceId": TRACE.hex().upper(),
                                "spanId": SPAN.hex(),
                                "name": "x",
                                "kind": "SPAN_KIND_CLIENT",
                                "startTimeUnixNano": str(T0),
                                "endTimeUnixNano": str(T0 + 7),
                                "status": {"code": "STATUS_CODE_OK"},
                                "somethingNew": {"ignored": True},
                            }
                        ],
                    }
                ],
            }
        ]
    }
    (row,) = span_rows(decode_json(OtlpSignal.TRACES, orjson.dumps(body)))
    assert row["trace_id"] == TRACE.hex() and row["span_kind"] == "CLIENT" and row["status_code"] == "OK"
    assert row["duration_ns"] == 7 and row["attributes"] == {"otel.scope.name": "old.lib"}


def test_json_entries_that_are_not_objects_are_refused_and_counted_the_rest_travels() -> None:
    body = {"resourceLogs": [7, {"scopeLogs": ["x", {"logRecords": [1, {"body": {"stringValue": "ok"}}]}]}]}
    export = decode_json(OtlpSignal.LOGS, orjson.dumps(body))
    assert export.accepted == 1 and export.refused == {Refusal.NOT_AN_OBJECT: 3}
    assert lines_of(export) == [{"body": {"stringValue": "ok"}, "scope": {"name": "", "version": ""}}]


@pytest.mark.parametrize("body", [b"{", b"[]", b'"x"', b"\xff\xfe", b""])
def test_json_bodies_that_are_not_an_object_are_body_errors(body: bytes) -> None:
    with pytest.raises(BodyError):
        decode_json(OtlpSignal.TRACES, body)


def test_an_item_larger_than_a_message_is_refused_not_split() -> None:
    big = {"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": {"stringValue": "x" * MAX_LINE_BYTES}}, {}]}]}]}
    export = decode_json(OtlpSignal.LOGS, orjson.dumps(big))
    assert export.refused == {Refusal.TOO_LARGE: 1} and export.accepted == 1


# ---- RECORDS messages -----------------------------------------------------------------------------
def test_messages_fit_the_protocol_carry_their_part_and_are_the_same_for_the_same_body() -> None:
    request = ExportTraceServiceRequest()
    for r in range(3):
        rs = request.resource_spans.add()
        rs.resource.attributes.append(_kv("service.name", string_value=f"svc{r}"))
        ss = rs.scope_spans.add()
        for i in range(700):
            s = ss.spans.add(name=f"op-{i}" + "y" * 200, start_time_unix_nano=T0)
            s.trace_id, s.span_id = TRACE, (i + 1).to_bytes(8, "big")
    body = request.SerializeToString()
    parts = messages(decode_protobuf(OtlpSignal.TRACES, body), "ab" * 16)
    assert len(parts) > 3  # each resource split over several messages
    assert sum(m.count for m in parts) == 2100
    for i, m in enumerate(parts):
        assert m.part == i and len(m.payload) <= protocol.MAX_PAYLOAD_SIZE
        protocol.check_records_payload(m.payload, m.count)
        resource_line = m.payload.split(b"\n", 1)[0]
        assert orjson.loads(resource_line)["otlpRequest"] == f"{'ab' * 16}:{i}"
    again = messages(decode_protobuf(OtlpSignal.TRACES, body), "ab" * 16)
    assert [m.payload for m in again] == [m.payload for m in parts]


# ---- dedup ----------------------------------------------------------------------------------------
def test_request_ids_depend_on_signal_and_body() -> None:
    assert request_id("/v1/traces", b"a") == request_id("/v1/traces", b"a")
    assert request_id("/v1/traces", b"a") != request_id("/v1/logs", b"a")
    assert request_id("/v1/traces", b"a") != request_id("/v1/traces", b"b")


def test_durable_parts_are_bounded_by_count_and_age() -> None:
    parts = DurableParts(max_requests=3, max_age_s=10)
    for i in range(5):
        parts.add(f"r{i}", 0, now=100.0 + i)
    assert len(parts) == 3 and parts.get("r0") == frozenset() and parts.get("r4") == {0}
    parts.add("r4", 1, now=105.0)
    assert parts.get("r4") == {0, 1}
    parts.add("late", 0, now=113.5)  # r2 (102) and r3 (103) are older than 10 s now
    assert parts.get("r2") == frozenset() and parts.get("r3") == frozenset() and parts.get("r4") == {0, 1}


def test_durable_parts_are_found_again_in_the_wal(tmp_path: object) -> None:
    wal_dir = str(tmp_path)
    writer = WalWriter(wal_dir, WalOptions(min_free_bytes=0)).open()
    export = decode_protobuf(OtlpSignal.TRACES, trace_request().SerializeToString())
    rid = request_id("/v1/traces", b"body")
    for m in messages(export, rid):
        writer.append(m.payload, m.count, int(OtlpSignal.TRACES.kind))
    writer.append(b'{"attributes":[]}\n{}\n', 1, 1)  # the Python client's records carry no marker
    writer.sync()
    writer.close()
    parts = DurableParts()
    assert parts.load_wal(wal_dir) == 1
    assert parts.get(rid) == {0}


# ---- responses ------------------------------------------------------------------------------------
def test_responses_carry_partial_success_in_the_requests_encoding() -> None:
    assert export_response(OtlpSignal.TRACES, Encoding.JSON, 0, "") == b"{}"
    assert orjson.loads(export_response(OtlpSignal.METRICS, Encoding.JSON, 3, "why")) == {
        "partialSuccess": {"rejectedDataPoints": "3", "errorMessage": "why"}
    }
    ok = ExportTraceServiceResponse.FromString(export_response(OtlpSignal.TRACES, Encoding.PROTOBUF, 0, ""))
    assert not ok.HasField("partial_success")
    partial = ExportMetricsServiceResponse.FromString(export_response(OtlpSignal.METRICS, Encoding.PROTOBUF, 3, "why"))
    assert partial.partial_success.rejected_data_points == 3 and partial.partial_success.error_message == "why"


def test_error_bodies_are_google_rpc_status_in_either_encoding() -> None:
    message = "the body is not valid JSON " + "x" * 300  # a length needing a two-byte varint
    body, ctype = status_body(Encoding.PROTOBUF, 400, message)
    status = status_pb2.Status.FromString(body)
    assert ctype == "application/x-protobuf" and status.code == 3 and status.message == message
    body, ctype = status_body(None, 503, "later")
    assert ctype == "application/json" and orjson.loads(body) == {"code": 14, "message": "later"}


# ---- capped decompression -------------------------------------------------------------------------
def test_a_gzip_bomb_is_cut_off_at_the_limit_not_inflated() -> None:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = compressor.compress(b"\0" * (64 << 20)) + compressor.flush()  # 64 MiB of zeros, ~64 KiB gzipped
    body = Body("gzip", limit=1 << 20)
    with pytest.raises(BodyTooLarge):
        body.feed(chunk)
    assert body.size <= (1 << 20) + 1  # never held more than the limit (and one byte)


def test_bodies_decompress_across_pieces_and_truncated_gzip_is_an_error() -> None:
    data = orjson.dumps({"resourceSpans": []}) * 100
    packed = gzip.compress(data)
    body = Body("gzip", limit=1 << 20)
    for i in range(0, len(packed), 7):
        body.feed(packed[i : i + 7])
    assert body.finish() == data
    cut = Body("gzip", limit=1 << 20)
    cut.feed(packed[: len(packed) // 2])
    with pytest.raises(ValueError, match="truncated"):
        cut.finish()
    garbage = Body("gzip", limit=1 << 20)
    with pytest.raises(ValueError, match="not valid"):
        garbage.feed(b"not gzip at all")
