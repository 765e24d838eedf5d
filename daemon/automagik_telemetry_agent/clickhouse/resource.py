"""A WAL record's first line, its OTLP ``resource``, parsed once for all of the record's rows, and the
table shapes (:class:`Profile`) rows are built for.

Every signal's row transform (:mod:`.rows` for spans, :mod:`.log_rows`, :mod:`.metric_rows`) starts
from the :class:`Resource` of :func:`parse_resource`: the lifted columns (``service_name`` ...), the
remaining attributes rendered once (as a map and as sorted parallel arrays), and how the record's lines
are written (:class:`LineFormat`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import orjson

from automagik_telemetry.protocol import COMPACT_SPANS, OTLP_SPANS

from .anyvalue import render_attributes
from .scalars import TransformError

__all__ = [
    "LIFTED_RESOURCE_ATTRIBUTES",
    "OPTIONAL_SPAN_COLUMNS",
    "V014_RESOURCE_COLUMNS",
    "LineFormat",
    "Profile",
    "Resource",
    "parse_resource",
]


class Profile(enum.Enum):
    """The table shape rows are produced for (see ``deploy/clickhouse/README.md``)."""

    MODERN = "modern"
    LEGACY = "legacy"


class LineFormat(enum.Enum):
    """How the span lines of a record are written (the resource line's ``lineFormat`` member).

    ``OTLP``: each line one OTLP/JSON span object (no ``lineFormat``: every client and the OTLP receiver).
    ``COMPACT``: each line a positional JSON array (``"lineFormat": "compact-1"``, see
    ``docs/protocol.md``): cheaper to write in a client and to read here, and the same row."""

    OTLP = OTLP_SPANS
    COMPACT = COMPACT_SPANS


_LINE_FORMATS = {f.value: f for f in LineFormat}

#: Resource attributes that become columns of their own; the rest go to ``resource_attributes``.
LIFTED_RESOURCE_ATTRIBUTES: dict[str, str] = {
    "service.name": "service_name",
    "project.name": "project_name",
    "project.version": "project_version",
    "deployment.environment": "environment",
    "host.name": "hostname",
    "os.type": "os_type",
    "os.version": "os_version",
    "process.runtime.name": "runtime_name",
    "process.runtime.version": "runtime_version",
    "telemetry.sdk.version": "sdk_version",
}

#: Columns of 0.1.4's traces table (migration 0004), filled from resource attributes that stay in
#: ``resource_attributes`` too: a table not migrated yet loses nothing (the insert skips unknown keys).
V014_RESOURCE_COLUMNS: dict[str, str] = {
    "user.id": "user_id",
    "session.id": "session_id",
    "cloud.provider": "cloud_provider",
    "cloud.region": "cloud_region",
    "cloud.availability_zone": "cloud_availability_zone",
}
#: The columns of migration 0004: rows fill them, a table may lack them (``shipper`` keeps working and
#: ``doctor``/``schema apply`` say what to run). The scope's are filled from a span line's ``scope``
#: member, ``links`` from its ``links`` (the OTLP receiver writes both).
OPTIONAL_SPAN_COLUMNS = frozenset(
    {*V014_RESOURCE_COLUMNS.values(), "instrumentation_library_name", "instrumentation_library_version", "links"}
)


@dataclass(frozen=True, slots=True)
class Resource:
    """The resource shared by the spans of one record, pre-split into lifted columns and the rest."""

    #: Lifted columns by column name (``service_name`` ...), always all of them ("" when absent).
    columns: dict[str, str]
    #: The span rows' 0.1.4 columns from resource attributes (:data:`V014_RESOURCE_COLUMNS`), all of them.
    span_columns: dict[str, str]
    #: The remaining attributes, rendered, in first-seen key order.
    attributes: dict[str, str]
    #: The same, sorted by key, for the legacy profile's parallel arrays.
    keys: list[str]
    values: list[str]
    #: How this record's span lines are written.
    line_format: LineFormat = LineFormat.OTLP
    #: Per profile (index ``profile is Profile.LEGACY``: no Enum hashing per span), a row with every
    #: column in output order, the resource's already filled in (:func:`.rows._row_template`; ``None`` until
    #: built); each span copies it. Not part of the value.
    templates: list[dict[str, Any] | bool | None] = field(
        default_factory=lambda: [None, None], repr=False, compare=False
    )


def parse_resource(line: bytes) -> Resource:
    """Parse a record's first line, the OTLP resource object, into a :class:`Resource`."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise TransformError("resource: invalid JSON") from None
    if type(obj) is not dict:
        raise TransformError("resource: not a JSON object")
    line_format = LineFormat.OTLP
    named = obj.get("lineFormat")
    if named is not None:
        found = _LINE_FORMATS.get(named) if type(named) is str else None
        if found is None:
            raise TransformError(f"resource: unknown lineFormat {str(named)[:40]!r} (this agent reads compact-1)")
        line_format = found
    attrs = render_attributes(obj.get("attributes"), "resource.attributes")
    columns = dict.fromkeys(LIFTED_RESOURCE_ATTRIBUTES.values(), "")
    rest: dict[str, str] = {}
    for key, value in attrs.items():
        column = LIFTED_RESOURCE_ATTRIBUTES.get(key)
        if column is None:
            rest[key] = value
        else:
            columns[column] = value
    keys = sorted(rest)
    span_columns = {column: attrs.get(key, "") for key, column in V014_RESOURCE_COLUMNS.items()}
    return Resource(
        columns=columns,
        span_columns=span_columns,
        attributes=rest,
        keys=keys,
        values=[rest[k] for k in keys],
        line_format=line_format,
    )
