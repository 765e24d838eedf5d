"""The OTLP ``resource`` line: who is emitting (service, host, process, SDK).

Built once per process and reused as the first line of every RECORDS message; it contains the pid,
so a forked child builds its own.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
from collections.abc import Mapping
from typing import Any

from .attributes import key_values
from .settings import TelemetryConfig

SDK_NAME = "automagik-telemetry"
SDK_VERSION = "0.2.0"


def resource_attributes(
    config: TelemetryConfig, sdk_version: str = SDK_VERSION, extra: Mapping[str, object] | None = None
) -> dict[str, Any]:
    """The resource attributes of this process, then ``extra`` (the client's, e.g. 0.1.4's ``user.id``);
    ``config.resource_attributes`` override them all."""
    attributes: dict[str, Any] = {
        "service.name": config.service_name,
        "project.name": config.project_name,
        "project.version": config.version,
        "deployment.environment": config.environment,
        "host.name": socket.gethostname(),
        "os.type": platform.system().lower(),
        "os.version": platform.release(),
        "process.pid": os.getpid(),
        "process.runtime.name": sys.implementation.name,
        "process.runtime.version": platform.python_version(),
        "telemetry.sdk.name": SDK_NAME,
        "telemetry.sdk.version": sdk_version,
    }
    if extra:
        attributes.update(extra)
    attributes.update(config.resource_attributes)
    return attributes


def build_resource_line(
    config: TelemetryConfig, sdk_version: str = SDK_VERSION, extra: Mapping[str, object] | None = None
) -> bytes:
    """The resource as one newline-terminated compact JSON line."""
    attributes = key_values(resource_attributes(config, sdk_version, extra), config.max_attribute_length)
    return ('{"attributes":' + attributes + "}\n").encode("utf-8", "replace")
