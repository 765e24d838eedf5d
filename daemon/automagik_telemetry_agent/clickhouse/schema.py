"""ClickHouse schema: pick a profile for a server, render and apply the versioned migrations.

The migrations are SQL files under ``deploy/clickhouse/<profile>/NNNN_name.sql`` (see the README
there). This module owns everything between those files and a server:

* :func:`pick_profile` maps ``SELECT version()`` to :class:`~.rows.Profile`;
* :func:`render_migrations` reads a profile's files, splits them into statements (a small lexer:
  ``;`` inside quotes and comments does not split) and substitutes ``{database}``, ``{table}`` and
  ``{ttl_days}`` (a line using ``{ttl_days}`` is dropped when it is 0: no TTL);
* :func:`apply` runs the pending ones through an ``execute(sql) -> str`` callable and records them in
  ``{database}.schema_migrations``, so the same code drives a server over HTTP and chDB in process; with
  ``cluster=NAME`` it first checks the cluster (:func:`.cluster_check.verify_cluster`) and runs the statements'
  ON CLUSTER form (replicated ``<table>_local`` tables under Distributed ones: :mod:`.cluster_schema`);
* :func:`detect_table_profile` tells which row shape an existing table takes.

Checksums are over the statements *before* substitution, with comments and blank lines removed:
changing the database, table or TTL setting, or a comment, is not a changed migration; changing
SQL of an applied migration is, and :func:`apply` refuses it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from . import cluster_schema
from .cluster_check import cluster_hosts, verify_cluster
from .resource import Profile
from .sql import Executor, SchemaError, identifier, one_line, quote, split_statements, tsv_rows

__all__ = [
    "MIGRATIONS_ENV",
    "Executor",
    "Migration",
    "SchemaError",
    "apply",
    "cluster_hosts",
    "detect_table_profile",
    "identifier",
    "migrations_root",
    "pick_profile",
    "quote",
    "render_migrations",
    "split_statements",
    "table_columns",
    "verify_cluster",
]

log = logging.getLogger(__name__)

#: Environment variable naming the directory holding ``modern/`` and ``legacy/`` (overrides lookup).
MIGRATIONS_ENV = "AUTOMAGIK_TELEMETRY_MIGRATIONS"
#: First version with ``insert_deduplication_token``, which the shipper's exactly-once inserts need.
MODERN_MIN_VERSION = (22, 2)
BOOKKEEPING_TABLE = "schema_migrations"

_FILE_NAME = re.compile(r"(\d{4})_([A-Za-z0-9_]+)\.sql")
_SERVER_VERSION = re.compile(r"\s*v?(\d+)\.(\d+)")

# Legacy-compatible (18.16) types and engine syntax.
_BOOKKEEPING_DDL = """CREATE TABLE IF NOT EXISTS {database}.schema_migrations
(
    version    UInt32,
    name       String,
    profile    String,
    applied_at DateTime,
    checksum   String
)
ENGINE = MergeTree()
ORDER BY version"""


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file of one profile, rendered for a database/table."""

    version: int
    name: str  # the file stem, e.g. "0001_traces"
    profile: Profile
    statements: tuple[str, ...]
    checksum: str  # sha256 hex of the unsubstituted, comment-free statements


# ------------------------------------------------------------------------------------------- profiles


def pick_profile(server_version: str) -> Profile:
    """The profile for a server reporting ``server_version`` (``SELECT version()``): >= 22.2 modern."""
    m = _SERVER_VERSION.match(server_version)
    if m is None:
        raise ValueError(f"not a ClickHouse version: {server_version!r}")
    major, minor = int(m.group(1)), int(m.group(2))
    return Profile.MODERN if (major, minor) >= MODERN_MIN_VERSION else Profile.LEGACY


def detect_table_profile(columns: dict[str, str]) -> Profile | None:
    """The row shape an existing table takes, from its ``{column: type}``; ``None`` if neither."""
    attributes = columns.get("attributes")
    if attributes is not None and attributes.startswith("Map("):
        return Profile.MODERN
    if "attribute_keys" in columns:
        return Profile.LEGACY
    return None


def table_columns(execute: Executor, database: str, table: str) -> dict[str, str]:
    """``{column: type}`` of ``database.table`` from ``system.columns``; empty if it does not exist."""
    out = execute(
        "SELECT name, type FROM system.columns "
        f"WHERE database = {quote(identifier(database))} AND table = {quote(identifier(table))} "
        "FORMAT TabSeparated"
    )
    columns: dict[str, str] = {}
    for row in tsv_rows(out):
        if len(row) == 2:
            columns[row[0]] = row[1]
    return columns


# ------------------------------------------------------------------------------------------ rendering


def migrations_root() -> Path:
    """The directory holding ``modern/`` and ``legacy/``: ``$AUTOMAGIK_TELEMETRY_MIGRATIONS``, else
    ``deploy/clickhouse`` of the source tree, else ``<prefix>/share/automagik-telemetry/clickhouse``."""
    env = os.environ.get(MIGRATIONS_ENV)
    if env:
        return Path(env)
    candidates = [
        Path(__file__).resolve().parents[3] / "deploy" / "clickhouse",
        Path(sys.prefix) / "share" / "automagik-telemetry" / "clickhouse",
        Path("/usr/share/automagik-telemetry/clickhouse"),
    ]
    for path in candidates:
        if path.is_dir():
            return path
    raise SchemaError(
        f"ClickHouse migrations not found (looked in {', '.join(map(str, candidates))}); set {MIGRATIONS_ENV}"
    )


