"""Which optional packages this installation lacks (the ``agent`` extra), so commands can say what to install."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

#: Import names of the ``agent`` extra's packages (pip names use "-" for "_").
AGENT_EXTRA = ("orjson", "requests", "zstandard", "prometheus_client")
#: What the shipper (and every command that talks to a sink) imports.
SHIPPER_NEEDS = ("orjson", "requests", "zstandard")


def missing_agent_extras(names: Sequence[str] = SHIPPER_NEEDS) -> list[str]:
    """Packages of the ``agent`` extra (by default those the shipper needs) not importable here."""
    return [name for name in names if importlib.util.find_spec(name) is None]
