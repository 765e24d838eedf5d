"""Log records: ``track_log`` and the ``logging`` handler build them, the sender thread writes their line.

A log record is the OTLP ``logRecord`` shape (docs/protocol.md, "Records"): times in ns since the
epoch, ``severityNumber``/``severityText``, a ``body`` of any value, attributes, and the trace and
span ids of the span active where it was recorded (trace correlation without any work by the app).
Like a span, it is built in the application thread (a few attribute reads and one queue append) and
serialized in the sender thread.
"""

# ruff: noqa: UP031  (%-templates, like span.py: the sender thread writes every record line)
from __future__ import annotations

import enum
from json.encoder import encode_basestring
from time import time_ns
from typing import ClassVar

from .attributes import any_value, key_values
from .protocol import RecordKind
from .span import current_span


class LogSeverity(enum.Enum):
    """OTLP log severity numbers (the lowest of each range), as in automagik-telemetry 0.1.4."""

    TRACE = 1
    DEBUG = 5
    INFO = 9
    WARN = 13
    ERROR = 17
    FATAL = 21


_BY_NAME = {s.name: s for s in LogSeverity} | {"WARNING": LogSeverity.WARN, "CRITICAL": LogSeverity.FATAL}
_BY_NUMBER = sorted((s.value, s) for s in LogSeverity)


def severity_of(value: LogSeverity | str | int) -> LogSeverity:
    """``value`` as a ``LogSeverity``: a member, a name (any case; ``warning``/``critical`` too) or an OTLP
    severity number (its range: 10 is DEBUG). Anything else is INFO, as 0.1.4 did for an unknown name."""
    if isinstance(value, LogSeverity):
        return value
    if isinstance(value, str):
        return _BY_NAME.get(value.strip().upper(), LogSeverity.INFO)
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 24:
        found = LogSeverity.TRACE
        for number, severity in _BY_NUMBER:
            if value >= number:
                found = severity
        return found
    return LogSeverity.INFO


_LINE = (
    '{"timeUnixNano":%d,"observedTimeUnixNano":%d,"severityNumber":%d,"severityText":%s,"body":%s,'
    '"attributes":%s,"traceId":"%s","spanId":"%s"}\n'
)
_quote = encode_basestring


class LogRecord:
    """One log record; ``to_line`` is its OTLP/JSON line (in the sender thread)."""

    __slots__ = (
        "attributes",
        "body",
        "observed_ns",
        "severity_number",
        "severity_text",
        "span_id",
        "time_ns",
        "trace_id",
    )

    record_kind: ClassVar[RecordKind] = RecordKind.LOG

    def __init__(
        self,
        body: object,
        severity_number: int,
        severity_text: str,
        attributes: dict[str, object] | None = None,
        time_unix_ns: int | None = None,
    ) -> None:
        self.observed_ns = time_ns()
        self.time_ns = self.observed_ns if time_unix_ns is None else time_unix_ns
        self.body = body
        self.severity_number = severity_number
        self.severity_text = severity_text
        self.attributes = attributes
        span = current_span()
        if span is not None:
            self.trace_id, self.span_id = span._trace_id, span._span_id
        else:
            self.trace_id = self.span_id = 0

    def to_line(self, max_length: int) -> bytes:
        return self.line_with(key_values(self.attributes, max_length), max_length)

    def line_with(self, attributes: str, max_length: int) -> bytes:
        """The record's line with ``attributes`` already rendered (an OTLP ``KeyValue`` list as JSON text)."""
        body = any_value(self.body, max_length) or "{}"  # None: an empty AnyValue
        return (
            _LINE
            % (
                self.time_ns,
                self.observed_ns,
                self.severity_number,
                _quote(self.severity_text[:64]),
                body,
                attributes,
                "%032x" % self.trace_id if self.trace_id else "",
                "%016x" % self.span_id if self.span_id else "",
            )
        ).encode("utf-8", "replace")
