"""``automagik-telemetry query SQL``: read-only SQL on where the spans went.

``automagik-telemetry query "SELECT span_name, count() FROM telemetry.traces GROUP BY 1"`` answers
from the embedded store (``--embedded DIR`` or ``sink = "embedded"``): through the running agent's
shipper, which holds the store, or directly when the agent is stopped; with ``sink = "clickhouse"``
from the server. Details: ``clickhouse.query``, docs/embedded.md.

Exit codes: 0 answered; 1 the query failed (the store's message is printed); 2 a configuration or
usage problem, including a statement that is not read-only; 69 chDB is not installed.
"""

from __future__ import annotations

import argparse
import sys

from .. import exitcodes
from .options import SINK, Subparsers, add_setting_flags, load

_die = exitcodes.die


def cmd_query(args: argparse.Namespace) -> int:
    # The agent extra (orjson, requests, zstandard) is optional: imported when the command runs, so that a
    # client-only install fails here with one line (cli.main) instead of at start-up.
    from ..clickhouse.query import QueryError, query_bytes

    config = load(args)
    if isinstance(config, int):
        return config
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


def add_parser(sub: Subparsers) -> None:
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
    add_setting_flags(query, SINK)
    query.set_defaults(func=cmd_query)
