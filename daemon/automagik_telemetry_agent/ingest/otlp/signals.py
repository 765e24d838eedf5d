"""The three OTLP signals as the receiver sees them: path, record kind, the names of the request's
parts, and how its response counts refused items."""

from __future__ import annotations

import enum

from automagik_telemetry.protocol import RecordKind


class OtlpSignal(enum.Enum):
    """One OTLP signal; the value is its HTTP path."""

    TRACES = "/v1/traces"
    LOGS = "/v1/logs"
    METRICS = "/v1/metrics"

    @property
    def kind(self) -> RecordKind:
        return _KIND[self]

    @property
    def label(self) -> str:
        """``traces``, ``logs`` or ``metrics``: the metrics' ``signal`` label."""
        return self.value.removeprefix("/v1/")

    @property
    def resource_key(self) -> str:
        """The request's list of resources (OTLP/JSON): ``resourceSpans`` ..."""
        return _RESOURCE_KEY[self]

    @property
    def scope_key(self) -> str:
        """Each resource's list of scopes: ``scopeSpans`` ..."""
        return _SCOPE_KEY[self]

    @property
    def item_key(self) -> str:
        """Each scope's list of items: ``spans``, ``logRecords`` or ``metrics``."""
        return _ITEM_KEY[self]

    @property
    def rejected_key(self) -> str:
        """The partial-success field counting refused items (OTLP/JSON name): ``rejectedSpans`` ...
        (for metrics, data points are counted, not metrics)."""
        return _REJECTED_KEY[self]

    @classmethod
    def from_path(cls, path: str) -> OtlpSignal | None:
        return _BY_PATH.get(path)


_KIND = {OtlpSignal.TRACES: RecordKind.SPAN, OtlpSignal.LOGS: RecordKind.LOG, OtlpSignal.METRICS: RecordKind.METRIC}
_RESOURCE_KEY = {
    OtlpSignal.TRACES: "resourceSpans",
    OtlpSignal.LOGS: "resourceLogs",
    OtlpSignal.METRICS: "resourceMetrics",
}
_SCOPE_KEY = {OtlpSignal.TRACES: "scopeSpans", OtlpSignal.LOGS: "scopeLogs", OtlpSignal.METRICS: "scopeMetrics"}
_ITEM_KEY = {OtlpSignal.TRACES: "spans", OtlpSignal.LOGS: "logRecords", OtlpSignal.METRICS: "metrics"}
_REJECTED_KEY = {
    OtlpSignal.TRACES: "rejectedSpans",
    OtlpSignal.LOGS: "rejectedLogRecords",
    OtlpSignal.METRICS: "rejectedDataPoints",
}
_BY_PATH = {signal.value: signal for signal in OtlpSignal}
