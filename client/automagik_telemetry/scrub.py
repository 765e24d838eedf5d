"""Privacy scrubbing of queued records, run in the sender thread just before serialization.

``TelemetryConfig.privacy`` (or ``AUTOMAGIK_TELEMETRY_PRIVACY=1``) turns it on. Span attributes, span
event attributes, the span status message, log attributes and log bodies go through privacy.py's
``sanitize_telemetry_data`` (sensitive keys redacted, then PII patterns rewritten) or ``sanitize_value``.
The record's containers are replaced, never mutated in place: the application may still hold the
span, and the values it passed in stay its own. Metric data points are left alone (their attributes
are series keys, chosen by the application).
"""

from __future__ import annotations

from typing import Any

from .logs import LogRecord
from .privacy import PrivacyConfig, sanitize_telemetry_data, sanitize_value
from .span import Span


def _mapping(attributes: dict[str, Any] | None, config: PrivacyConfig) -> dict[str, Any] | None:
    return sanitize_telemetry_data(dict(attributes), config) if attributes else attributes


def scrub_record(record: object, config: PrivacyConfig) -> None:
    """Sanitize ``record`` (a ``Span`` or ``LogRecord``; anything else is left as is) for ``config``."""
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