def render_migrations(
    profile: Profile,
    database: str,
    table: str,
    ttl_days: int,
    root: Path | None = None,
    *,
    logs_table: str = "logs",
    metrics_table: str = "metrics",
) -> list[Migration]:
    """The profile's migrations in version order, substituted for ``database``, the three tables (``table``
    is the traces table) and ``ttl_days``."""
    for name in (database, table, logs_table, metrics_table):
        identifier(name)
    if type(ttl_days) is not int or ttl_days < 0:
        raise ValueError(f"ttl_days must be an integer >= 0, not {ttl_days!r}")
    directory = (root or migrations_root()) / profile.value
    if not directory.is_dir():
        raise SchemaError(f"no migrations directory {directory}")
    migrations: dict[int, Migration] = {}
    for path in sorted(directory.iterdir()):
        m = _FILE_NAME.fullmatch(path.name)
        if m is None:
            continue
        version = int(m.group(1))
        if version == 0 or version in migrations:
            raise SchemaError(f"{path}: version {version} is zero or used twice")
        templates = split_statements(path.read_text(encoding="utf-8"))
        if not templates:
            raise SchemaError(f"{path}: no statements")
        checksum = hashlib.sha256(";\n".join(templates).encode()).hexdigest()
        statements = []
        for template in templates:
            if ttl_days == 0:
                template = "\n".join(line for line in template.splitlines() if "{ttl_days}" not in line)
            statements.append(
                template.replace("{database}", database)
                .replace("{table}", table)
                .replace("{logs_table}", logs_table)
                .replace("{metrics_table}", metrics_table)
                .replace("{ttl_days}", str(ttl_days))
            )
        migrations[version] = Migration(version, path.stem, profile, tuple(statements), checksum)
    if not migrations:
        raise SchemaError(f"no migrations in {directory}")
    return [migrations[v] for v in sorted(migrations)]


# ------------------------------------------------------------------------------------------- applying


def apply(
    execute: Executor,
    profile: Profile,
    database: str,
    table: str,
    ttl_days: int,
    root: Path | None = None,
    *,
    logs_table: str = "logs",
    metrics_table: str = "metrics",
    cluster: str = "",
) -> list[int]:
    """Bring ``database.table`` up to date; returns the versions applied now (empty if none were due).

    Idempotent: versions recorded in ``database.schema_migrations`` are skipped, and every statement
    is itself ``IF NOT EXISTS``-safe, so a run interrupted between a statement and its record is
    simply redone. A recorded migration whose checksum differs from its file raises
    :class:`SchemaError`. The profile of an existing deployment is sticky: if the bookkeeping table
    records migrations of the other profile (say the server was upgraded past 22.2 under a legacy
    table), those are continued instead, and the shipper keeps writing the table's row shape
    (:func:`detect_table_profile`).

    A table dropped after its migrations were recorded is created again: the recorded migrations'
    statements that name it are run again, in order (the fix an operator expects from ``schema apply``
    after a ``DROP TABLE``; the other tables are left as they are).

    ``cluster``: the name of a cluster of ``system.clusters`` to create the tables on (see
    :mod:`.cluster_schema`): after :func:`verify_cluster`, every statement runs ON CLUSTER, each table
    ``T`` becomes a replicated ``T_local`` under a Distributed ``T``, and the bookkeeping table is one
    replicated table for the whole cluster. Everything is read (recorded versions, columns, dropped
    tables) on the server ``execute`` talks to.
    """
    identifier(database)
    identifier(table)
    watched = _prepare_database(execute, database, (table, logs_table, metrics_table), cluster)
    recorded = _recorded(execute, database)
    profile = _sticky_profile(recorded, profile, database)
    done = {version: (name, checksum) for (version, name, _, checksum) in recorded}
    applied: list[int] = []
    tables = {"logs_table": logs_table, "metrics_table": metrics_table}
    dropped = {f"{database}.{t}" for t in watched if not table_columns(execute, database, t)} if done else set()
    for migration in render_migrations(profile, database, table, ttl_days, root, **tables):
        if cluster:
            migration = _on_cluster(migration, cluster)
        if migration.version in done:
            name, checksum = done[migration.version]
            if checksum != migration.checksum:
                raise SchemaError(
                    f"migration {migration.version} ({name}, {profile.value}) was applied with checksum "
                    f"{checksum} but {migration.name}.sql now has {migration.checksum}: an applied "
                    "migration must never change; add a new one"
                )
            for statement in migration.statements:
                names = {t for t in dropped if re.search(rf"\b{re.escape(t)}\b", statement)}
                if names and not _column_exists(execute, statement):
                    log.warning("%s was dropped: creating it again (migration %s)", ", ".join(sorted(names)), name)
                    _run_again(execute, statement, names, cluster)
            continue
        for statement in migration.statements:
            if not _column_exists(execute, statement):
                execute(statement)
        execute(
            f"INSERT INTO {database}.schema_migrations (version, name, profile, applied_at, checksum) "
            f"VALUES ({migration.version}, {quote(migration.name)}, {quote(profile.value)}, now(), "
            f"{quote(migration.checksum)})"
        )
        applied.append(migration.version)
    return applied


