"""0.1.4's ``automagik_telemetry.config`` module, unchanged in meaning.

Here, as in 0.1.4, ``TelemetryConfig`` is the *partial* configuration dataclass (``project_name``,
``version``, then ``endpoint``, ``organization``, ``timeout``, ``enabled``, ``verbose``, all ``None`` by
default) that ``create_config`` / ``merge_config`` / ``validate_config`` take; the package re-exports it
as ``ConfigTelemetryConfig``. The client's configuration is ``automagik_telemetry.TelemetryConfig``
(also ``automagik_telemetry.client.TelemetryConfig``, as in 0.1.4, and
``automagik_telemetry.settings.TelemetryConfig``, where it is defined).

See legacy_config.py for the implementation and docs/migrating-from-0.1.md for the choice.
"""

from .legacy_config import (
    DEFAULT_CONFIG,
    ENV_VARS,
    ConfigTelemetryConfig,
    TelemetryConfig,
    ValidatedConfig,
    create_config,
    load_config_from_env,
    merge_config,
    validate_config,
)
from .settings import TelemetryConfig as ClientTelemetryConfig

__all__ = [
    "DEFAULT_CONFIG",
    "ENV_VARS",
    "ClientTelemetryConfig",
    "ConfigTelemetryConfig",
    "TelemetryConfig",
    "ValidatedConfig",
    "create_config",
    "load_config_from_env",
    "merge_config",
    "validate_config",
]
