"""automagik-telemetry client: record spans in-process, ship them to the host-local agent.

Stdlib only. Recording never blocks and never raises; see ``AutomagikTelemetry``.
"""

from .client import AutomagikTelemetry
from .config import TelemetryConfig
from .logging_handler import LoggingHandler
from .logs import LogSeverity
from .metrics import Counter, Gauge, Histogram, MetricType, UpDownCounter
from .resource import SDK_VERSION
from .span import Span, SpanKind, StatusCode

__version__ = SDK_VERSION

__all__ = [
    "AutomagikTelemetry",
    "Counter",
    "Gauge",
    "Histogram",
    "LogSeverity",
    "LoggingHandler",
    "MetricType",
    "Span",
    "SpanKind",
    "StatusCode",
    "TelemetryConfig",
    "UpDownCounter",
    "__version__",
]