def _run_again(execute: Executor, statement: str, dropped: set[str], cluster: str) -> None:
    """Run a recorded migration's ``statement`` again for the ``dropped`` tables it names.

    On a cluster a ``_local`` table dropped on some hosts only cannot always be made again this way: its
    replicas elsewhere (and ZooKeeper) have the structure of the later migrations, and 18.16 refuses a new
    replica whose columns differ ("Table structure in ZooKeeper is too different", code 122)."""
    if not cluster:
        execute(statement)
        return
    try:
        execute(statement)
    except Exception as exc:  # the executor's error, with the hint an operator needs
        raise SchemaError(
            f"creating {', '.join(sorted(dropped))} again on cluster {cluster} failed: {one_line(exc)} "
            "(a table dropped on some hosts only: create it there by hand from SHOW CREATE TABLE on a host "
            "that has it, or drop it ON CLUSTER and run schema apply again: docs/schema.md#clusters)"
        ) from None


def _prepare_database(execute: Executor, database: str, names: tuple[str, str, str], cluster: str) -> tuple[str, ...]:
    """Create the database and ``schema_migrations`` (on ``cluster``: after :func:`verify_cluster`, ON CLUSTER,
    replicated); the tables whose drop :func:`apply` repairs (on a cluster the ``_local`` and Distributed ones)."""
    if not cluster:
        execute(f"CREATE DATABASE IF NOT EXISTS {database}")
        execute(_BOOKKEEPING_DDL.format(database=database))
        return names
    identifier(cluster)
    for name in names:
        identifier(name)
    verify_cluster(execute, cluster, database, names)
    execute(cluster_schema.database_ddl(database, cluster))
    execute(cluster_schema.bookkeeping_ddl(_BOOKKEEPING_DDL.format(database=database), cluster))
    execute(f"SYSTEM SYNC REPLICA {database}.{BOOKKEEPING_TABLE}")  # fetch the records other hosts wrote
    return tuple(cluster_schema.local_table(name) for name in names) + names


def _sticky_profile(recorded: list[tuple[int, str, str, str]], profile: Profile, database: str) -> Profile:
    """``profile``, or the one ``database.schema_migrations`` already records (a deployment keeps its profile)."""
    profiles = {p for (_, _, p, _) in recorded}
    if len(profiles) > 1:
        raise SchemaError(f"{database}.schema_migrations records migrations of several profiles: {sorted(profiles)}")
    if not profiles or profile.value in profiles:
        return profile
    (recorded_profile,) = profiles
    try:
        sticky = Profile(recorded_profile)
    except ValueError:
        raise SchemaError(f"{database}.schema_migrations records unknown profile {recorded_profile!r}") from None
    log.warning(
        "%s.schema_migrations records the %s profile; keeping it instead of %s",
        database,
        sticky.value,
        profile.value,
    )
    return sticky


def _on_cluster(migration: Migration, cluster: str) -> Migration:
    """``migration`` with its statements in their ON CLUSTER form; same version, name and checksum (the
    checksum is the file's: a cluster is not a changed migration)."""
    try:
        statements = cluster_schema.cluster_statements(migration.statements, cluster, migration.profile)
    except ValueError as exc:
        raise SchemaError(f"migration {migration.name} ({migration.profile.value}): {exc}") from None
    return Migration(migration.version, migration.name, migration.profile, statements, migration.checksum)


_ADD_COLUMN = re.compile(
    r"\s*ALTER\s+TABLE\s+(\w+)\.(\w+)\s+(?:ON\s+CLUSTER\s+\w+\s+)?ADD\s+COLUMN\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)\b", re.I
)


def _column_exists(execute: Executor, statement: str) -> bool:
    """True for ``ALTER TABLE db.t [ON CLUSTER x] ADD COLUMN c ...`` when ``db.t`` already has ``c``: 18.16
    knows no ``ADD COLUMN IF NOT EXISTS``, so this keeps every migration safe to run again. On a cluster
    the columns are those of the host ``execute`` talks to (an ALTER that reached only some hosts is not
    noticed on the others)."""
    m = _ADD_COLUMN.match(statement)
    return m is not None and m.group(3) in table_columns(execute, m.group(1), m.group(2))


def _recorded(execute: Executor, database: str) -> list[tuple[int, str, str, str]]:
    out = execute(
        f"SELECT version, name, profile, checksum FROM {database}.schema_migrations "
        "ORDER BY version FORMAT TabSeparated"
    )
    rows = []
    for row in tsv_rows(out):
        if len(row) != 4 or not row[0].isdigit():
            raise SchemaError(f"unexpected row in {database}.schema_migrations: {row!r}")
        rows.append((int(row[0]), row[1], row[2], row[3]))
    return rows
