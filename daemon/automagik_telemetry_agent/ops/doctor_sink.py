"""The sink checks of ``doctor``: ClickHouse end to end, or that the embedded sink's chDB imports.

For ClickHouse, in order: reachability (and that it is ClickHouse), authentication, version and features
(zstd from 21.1, deduplication tokens from 22.2), the table and its row profile, the schema version
recorded by ``schema apply``, the INSERT privilege (an empty INSERT). A failure stops the checks that
depend on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..clickhouse.errors import ErrorClass, Finding
from ..clickhouse.factory import sink_from_config
from ..clickhouse.http import ClickHouseHttpSink
from ..clickhouse.schema import render_migrations
from ..clickhouse.sink import Capabilities, SinkError
from ..config import ConfigError
from .doctor_check import FAIL, OK, WARN, AddCheck

__all__ = ["check_clickhouse", "check_embedded"]


def check_clickhouse(config: Mapping[str, Any], add: AddCheck) -> None:
    try:
        sink = sink_from_config(config)
    except ConfigError as exc:
        add(FAIL, "clickhouse", str(exc), "fix the clickhouse.* settings")
        return
    try:
        if isinstance(sink, ClickHouseHttpSink):
            _clickhouse(sink, add)
    finally:
        sink.close()


def _clickhouse(sink: ClickHouseHttpSink, add: AddCheck) -> None:
    where = sink.endpoint
    try:
        sink.query("SELECT 1")
    except SinkError as exc:
        result = exc.result
        if result.finding is Finding.NOT_CLICKHOUSE:
            add(
                FAIL,
                "clickhouse reachable",
                str(exc),
                f"{where} answers, but it is not ClickHouse: "
                "set --clickhouse-endpoint (clickhouse.endpoint) to its HTTP interface, e.g. "
                "http://host:8123",
            )
        elif result.status is None or result.error_class is ErrorClass.TRANSIENT:
            add(
                FAIL,
                "clickhouse reachable",
                str(exc),
                f"check that ClickHouse runs and --clickhouse-endpoint {where} is right",
            )
        else:
            add(OK, "clickhouse reachable", f"{where} answers")
            add(
                FAIL,
                "clickhouse auth",
                str(exc),
                "set the right clickhouse.username and clickhouse.password_file (--username, --password-file)",
            )
        return
    add(OK, "clickhouse reachable", f"{where} answers")
    add(OK, "clickhouse auth", f"user {sink.username!r} accepted")
    try:
        detected = sink.detect()
    except SinkError as exc:
        caps = sink.capabilities
        if caps is not None:
            add(OK, "clickhouse version", _features(caps))
        add(
            FAIL,
            "clickhouse table",
            str(exc),
            f"run `automagik-telemetry schema apply` "
            f"(--clickhouse-endpoint {where} --database {sink.database} --table {sink.table})",
        )
        return
    add(OK, "clickhouse version", _features(detected.capabilities))
    profile = detected.profile
    add(OK, "clickhouse table", f"{sink.target} exists, {profile.value} row profile")
    try:
        out = (
            sink.query(
                f"SELECT max(version), any(profile), count() FROM {sink.database}.schema_migrations FORMAT TabSeparated"
            )
            .strip()
            .split("\t")
        )
    except SinkError:
        add(
            WARN,
            "clickhouse schema",
            f"no {sink.database}.schema_migrations: the table was not created by `schema apply`",
            "run `automagik-telemetry schema apply` (it adopts the existing table)",
        )
    else:
        recorded = int(out[0]) if out and out[0].isdigit() and len(out) == 3 and out[2] != "0" else 0
        try:
            latest = render_migrations(profile, sink.database, sink.table, 0)[-1].version
        except Exception:  # migrations not installed: cannot compare, not a problem of this host's setup
            latest = recorded
        if recorded >= latest:
            add(OK, "clickhouse schema", f"version {recorded} ({out[1] or profile.value} profile), up to date")
        else:
            add(
                WARN,
                "clickhouse schema",
                f"version {recorded}, {latest} available",
                "run `automagik-telemetry schema apply`",
            )
    result = sink.insert(b"")  # an empty INSERT: checks the privilege, stores nothing
    if result.ok:
        add(OK, "clickhouse insert", f"user {sink.username!r} may INSERT into {sink.target}")
    else:
        add(FAIL, "clickhouse insert", sink.explain(result), "give the user INSERT on the table (and not readonly)")


def check_embedded(config: Mapping[str, Any], add: AddCheck) -> None:
    import importlib.util

    if importlib.util.find_spec("chdb") is None:
        add(FAIL, "embedded", "chDB is not installed", "pip install 'automagik-telemetry[embedded]'")
    else:
        add(OK, "embedded", f"chDB importable; store in {config['embedded.dir']}")


def _features(caps: Capabilities) -> str:
    zstd = "zstd yes" if caps.zstd else "zstd no (gzip instead; needs 21.1)"
    dedup = (
        "dedup token yes" if caps.dedup_token else "dedup token no (a retried batch may be stored twice; needs 22.2)"
    )
    return f"ClickHouse {caps.version}: {zstd}, {dedup}"
