"""The sink checks of ``doctor``: ClickHouse end to end, or that the embedded sink's chDB imports.

For one ClickHouse endpoint without a cluster, in order: reachability (and that it is ClickHouse),
authentication, version and features (zstd from 21.1, deduplication tokens from 22.2), the table and its
row profile, the schema version recorded by ``schema apply``, the INSERT privilege (an empty INSERT). A
failure stops the checks that depend on it.

With several endpoints, or a cluster (``clickhouse.cluster``), one line per endpoint instead
(:func:`check_endpoints`), in the order given: reachable (else the error, and nothing more), the server
version, on a cluster its ``shard`` and ``replica`` macros and whether it knows the cluster, whether the
tables exist with the engines ``schema apply`` makes (on a cluster ``<table>_local`` replicated and
``<table>`` Distributed), the row profile, the recorded migrations and whether every endpoint records
the same ones, the INSERT privilege. One FAIL among them fails the line.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..clickhouse.cluster_schema import REQUIRED_MACROS, local_table
from ..clickhouse.errors import ErrorClass, Finding
from ..clickhouse.factory import endpoint_sinks, ordered_endpoints, sink_from_config
from ..clickhouse.http import ClickHouseHttpSink
from ..clickhouse.resource import Profile
from ..clickhouse.schema import quote, render_migrations
from ..clickhouse.sink import Capabilities, SinkError
from ..config import ConfigError, split_urls
from .doctor_check import FAIL, OK, WARN, AddCheck, Status

__all__ = ["check_clickhouse", "check_embedded", "check_endpoints"]


def check_clickhouse(config: Mapping[str, Any], add: AddCheck) -> None:
    if len(split_urls(config["clickhouse.endpoint"])) > 1 or config["clickhouse.cluster"]:
        check_endpoints(config, add)
        return
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


# ------------------------------------------------------------------ several endpoints, or a cluster


@dataclass
class _Problem:
    status: Status
    text: str
    fix: str


@dataclass
class _Endpoint:
    """What one endpoint told :func:`_probe`; ``problems`` are its own (the migrations' comparison comes later)."""

    endpoint: str
    facts: list[str] = field(default_factory=list)
    problems: list[_Problem] = field(default_factory=list)
    reachable: bool = False
    read: bool = False  # every query of _probe answered
    migrations: tuple[tuple[int, str], ...] | None = None  # (version, checksum); None: no schema_migrations

    def problem(self, status: Status, text: str, fix: str) -> None:
        self.problems.append(_Problem(status, text, fix))


def check_endpoints(config: Mapping[str, Any], add: AddCheck) -> None:
    """One line per endpoint of ``clickhouse.endpoint`` (see the module docstring): ok, warn or FAIL."""
    try:
        sinks = endpoint_sinks(config)
    except ConfigError as exc:
        add(FAIL, "clickhouse", str(exc), "fix the clickhouse.* settings")
        return
    given = [url.rstrip("/") for url in split_urls(config["clickhouse.endpoint"])]
    sinks.sort(key=lambda s: given.index(s.endpoint) if s.endpoint in given else len(given))
    try:
        reports = [_probe(sink, config, several=len(sinks) > 1) for sink in sinks]
    finally:
        for sink in sinks:
            sink.close()
    _compare_migrations(reports)
    first = ordered_endpoints(config)[0].rstrip("/")
    for report in reports:
        facts = report.facts + (["this host's first choice"] if report.endpoint == first and len(reports) > 1 else [])
        worst = FAIL if any(p.status is FAIL for p in report.problems) else WARN if report.problems else OK
        detail = "; ".join(part for part in [", ".join(facts), *(p.text for p in report.problems)] if part)
        fix = next((p.fix for p in report.problems if p.status is worst and p.fix), "")
        add(worst, f"clickhouse {report.endpoint}", detail, fix)


def _probe(sink: ClickHouseHttpSink, config: Mapping[str, Any], several: bool) -> _Endpoint:
    report = _Endpoint(sink.endpoint)
    try:
        version = sink.query("SELECT version()").strip()
    except SinkError as exc:
        _unreachable(report, exc, several)
        return report
    report.reachable = True
    report.facts.append(f"ClickHouse {version}")
    cluster = config["clickhouse.cluster"]
    database = sink.database
    names = (config["clickhouse.table"], config["clickhouse.logs_table"], config["clickhouse.metrics_table"])
    try:
        if cluster:
            _check_macros(sink, report, cluster)
        _check_tables(sink, report, database, names, cluster)
        report.migrations = _migrations(sink, database)
        report.read = True
    except SinkError as exc:
        report.problem(FAIL, f"query failed: {_one_line(exc)}", "see the server's log")
        return report
    _check_rows_and_insert(sink, report)
    return report


def _unreachable(report: _Endpoint, exc: SinkError, several: bool) -> None:
    result, where = exc.result, report.endpoint
    if result.finding is Finding.NOT_CLICKHOUSE:
        report.problem(
            FAIL,
            f"answers, but it is not ClickHouse: {_one_line(exc)}",
            "set --clickhouse-endpoint (clickhouse.endpoint) to its HTTP interface, e.g. http://host:8123",
        )
    elif result.status is None or result.error_class is ErrorClass.TRANSIENT:
        report.problem(
            FAIL,
            f"unreachable: {_one_line(exc)}",
            f"check that ClickHouse runs on {where}"
            + (" (the shipper uses the other endpoints meanwhile)" if several else ""),
        )
    else:
        report.problem(
            FAIL,
            f"refused: {_one_line(exc)}",
            "set the right clickhouse.username and clickhouse.password_file (--username, --password-file)",
        )


def _check_macros(sink: ClickHouseHttpSink, report: _Endpoint, cluster: str) -> None:
    macros = dict(_pairs(sink, "SELECT macro, substitution FROM system.macros"))
    if all(macros.get(name) for name in REQUIRED_MACROS):
        report.facts.append(f"shard {macros['shard']} replica {macros['replica']}")
    else:
        missing = [name for name in REQUIRED_MACROS if not macros.get(name)]
        report.problem(
            FAIL,
            f"no {' and no '.join(missing)} macro",
            "set <macros><shard>, <replica> in the server's configuration (unique replica per shard)",
        )
    known = sink.query(f"SELECT count() FROM system.clusters WHERE cluster = {quote(cluster)}").strip()
    if known in ("", "0"):
        report.problem(
            FAIL,
            f"cluster {cluster} is not in its system.clusters",
            f"define {cluster} in <remote_servers>, or fix --cluster (clickhouse.cluster)",
        )


def _check_tables(
    sink: ClickHouseHttpSink, report: _Endpoint, database: str, names: tuple[str, ...], cluster: str
) -> None:
    """The tables exist with the engines ``schema apply`` makes; the facts name them grouped by engine."""
    wanted = [local_table(n) for n in names] + list(names) if cluster else list(names)
    listed = ", ".join(quote(n) for n in wanted)
    sql = f"SELECT name, engine FROM system.tables WHERE database = {quote(database)} AND name IN ({listed})"
    engines = dict(_pairs(sink, sql))
    found = [n for n in wanted if n in engines]
    by_engine: dict[str, list[str]] = {}
    for name in found:
        by_engine.setdefault(engines[name], []).append(name)
    if found:
        report.facts.append("tables " + ", ".join(f"{' '.join(ns)} ({engine})" for engine, ns in by_engine.items()))
    apply_hint = "run `automagik-telemetry schema apply" + (f" --cluster {cluster}`" if cluster else "`")
    missing = [n for n in wanted if n not in engines]
    if missing:
        report.problem(FAIL, f"no {', '.join(f'{database}.{n}' for n in missing)}", apply_hint)
    if cluster:
        wrong = [n for n in names if engines.get(n, "Distributed") != "Distributed"]
        wrong += [t for t in map(local_table, names) if not engines.get(t, "Replicated").startswith("Replicated")]
        if wrong:
            report.problem(
                FAIL,
                f"{', '.join(wrong)}: not the engines of `schema apply --cluster` (plain tables?)",
                "a database set up without --cluster: see docs/schema.md#clusters",
            )


def _migrations(sink: ClickHouseHttpSink, database: str) -> tuple[tuple[int, str], ...] | None:
    try:
        rows = _pairs(sink, f"SELECT toString(version), checksum FROM {database}.schema_migrations")
    except SinkError:
        return None
    return tuple(sorted({(int(v), c) for v, c in rows if v.isdigit()}))


def _check_rows_and_insert(sink: ClickHouseHttpSink, report: _Endpoint) -> None:
    """The shipper's view of its insert table (row profile, columns) and an empty INSERT into it."""
    if any(p.status is FAIL for p in report.problems):
        return
    try:
        profile = sink.detect().profile
    except SinkError as exc:
        report.problem(FAIL, sink.explain(exc.result), "run `automagik-telemetry schema apply`")
        return
    report.facts.append(f"{profile.value} rows")
    result = sink.insert(b"")
    if result.ok:
        report.facts.append(f"INSERT into {sink.table} allowed")
    else:
        report.problem(FAIL, sink.explain(result), "give the user INSERT on the table (and not readonly)")


def _compare_migrations(reports: list[_Endpoint]) -> None:
    """Add each reachable endpoint's recorded migrations, and whether they are the others' (the most common
    set is the reference), to its line; behind the newest migration file, or none recorded: a warning."""
    reachable = [r for r in reports if r.read]
    recorded = Counter(r.migrations for r in reachable if r.migrations is not None)
    reference = recorded.most_common(1)[0][0] if recorded else None
    try:  # both profiles have the same versions (tests/shipper/test_schema.py)
        latest = render_migrations(Profile.LEGACY, "d", "t", 0)[-1].version
    except Exception:  # migrations not installed: cannot compare, not a problem of this host's setup
        latest = 0
    for r in reachable:
        if r.migrations is None:
            r.problem(WARN, "no schema_migrations", "run `automagik-telemetry schema apply`")
            continue
        versions = [v for v, _ in r.migrations]
        same = len(reachable) > 1 and recorded[r.migrations] == len(reachable)
        r.facts.append(f"migrations {_ranges(versions)}" + (" (same as the other endpoints)" if same else ""))
        if r.migrations != reference:
            others = [o.endpoint for o in reachable if o.migrations == reference]
            r.problem(
                WARN,
                f"records other migrations than {', '.join(others)} ({_ranges([v for v, _ in reference or ()])})",
                "wait for replication (SYSTEM SYNC REPLICA on schema_migrations), then run `schema apply`",
            )
        elif (newest := max(versions, default=0)) < latest:
            r.problem(WARN, f"version {newest}, {latest} available", "run `automagik-telemetry schema apply`")


def _ranges(versions: list[int]) -> str:
    """``1-4``, ``1, 3`` or ``none``."""
    if not versions:
        return "none"
    if versions == list(range(versions[0], versions[-1] + 1)) and len(versions) > 2:
        return f"{versions[0]}-{versions[-1]}"
    return ", ".join(map(str, versions))


def _pairs(sink: ClickHouseHttpSink, sql: str) -> list[tuple[str, str]]:
    """The two columns of ``sql``'s rows (JSON: no escaping rules to get wrong)."""
    rows = [json.loads(line) for line in sink.query(sql + " FORMAT JSONEachRow").splitlines() if line.strip()]
    return [(str(a), str(b)) for a, b in (tuple(row.values()) for row in rows)]


def _one_line(exc: BaseException, limit: int = 400) -> str:
    """``exc``'s text on one line, cut to ``limit`` characters (a refused connection's text is long)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
