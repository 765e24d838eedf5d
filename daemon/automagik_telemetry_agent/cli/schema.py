"""``automagik-telemetry schema apply``: create or migrate the tables (needs CREATE rights).

With ``--cluster NAME`` the tables are made ON CLUSTER (replicated ``<table>_local`` under Distributed
``<table>``: clickhouse/cluster_schema.py) through the first endpoint that answers, in the order given.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .. import exitcodes
from ..config import ConfigError, split_urls
from .options import SINK, Subparsers, add_setting_flags, load

if TYPE_CHECKING:  # the agent extra is imported when the command runs (run_apply)
    from ..clickhouse.sink import Sink, SinkError


def run_apply(args: argparse.Namespace) -> int:
    # The agent extra (orjson, requests, zstandard) is optional: imported when the command runs, so that a
    # client-only install fails here with one line (cli.main) instead of at start-up.
    from ..clickhouse.chdb import ChdbUnavailable
    from ..clickhouse.schema import SchemaError, apply, pick_profile
    from ..clickhouse.sink import SinkError

    config = load(args)
    if isinstance(config, int):
        return config
    cluster = config["clickhouse.cluster"]
    if cluster and config["sink"] == "embedded":
        return exitcodes.die(exitcodes.CONFIG, "config error: --cluster needs ClickHouse servers, not sink = embedded")
    try:
        sink, version = _first_answering(config)
    except ConfigError as exc:
        return exitcodes.die(exitcodes.CONFIG, f"config error: {exc}")
    except ChdbUnavailable as exc:
        return exitcodes.die(exitcodes.UNAVAILABLE, str(exc))
    except SinkError as exc:
        return _sink_failure(exc)
    hosts: Counter[str] = Counter()
    try:
        profile = pick_profile(version)
        applied = apply(
            _counting_hosts(sink.query, hosts),
            profile,
            config["clickhouse.database"],
            config["clickhouse.table"],
            args.ttl_days,
            logs_table=config["clickhouse.logs_table"],
            metrics_table=config["clickhouse.metrics_table"],
            cluster=cluster,
        )
    except SinkError as exc:
        return _sink_failure(exc)
    except (SchemaError, ValueError) as exc:
        return exitcodes.die(exitcodes.FAILURE, f"schema apply failed: {exc}")
    finally:
        sink.close()
    done = ", ".join(map(str, applied)) if applied else "none (already up to date)"
    print(f"{_what(config, sink, version, profile.value)}: applied migrations {done}")
    for host, count in sorted(hosts.items()):
        print(f"  {host}: {count} ON CLUSTER statements done")
    return exitcodes.OK


def _sink_failure(exc: SinkError) -> int:
    """A server's refusal is the configuration's fault (exit 2: credentials, rights); anything else exit 1."""
    from ..clickhouse.errors import ErrorClass

    code = exitcodes.CONFIG if exc.result.error_class is ErrorClass.CONFIG else exitcodes.FAILURE
    return exitcodes.die(code, str(exc))


def _first_answering(config: Mapping[str, Any]) -> tuple[Sink, str]:
    """The sink to apply through and its ``SELECT version()``: the embedded store, or the first endpoint (in
    the order given: every host sees the same cluster, and the first is the one an operator expects) that
    answers; refused credentials stop the search (another endpoint would refuse them too)."""
    from ..clickhouse.errors import ErrorClass
    from ..clickhouse.factory import endpoint_sinks, sink_from_config
    from ..clickhouse.sink import SinkError

    if config["sink"] == "embedded":
        embedded = sink_from_config(config)
        try:
            return embedded, embedded.query("SELECT version()").strip()
        except BaseException:
            embedded.close()
            raise
    given = [url.rstrip("/") for url in split_urls(config["clickhouse.endpoint"])]
    members = endpoint_sinks(config, table=config["clickhouse.table"])
    members.sort(key=lambda s: given.index(s.endpoint) if s.endpoint in given else len(given))
    last: SinkError | None = None
    for i, member in enumerate(members):
        try:
            version = member.query("SELECT version()").strip()
        except SinkError as exc:
            member.close()
            last = exc
            if exc.result.error_class is ErrorClass.CONFIG:
                break
            continue
        for other in members[i + 1 :]:
            other.close()
        return member, version
    assert last is not None  # endpoint_sinks returns at least one sink
    raise last


def _counting_hosts(execute: Callable[[str], str], hosts: Counter[str]) -> Callable[[str], str]:
    """``execute``, counting per ``host:port`` the ON CLUSTER statements each host reported done."""
    from ..clickhouse.cluster_schema import is_on_cluster, parse_ddl_reply

    def run(sql: str) -> str:
        out = execute(sql)
        if is_on_cluster(sql):
            hosts.update(f"{h.host}:{h.port}" for h in parse_ddl_reply(out) if h.status == 0)
        return out

    return run


def _what(config: Mapping[str, Any], sink: Sink, version: str, profile: str) -> str:
    """What was applied where, for the summary line: the traces table (on a cluster with its layout), the
    server, and with several endpoints the one used."""
    cluster = config["clickhouse.cluster"]
    server = f"ClickHouse {version} ({profile} profile)"
    via = f" via {sink.endpoint}" if len(split_urls(config["clickhouse.endpoint"])) > 1 else ""
    if not cluster:
        return f"{sink.target} on {server}{via}"
    target = f"{config['clickhouse.database']}.{config['clickhouse.table']}"
    return f"{target} (Distributed over {target}_local, ReplicatedMergeTree) on cluster {cluster}, {server}{via}"


def add_parser(sub: Subparsers) -> None:
    schema = sub.add_parser("schema", help="ClickHouse schema tools")
    schema_sub = schema.add_subparsers(dest="schema_command", required=True)
    apply_cmd = schema_sub.add_parser(
        "apply", help="create or migrate the traces, logs and metrics tables (needs CREATE rights)"
    )
    add_setting_flags(apply_cmd, SINK)
    apply_cmd.add_argument(
        "--ttl-days", type=int, default=0, help="drop rows older than this (modern servers; 0 = keep forever)"
    )
    apply_cmd.set_defaults(func=run_apply)
