"""Privacy scrubbing of queued records, run in the sender thread just before serialization.

``TelemetryConfig.privacy`` (or ``AUTOMAGIK_TELEMETRY_PRIVACY=1``) turns it on. Span attributes, span
event attributes, the span status message, log attributes and log bodies go through privacy.py's
``sanitize_telemetry_data`` (sensitive keys redacted, then PII patterns rewritten) or ``sanitize_value``.
Metric data points' attributes too: they are series keys the application chose, but a privacy setting
that left an e-mail address in a metric's labels would not be one (two series whose values scrub to the
same text are then two points with equal attributes). The record's containers are replaced, never
mutated in place: the application may still hold the span, and the values it passed in stay its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .logs import LogRecord
from .metrics import MetricPoint
from .privacy import PrivacyConfig, sanitize_telemetry_data, sanitize_value
from .span import Span


def _mapping(attributes: Mapping[str, Any] | None, config: PrivacyConfig) -> dict[str, Any] | None:
    return sanitize_telemetry_data(dict(attributes), config) if attributes else None


def scrub_record(record: object, config: PrivacyConfig) -> None:
    """Sanitize ``record`` (a ``Span``, ``LogRecord`` or ``MetricPoint``; anything else is left as is)."""
    if isinstance(record, Span):
        record._attributes = _mapping(record._attributes, config)
        if record._events:
            record._events = [(name, when, _mapping(attributes, config)) for name, when, attributes in record._events]
        if record._status_message:
            record._status_message = str(sanitize_value(record._status_message, config))
    elif isinstance(record, LogRecord):
        record.attributes = _mapping(record.attributes, config)
        body = record.body
        if isinstance(body, dict):
            record.body = sanitize_telemetry_data(body, config)
        else:
            record.body = sanitize_value(body, config)
    elif isinstance(record, MetricPoint):
        record.attributes = _mapping(record.attributes, config)
