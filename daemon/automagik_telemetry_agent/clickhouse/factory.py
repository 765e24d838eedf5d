"""The sink a configuration names: :func:`sink_from_config` (the only place that builds one)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config import ConfigError
from .chdb import ChdbUnavailable, chdb_missing, load_chdb
from .embedded import EmbeddedSink
from .http import ClickHouseHttpSink
from .sink import Sink, Tables

__all__ = ["read_password", "sink_from_config", "tables_of"]


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
    (also for ``sink = "none"``: a shipper started on its own next to an ingest-only agent ships to a server).

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
    try:
        return ClickHouseHttpSink(
            endpoint=config["clickhouse.endpoint"],
            database=config["clickhouse.database"],
            table=config["clickhouse.table"],
            username=config["clickhouse.username"],
            password=read_password(config),
            ca_bundle=config["clickhouse.ca_bundle"] or None,
            verify_tls=config["clickhouse.verify_tls"],
            connect_timeout=config["clickhouse.connect_timeout"],
            read_timeout=config["clickhouse.read_timeout"],
            compression=config["clickhouse.compression"],
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
