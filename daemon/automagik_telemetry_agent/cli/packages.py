"""Which optional packages this installation lacks (the ``agent`` extra), so commands can say what to install."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

#: Import names of the ``agent`` extra's packages (pip names use "-" for "_").
AGENT_EXTRA = ("orjson", "requests", "zstandard", "prometheus_client", "h11", "google.protobuf", "opentelemetry.proto")
#: What the shipper (and every command that talks to a sink) imports.
SHIPPER_NEEDS = ("orjson", "requests", "zstandard")
#: What the OTLP receiver imports (pip: h11, protobuf, opentelemetry-proto).
OTLP_NEEDS = ("orjson", "h11", "google.protobuf", "opentelemetry.proto")


def missing_agent_extras(names: Sequence[str] = SHIPPER_NEEDS) -> list[str]:
    """Packages of the ``agent`` extra (by default those the shipper needs) not importable here."""
    return [name for name in names if not _importable(name)]


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ModuleNotFoundError, ValueError):  # a dotted name whose parent is missing; a module set to None
        return False
