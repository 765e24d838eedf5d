"""What both sinks check and ask of the table they write, whatever carries their SQL.

* The row shape: :func:`profile_row_keys`, the columns a row of a profile fills; :func:`require_row_shape`,
  the profile of an existing table whose columns fit those rows (else :class:`~.sink.SinkError`, CONFIG);
  :func:`lacks_optional_columns`, a traces table older than migration 0004 (its keys are then skipped).
* The restart probe: :func:`count_rows_sql` and :func:`count_present_sql`, how many of a batch's rows a
  table already holds.

:class:`~.http.ClickHouseHttpSink` and :class:`~.embedded.EmbeddedSink` both run these (and
:mod:`.http` re-exports them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cache

from .errors import ErrorClass, Finding
from .resource import OPTIONAL_SPAN_COLUMNS, Profile, parse_resource
from .rows import transform_span
from .schema import detect_table_profile
from .sink import InsertResult, RowKeys, SinkError
from .sql import identifier, quote

__all__ = ["count_present_sql", "count_rows_sql", "lacks_optional_columns", "profile_row_keys", "require_row_shape"]

#: The HTTP sink's logger, under which these checks always logged (a log line names its logger).
log = logging.getLogger("automagik_telemetry_agent.clickhouse.http")


@cache
def profile_row_keys(profile: Profile) -> frozenset[str]:
    """The columns a row of ``profile`` must find in the target table: every column it fills but those of
    migration 0004 (:data:`~.rows.OPTIONAL_SPAN_COLUMNS`), which an older table may lack: inserts skip the
    keys a table has no column for (``input_format_skip_unknown_fields``)."""
    resource = parse_resource(b'{"attributes":[]}')
    span = (
        b'{"traceId":"0123456789abcdef0123456789abcdef","spanId":"0123456789abcdef","name":"x",'
        b'"startTimeUnixNano":"1700000000000000000"}'
    )
    return frozenset(transform_span(span, resource, profile)) - OPTIONAL_SPAN_COLUMNS


def require_row_shape(
    target: str,
    columns: dict[str, str],
    explain: Callable[[InsertResult], str],
    row_keys: RowKeys = profile_row_keys,
) -> Profile:
    """The profile of an existing table from its ``{column: type}``; :class:`SinkError` (CONFIG) when rows
    of neither shape fit it (both sinks check the table they find the same way). ``row_keys``: the columns
    the table's rows fill, by profile (spans' by default)."""
    profile = detect_table_profile(columns)
    if profile is None:
        result = InsertResult(
            False,
            ErrorClass.CONFIG,
            message=f"table {target} has neither a Map `attributes` nor `attribute_keys`",
            finding=Finding.TABLE_UNKNOWN_SHAPE,
        )
        raise SinkError(result, explain(result))
    missing = sorted(row_keys(profile) - set(columns))
    if missing:
        result = InsertResult(
            False,
            ErrorClass.CONFIG,
            message=f"table {target} lacks columns {', '.join(missing)}",
            finding=Finding.TABLE_LACKS_COLUMNS,
        )
        raise SinkError(result, explain(result))
    return profile


def lacks_optional_columns(target: str, columns: dict[str, str], row_keys: RowKeys) -> bool:
    """Whether a traces table lacks migration 0004's columns (logged once per detection, with the fix): the
    sink then lets the server skip those keys. Only then: on a table that has them, a column dropped
    while shipping must stay an error, not silent loss."""
    if row_keys is not profile_row_keys:
        return False
    missing = sorted(OPTIONAL_SPAN_COLUMNS - set(columns))
    if missing:
        log.warning(
            "table %s lacks the columns of migration 0004 (%s): their values are left out of its rows (the "
            "resource attributes and the otel.scope.* attributes still carry them); run `automagik-telemetry "
            "schema apply` to add them",
            target,
            ", ".join(missing),
        )
    return bool(missing)


def count_present_sql(target: str, span_ids: list[str], min_ns: int, max_ns: int) -> str:
    """The restart probe's query for spans: how many of ``span_ids``, started within ``[min_ns, max_ns]``,
    ``target`` holds (:func:`count_rows_sql` with the one column ``span_id``)."""
    return count_rows_sql(target, ("span_id",), [(s,) for s in span_ids], min_ns, max_ns)


def _literal(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"the restart probe compares strings and integers, not {type(value).__name__}")
    return str(value) if isinstance(value, int) else quote(value)


def count_rows_sql(
    target: str, columns: tuple[str, ...], keys: list[tuple[object, ...]], min_ns: int, max_ns: int
) -> str:
    """The restart probe's query: how many rows of ``target`` within ``[min_ns, max_ns]`` (the time range
    prunes partitions) have one of ``keys`` in ``columns`` (strings are quoted, so any value is safe)."""
    for column in columns:
        identifier(column)
    tuples = ", ".join("(" + ", ".join(_literal(v) for v in key) + ")" for key in keys)
    lo, hi = min_ns // 1_000_000_000, max_ns // 1_000_000_000 + 1
    return (
        f"SELECT count() FROM {target} WHERE timestamp >= toDateTime({lo}) AND timestamp <= toDateTime({hi}) "
        f"AND ({', '.join(columns)}) IN ({tuples or '(' + ', '.join(['NULL'] * len(columns)) + ')'}) "
        "FORMAT TabSeparated"
    )
