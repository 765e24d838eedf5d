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

_FALSE_WORDS = frozenset({"false", "0", "no", "off"})
_TRUE_WORDS = frozenset({"true", "1", "yes", "on", ""})


def _parse_enabled(raw: str) -> bool:
    word = raw.strip().lower()
    if word in _FALSE_WORDS:
        return False
    if word in _TRUE_WORDS:
        return True
    raise ValueError(f"{ENV_ENABLED}={raw!r}: expected one of true/false/1/0/yes/no/on/off")


@dataclass
class TelemetryConfig:
    """Settings of one ``AutomagikTelemetry`` client.

    ``None`` for ``environment``, ``service_name``, ``socket_path`` and ``enabled`` means "not given":
    it is replaced by the environment variable or the default in ``__post_init__``.
    """

    project_name: str
    version: str
    environment: str | None = None
    service_name: str | None = None
    socket_path: str | None = None
    enabled: bool | None = None
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

    def __post_init__(self) -> None:
        for name in ("project_name", "version"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"TelemetryConfig.{name} must be a non-empty string, got {value!r}")
        if self.environment is None:
            self.environment = os.environ.get(ENV_ENVIRONMENT) or "development"
        if self.service_name is None:
            self.service_name = self.project_name
        if self.socket_path is None:
            self.socket_path = os.environ.get(ENV_SOCKET) or DEFAULT_SOCKET_PATH
        if self.enabled is None:
            raw = os.environ.get(ENV_ENABLED)
            self.enabled = True if raw is None else _parse_enabled(raw)
        self._validate()

    def _validate(self) -> None:
        for name in ("environment", "service_name", "socket_path"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"TelemetryConfig.{name} must be a non-empty string, got {value!r}")
        if len(self.socket_path.encode()) >= 108:  # type: ignore[union-attr]
            raise ValueError(f"TelemetryConfig.socket_path is too long for a Unix socket: {self.socket_path!r}")
        if not isinstance(self.enabled, bool):
            raise ValueError(f"TelemetryConfig.enabled must be a bool, got {self.enabled!r}")
        for name in ("max_queue_size", "max_attribute_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TelemetryConfig.{name} must be a positive integer, got {value!r}")
        for name in ("flush_interval", "exit_flush_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"TelemetryConfig.{name} must be a finite number of seconds, got {value!r}")
        if self.flush_interval <= 0:
            raise ValueError(f"TelemetryConfig.flush_interval must be > 0 seconds, got {self.flush_interval!r}")
        if self.exit_flush_timeout < 0:
            raise ValueError(
                f"TelemetryConfig.exit_flush_timeout must be >= 0 seconds, got {self.exit_flush_timeout!r}"
            )
        if not isinstance(self.resource_attributes, dict) or not all(
            isinstance(k, str) for k in self.resource_attributes
        ):
            raise ValueError("TelemetryConfig.resource_attributes must be a dict with string keys")
