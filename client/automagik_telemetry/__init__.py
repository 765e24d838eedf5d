"""automagik-telemetry client: record spans in-process, ship them to the host-local agent.

Stdlib only. Recording never blocks and never raises; see ``AutomagikTelemetry``. Every name of
0.1.4's ``automagik_telemetry`` is here with 0.1.4's meaning (docs/migrating-from-0.1.md).
"""

from .client import AutomagikTelemetry
from .events import StandardEvents
from .legacy_config import (
    DEFAULT_CONFIG,
    ENV_VARS,
    ConfigTelemetryConfig,
    ValidatedConfig,
    create_config,
    load_config_from_env,
    merge_config,
    validate_config,
)
from .logging_handler import LoggingHandler
from .logs import LogSeverity
from .metrics import Counter, Gauge, Histogram, MetricType, UpDownCounter
from .opt_in import TelemetryOptIn, prompt_user_if_needed, should_prompt_user
from .privacy import (
    SENSITIVE_KEYS,
    PrivacyConfig,
    detect_pii,
    hash_value,
    redact_sensitive_keys,
    sanitize_email,
    sanitize_phone,
    sanitize_telemetry_data,
    sanitize_value,
    truncate_string,
)
from .resource import SDK_VERSION
from .settings import TelemetryConfig
from .span import Span, SpanKind, StatusCode


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("automagik-telemetry")
    except Exception:  # not installed (source tree on sys.path)
        return SDK_VERSION


__version__ = _package_version()

__all__ = [
    "DEFAULT_CONFIG",
    "ENV_VARS",
    "SENSITIVE_KEYS",
    "AutomagikTelemetry",
    "ConfigTelemetryConfig",
    "Counter",
    "Gauge",
    "Histogram",
    "LogSeverity",
    "LoggingHandler",
    "MetricType",
    "PrivacyConfig",
    "Span",
    "SpanKind",
    "StandardEvents",
    "StatusCode",
    "TelemetryConfig",
    "TelemetryOptIn",
    "UpDownCounter",
    "ValidatedConfig",
    "__version__",
    "create_config",
    "detect_pii",
    "hash_value",
    "load_config_from_env",
    "merge_config",
    "prompt_user_if_needed",
    "redact_sensitive_keys",
    "sanitize_email",
    "sanitize_phone",
    "sanitize_telemetry_data",
    "sanitize_value",
    "should_prompt_user",
    "truncate_string",
    "validate_config",
]
