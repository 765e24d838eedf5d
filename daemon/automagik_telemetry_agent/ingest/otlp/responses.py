"""What the receiver answers: the ``Export*ServiceResponse`` (with ``partial_success`` when items were
refused) or, for an error, a ``google.rpc.Status``, each in the request's encoding (OTLP/HTTP spec)."""

from __future__ import annotations

import enum
from typing import Any

import orjson
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from .signals import OtlpSignal


class Encoding(enum.Enum):
    """A request's body encoding; the value is its ``Content-Type``."""

    PROTOBUF = "application/x-protobuf"
    JSON = "application/json"

    @classmethod
    def from_content_type(cls, value: str) -> Encoding | None:
        media = value.split(";", 1)[0].strip().lower()
        return _BY_MEDIA.get(media)


_BY_MEDIA = {e.value: e for e in Encoding}
_RESPONSE: dict[OtlpSignal, tuple[Any, str]] = {
    OtlpSignal.TRACES: (ExportTraceServiceResponse, "rejected_spans"),
    OtlpSignal.LOGS: (ExportLogsServiceResponse, "rejected_log_records"),
    OtlpSignal.METRICS: (ExportMetricsServiceResponse, "rejected_data_points"),
}


def export_response(signal: OtlpSignal, encoding: Encoding, rejected: int, message: str) -> bytes:
    """The success body: empty ``partial_success`` when nothing was refused."""
    if encoding is Encoding.JSON:
        if not rejected and not message:
            return b"{}"
        return orjson.dumps({"partialSuccess": {signal.rejected_key: str(rejected), "errorMessage": message}})
    cls, field = _RESPONSE[signal]
    response = cls()
    if rejected or message:
        setattr(response.partial_success, field, rejected)
        response.partial_success.error_message = message
    return bytes(response.SerializeToString())


# google.rpc.Status codes used for the HTTP statuses we send (gRPC's code numbers).
_RPC_CODE = {400: 3, 401: 16, 404: 5, 405: 12, 408: 4, 411: 3, 413: 8, 415: 3, 429: 8, 431: 8, 500: 13, 503: 14}


def status_body(encoding: Encoding | None, http_status: int, message: str) -> tuple[bytes, str]:
    """An error body and its content type: ``google.rpc.Status`` in the request's encoding (JSON when the
    request's encoding is unknown). Encoded by hand: two fields, no dependency on googleapis-common-protos."""
    code = _RPC_CODE.get(http_status, 2)
    if encoding is Encoding.PROTOBUF:
        text = message.encode()
        return bytes([0x08, code]) + b"\x12" + _varint(len(text)) + text, Encoding.PROTOBUF.value
    return orjson.dumps({"code": code, "message": message}), Encoding.JSON.value


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)
