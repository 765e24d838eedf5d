"""Event names shared by every Automagik project, compatible with ``automagik_telemetry.schema`` of 0.1.4."""

from __future__ import annotations

from typing import Final

__all__ = ["StandardEvents"]


class StandardEvents:
    """Namespace of the standard event names (plain ``str`` constants), with the attributes each carries."""

    #: A feature was used. Attributes: project, feature_name, feature_category.
    FEATURE_USED: Final = "automagik.feature.used"
    #: An API request was served. Attributes: project, endpoint, method, status.
    API_REQUEST: Final = "automagik.api.request"
    #: A CLI command ran. Attributes: project, command, subcommand.
    COMMAND_EXECUTED: Final = "automagik.cli.command"
    #: How long an operation took. Attributes: project, operation_type, duration_ms.
    OPERATION_LATENCY: Final = "automagik.performance.latency"
    #: An error happened. Attributes: project, error_code, error_category, severity.
    ERROR_OCCURRED: Final = "automagik.error"
    #: A service reported its health. Attributes: project, service_name, status.
    SERVICE_HEALTH: Final = "automagik.health"
