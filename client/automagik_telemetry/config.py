"""Client configuration: one validated, immutable-by-convention ``TelemetryConfig``.

Every setting is resolved once, at construction, with the precedence *explicit argument, then
environment variable, then default*. Construction is the only place this library raises: an invalid
value raises ``ValueError`` with a message naming the setting, so a misconfiguration is found at
start-up instead of silently losing telemetry later.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from .protocol import DEFAULT_SOCKET_PATH

ENV_ENVIRONMENT = "AUTOMAGIK_TELEMETRY_ENVIRONMENT"
ENV_SOCKET = "AUTOMAGIK_TELEMETRY_SOCKET"
ENV_ENABLED = "AUTOMAGIK_TELEMETRY_ENABLED"
ENV_METRICS_INTERVAL = "AUTOMAGIK_TELEMETRY_METRICS_INTERVAL"

#: The default of ``resource_attributes``, recognized by identity and replaced by a fresh dict (so an
#: explicit ``None`` is still rejected, as it always was). Never mutated.
_NO_RESOURCE_ATTRIBUTES: dict[str, Any] = {}

_FALSE_WORDS = frozenset({"false", "0", "no", "off"})
_TRUE_WORDS = frozenset({"true", "1", "yes", "on", ""})


def _parse_enabled(raw: str) -> bool:
    word = raw.strip().lower()
    if word in _FALSE_WORDS:
        return False
    if word in _TRUE_WORDS:
        return True
    raise ValueError(f"{ENV_ENABLED}={raw!r}: expected one of true/false/1/0/yes/no/on/off")


@dataclass(init=False)
class TelemetryConfig:
    """Settings of one ``AutomagikTelemetry`` client.

    ``None`` for ``environment``, ``service_name``, ``socket_path`` and ``enabled`` means "not given":
    the constructor replaces it by the environment variable or the default, so after construction
    every attribute holds its resolved value (and has the type declared here).

    The constructor is written out (``init=False``) only so that the attributes can be typed as the
    resolved values while the parameters still accept ``None``; it takes the same parameters, in the
    same order, as the generated one did.
    """

    project_name: str
    version: str
    environment: str
    service_name: str
    socket_path: str
    enabled: bool
    #: Spans buffered in memory while the sender is behind or the agent is away; newer spans are
    #: dropped (and counted) beyond this.
    max_queue_size: int = 10_000
    #: Seconds the sender waits before sending a partial batch.
    flush_interval: float = 0.2
    #: Upper bound, in seconds, of the flush performed when the interpreter exits.
    exit_flush_timeout: float = 1.0
    #: Longer string attribute values are truncated to this many characters.
    max_attribute_length: int = 4096
    resource_attributes: dict[str, Any] = field(default_factory=dict)
    #: Seconds between exports of the metric instruments' series (and at flush and exit).
    metrics_interval: float = 10.0
    #: Attribute sets an instrument keeps; more go to one overflow series (counted).
    max_metric_series: int = 2000

    def __init__(
        self,
        project_name: str,
        version: str,
        environment: str | None = None,
        service_name: str | None = None,
        socket_path: str | None = None,
        enabled: bool | None = None,
        max_queue_size: int = 10_000,
        flush_interval: float = 0.2,
        exit_flush_timeout: float = 1.0,
        max_attribute_length: int = 4096,
        resource_attributes: dict[str, Any] = _NO_RESOURCE_ATTRIBUTES,
        metrics_interval: float | None = None,
        max_metric_series: int = 2000,
    ) -> None:
        self.project_name = project_name
        self.version = version
        for name in ("project_name", "version"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"TelemetryConfig.{name} must be a non-empty string, got {value!r}")
        if environment is None:
            environment = os.environ.get(ENV_ENVIRONMENT) or "development"
        self.environment = environment
        self.service_name = project_name if service_name is None else service_name
        if socket_path is None:
            socket_path = os.environ.get(ENV_SOCKET) or DEFAULT_SOCKET_PATH
        self.socket_path = socket_path
        if enabled is None:
            raw = os.environ.get(ENV_ENABLED)
            enabled = True if raw is None else _parse_enabled(raw)
        self.enabled = enabled
        self.max_queue_size = max_queue_size
        self.flush_interval = flush_interval
        self.exit_flush_timeout = exit_flush_timeout
        self.max_attribute_length = max_attribute_length
        if resource_attributes is _NO_RESOURCE_ATTRIBUTES:
            resource_attributes = {}
        self.resource_attributes = resource_attributes
        if metrics_interval is None:
            raw_interval = os.environ.get(ENV_METRICS_INTERVAL)
            try:
                metrics_interval = 10.0 if raw_interval is None else float(raw_interval)
            except ValueError:
                raise ValueError(f"{ENV_METRICS_INTERVAL}={raw_interval!r}: expected a number of seconds") from None
        self.metrics_interval = metrics_interval
        self.max_metric_series = max_metric_series
        self._validate()

    def _validate(self) -> None:
        for name in ("environment", "service_name", "socket_path"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"TelemetryConfig.{name} must be a non-empty string, got {value!r}")
        if len(self.socket_path.encode()) >= 108:
            raise ValueError(f"TelemetryConfig.socket_path is too long for a Unix socket: {self.socket_path!r}")
        if not isinstance(self.enabled, bool):
            raise ValueError(f"TelemetryConfig.enabled must be a bool, got {self.enabled!r}")
        for name in ("max_queue_size", "max_attribute_length", "max_metric_series"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TelemetryConfig.{name} must be a positive integer, got {value!r}")
        for name in ("flush_interval", "exit_flush_timeout", "metrics_interval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"TelemetryConfig.{name} must be a finite number of seconds, got {value!r}")
        if self.flush_interval <= 0:
            raise ValueError(f"TelemetryConfig.flush_interval must be > 0 seconds, got {self.flush_interval!r}")
        if self.metrics_interval <= 0:
            raise ValueError(f"TelemetryConfig.metrics_interval must be > 0 seconds, got {self.metrics_interval!r}")
        if self.exit_flush_timeout < 0:
            raise ValueError(
                f"TelemetryConfig.exit_flush_timeout must be >= 0 seconds, got {self.exit_flush_timeout!r}"
            )
        if not isinstance(self.resource_attributes, dict) or not all(
            isinstance(k, str) for k in self.resource_attributes
        ):
            raise ValueError("TelemetryConfig.resource_attributes must be a dict with string keys")
