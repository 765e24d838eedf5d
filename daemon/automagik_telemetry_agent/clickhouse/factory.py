"""The sink a configuration names: :func:`sink_from_config` (the only place that builds one)."""

from __future__ import annotations

import socket
import zlib
from collections.abc import Mapping
from typing import Any

from ..config import ConfigError, split_urls
from .chdb import ChdbUnavailable, chdb_missing, load_chdb
from .cluster_schema import LOCAL_SUFFIX
from .embedded import EmbeddedSink
from .failover import FailoverSink
from .http import ClickHouseHttpSink
from .sink import Sink, Tables

__all__ = [
    "LOCAL_SUFFIX",
    "endpoint_sinks",
    "insert_table",
    "ordered_endpoints",
    "read_password",
    "sink_from_config",
    "tables_of",
]


def insert_table(config: Mapping[str, Any], name: str) -> str:
    """The table the shipper inserts ``name``'s rows into: ``name``, or ``name_local`` on a cluster (the
    replicated table of an endpoint; the ``Distributed`` table under the plain name reads every shard:
    ``schema apply --cluster`` creates both)."""
    return name + LOCAL_SUFFIX if config["clickhouse.cluster"] else name


def ordered_endpoints(config: Mapping[str, Any], host: str | None = None) -> tuple[str, ...]:
    """The endpoints in preference order: as given, or on a cluster rotated by a hash of the host name, so
    that the agents of a fleet sharing one list spread over its shards and replicas (each still sends one
    large insert to one place; the rest of the list is its failover order)."""
    endpoints = split_urls(config["clickhouse.endpoint"])
    if not config["clickhouse.cluster"] or len(endpoints) < 2:
        return endpoints
    start = zlib.crc32((host if host is not None else socket.gethostname()).encode()) % len(endpoints)
    return endpoints[start:] + endpoints[:start]


def endpoint_sinks(config: Mapping[str, Any], table: str | None = None) -> list[ClickHouseHttpSink]:
    """One HTTP sink per endpoint, in preference order, for ``table`` (default: the traces table the
    shipper inserts into). Raises ConfigError for a bad setting."""
    target = table if table is not None else insert_table(config, config["clickhouse.table"])
    password = read_password(config)
    try:
        return [
            ClickHouseHttpSink(
                endpoint=endpoint,
                database=config["clickhouse.database"],
                table=target,
                username=config["clickhouse.username"],
                password=password,
                ca_bundle=config["clickhouse.ca_bundle"] or None,
                verify_tls=config["clickhouse.verify_tls"],
                connect_timeout=config["clickhouse.connect_timeout"],
                read_timeout=config["clickhouse.read_timeout"],
                compression=config["clickhouse.compression"],
                async_insert=config["clickhouse.async_insert"],
            )
            for endpoint in ordered_endpoints(config)
        ]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def read_password(config: Mapping[str, Any]) -> str:
    """``clickhouse.password_file``'s first line if set, else ``clickhouse.password``."""
    path = config["clickhouse.password_file"]
    if not path:
        return str(config["clickhouse.password"])
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"--password-file {path}: {exc.strerror}") from None


def tables_of(config: Mapping[str, Any]) -> Tables:
    """The three table names a configuration sets."""
    return Tables(config["clickhouse.table"], config["clickhouse.logs_table"], config["clickhouse.metrics_table"])


def sink_from_config(config: Mapping[str, Any], serve_queries: bool = False) -> Sink:
    """The sink ``config`` names: the embedded chDB store for ``sink = "embedded"``, else ClickHouse over HTTP
    (also for ``sink = "none"``: a shipper started on its own next to an ingest-only agent ships to a server):
    one endpoint, or a :class:`~.failover.FailoverSink` over several or over a cluster's.

    Raises ConfigError for a bad setting and :class:`~.chdb.ChdbUnavailable` (exit 69) when the
    embedded sink is chosen but chDB is not installed. ``serve_queries``: the embedded store answers
    `automagik-telemetry query` while this process holds it (the shipper's sink does).
    """
    if config["sink"] == "embedded":
        missing = chdb_missing()
        if missing:
            raise ChdbUnavailable(missing)
        try:
            sink = EmbeddedSink(
                config["embedded.dir"],
                config["clickhouse.database"],
                config["clickhouse.table"],
                serve_queries=serve_queries,
                tables=tables_of(config),
            )
            load_chdb(sink.directory)  # fail now, with one line, rather than retrying forever
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        except OSError as exc:
            raise ConfigError(f"embedded.dir: {exc.strerror or exc}") from None
        return sink
    members = endpoint_sinks(config)
    if len(members) == 1 and not config["clickhouse.cluster"]:
        return members[0]
    return FailoverSink(members, probe_interval=config["shipper.probe_interval"] or 1.0)
