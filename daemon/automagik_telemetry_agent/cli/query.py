"""The ``query`` subcommand: read-only SQL on where the spans went (registered by :mod:`.cli`).

``automagik-telemetry query "SELECT span_name, count() FROM telemetry.traces GROUP BY 1"`` answers
from the embedded store (``--embedded DIR`` or ``sink = "embedded"``): through the running agent's
shipper, which holds the store, or directly when the agent is stopped; with ``sink = "clickhouse"``
from the server. Details: :mod:`.embedded_query`, docs/embedded.md.

Exit codes: 0 answered; 1 the query failed (the store's message is printed); 2 a configuration or
usage problem, including a statement that is not read-only; 69 chDB is not installed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from . import exitcodes
from .config import ConfigError, load_config

_die = exitcodes.die


def cmd_query(args: argparse.Namespace, flags: dict[str, object]) -> int:
    from .embedded_query import QueryError, query_bytes

    try:
        config = load_config(args.config, flags)
    except ConfigError as exc:
        return _die(exitcodes.CONFIG, f"config error: {exc}")
    fmt = args.output_format or ("PrettyCompact" if sys.stdout.isatty() else "TabSeparated")
    try:
        out = query_bytes(config, args.sql, fmt)
    except QueryError as exc:
        return _die(exc.exit_code, str(exc))
    try:
        sys.stdout.buffer.write(out)
        sys.stdout.flush()
    except BrokenPipeError:
        pass
    return exitcodes.OK


def add_parser(
    sub: Any,
    add_setting_flags: Callable[[argparse.ArgumentParser], None],
    flags: Callable[[argparse.Namespace], dict[str, object]],
) -> None:
    query = sub.add_parser(
        "query",
        help="run a read-only SQL query on the embedded store (or the ClickHouse server)",
        description="Run a read-only SQL query (SELECT, SHOW, DESCRIBE, EXPLAIN) on the embedded "
        "store: through the running agent, or directly when it is stopped. With sink = "
        "clickhouse, on the server.",
    )
    query.add_argument("sql", help='the statement, e.g. "SELECT span_name, count() FROM telemetry.traces GROUP BY 1"')
    query.add_argument(
        "--format",
        dest="output_format",
        default=None,
        metavar="FORMAT",
        help="ClickHouse output format (default: PrettyCompact on a terminal, else TabSeparated)",
    )
    add_setting_flags(query)
    query.set_defaults(func=lambda a: cmd_query(a, flags(a)))
