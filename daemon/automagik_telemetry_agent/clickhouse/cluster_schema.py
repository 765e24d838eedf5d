"""The migrations on a ClickHouse cluster: what ``schema apply --cluster NAME`` runs instead of the plain SQL.

Pure text and pure checks; :func:`.schema.apply` runs them and queries the server. For each table ``T``
a migration creates (``CREATE TABLE IF NOT EXISTS db.T (...) ENGINE = MergeTree ...``), on the cluster:

* ``db.T_local`` on every host (``ON CLUSTER NAME``), ``ENGINE = ReplicatedMergeTree(
  '/clickhouse/tables/{shard}/db.T_local', '{replica}')``, the rest of the engine clause kept (PARTITION BY,
  ORDER BY, TTL, SETTINGS; ``non_replicated_deduplication_window`` becomes
  ``replicated_deduplication_window``: a replicated table deduplicates identical blocks of every replica of
  its shard). The shipper inserts here, on one replica; the others copy the part.
* ``db.T`` on every host, ``AS db.T_local ENGINE = Distributed(NAME, db, T_local, rand())``: the plain
  name, which users and dashboards read, over every shard.

``ALTER TABLE db.T ADD COLUMN`` goes to ``db.T_local`` ON CLUSTER (ALTER on a replicated table runs on one
replica of each shard and replicates by itself) and to the Distributed ``db.T``: on the modern profile as
the same ALTER ON CLUSTER; on 18.16 (legacy) by dropping and creating ``db.T`` again at the end of the
migration, because 18.16 refuses any ALTER ON CLUSTER of a table that is not replicated on a cluster whose
shards have ``internal_replication`` ("Table T isn't replicated, but shard #1 is replicated according
to its cluster definition", code 371). A Distributed table holds no rows of its own (the shipper never
inserts through it), so nothing is lost; readers see it missing for a moment.

The bookkeeping table ``db.schema_migrations`` is one ReplicatedMergeTree for the whole cluster: ZooKeeper
path ``/clickhouse/tables/all/db.schema_migrations``, no ``{shard}``, replica name ``{shard}-{replica}``
(unique even where replica macros repeat across shards), so one INSERT of a record reaches every host.

Names given here must already be plain identifiers (:func:`.schema.identifier`): they are spliced into SQL.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from .resource import Profile

__all__ = [
    "BOOKKEEPING_ZOOKEEPER_PATH",
    "LOCAL_SUFFIX",
    "REQUIRED_MACROS",
    "ClusterHost",
    "DdlHost",
    "bookkeeping_ddl",
    "cluster_statements",
    "database_ddl",
    "is_on_cluster",
    "local_table",
    "macro_problems",
    "mixed_table_problems",
    "parse_ddl_reply",
    "zookeeper_path",
]

#: The replicated table's suffix (the shipper inserts there: :func:`.factory.insert_table`).
LOCAL_SUFFIX = "_local"
#: Blocks a replicated table remembers for deduplication: a retry must come back within this many inserts of
#: the shard (18.16 defaults to 100: ten seconds at ten inserts per second; the modern files set 1000).
DEDUP_WINDOW_BLOCKS = 1000
#: The macros every host needs: ``{shard}`` in the data tables' ZooKeeper paths, ``{replica}`` in every name.
REQUIRED_MACROS = ("shard", "replica")
BOOKKEEPING_ZOOKEEPER_PATH = "/clickhouse/tables/all/{database}.schema_migrations"
BOOKKEEPING_REPLICA = "{shard}-{replica}"
_DATA_ZOOKEEPER_PATH = "/clickhouse/tables/{{shard}}/{database}.{table}"

_CREATE = re.compile(
    r"CREATE\s+TABLE\s+IF\s+NOT\s+EXISTS\s+(?P<db>\w+)\.(?P<table>\w+)(?P<columns>\s*\(.*\))\s*"
    r"ENGINE\s*=\s*(?P<family>[A-Za-z]*)MergeTree\b(?:\s*\((?P<args>[^()]*)\))?(?P<rest>.*)",
    re.S | re.I,
)
_ADD_COLUMN = re.compile(r"ALTER\s+TABLE\s+(?P<db>\w+)\.(?P<table>\w+)\s+(?P<rest>ADD\s+COLUMN\b.*)", re.S | re.I)
_SELECT = re.compile(r"SELECT\b", re.I)
_ON_CLUSTER = re.compile(r"\bON\s+CLUSTER\b", re.I)


# ------------------------------------------------------------------------------------------- names


def local_table(table: str) -> str:
    """The replicated table behind the Distributed ``table``: ``table_local``."""
    return table + LOCAL_SUFFIX


def zookeeper_path(database: str, table: str) -> str:
    """The ZooKeeper path of replicated ``database.table``: one per shard (``{shard}`` expanded by each host)."""
    return _DATA_ZOOKEEPER_PATH.format(database=database, table=table)


# ------------------------------------------------------------------------------------------- rendering


def database_ddl(database: str, cluster: str) -> str:
    return f"CREATE DATABASE IF NOT EXISTS {database} ON CLUSTER {cluster}"


def bookkeeping_ddl(plain_ddl: str, cluster: str) -> str:
    """The plain ``CREATE TABLE ... schema_migrations ... ENGINE = MergeTree()`` as one cluster-wide
    ReplicatedMergeTree (see the module docstring)."""
    m = _match_create(plain_ddl)
    path = BOOKKEEPING_ZOOKEEPER_PATH.format(database=m["db"])
    return _replicated_create(m, cluster, m["table"], path, BOOKKEEPING_REPLICA)


def cluster_statements(statements: tuple[str, ...], cluster: str, profile: Profile) -> tuple[str, ...]:
    """One migration's rendered statements as run on ``cluster`` (see the module docstring), in order.

    Raises ValueError for a statement with no cluster form: only ``CREATE TABLE IF NOT EXISTS ... ENGINE =
    <family>MergeTree``, ``ALTER TABLE ... ADD COLUMN`` and ``SELECT`` (a no-op migration) have one."""
    out: list[str] = []
    rebuild: dict[str, str] = {}  # legacy: "db.T" -> its Distributed DDL, run again after the ALTERs
    for statement in statements:
        created = _CREATE.fullmatch(statement)
        added = _ADD_COLUMN.fullmatch(statement)
        if created is not None:
            out += _create_on_cluster(created, cluster)
        elif added is not None:
            db, table = added["db"], added["table"]
            out.append(f"ALTER TABLE {db}.{local_table(table)} ON CLUSTER {cluster} {added['rest']}")
            if profile is Profile.MODERN:
                out.append(f"ALTER TABLE {db}.{table} ON CLUSTER {cluster} {added['rest']}")
            else:
                rebuild[f"{db}.{table}"] = _distributed_ddl(db, table, cluster)
        elif _SELECT.match(statement):
            out.append(statement)
        else:
            first = statement.splitlines()[0]
            raise ValueError(
                f"no ON CLUSTER form for {first!r} (only CREATE TABLE IF NOT EXISTS ... ENGINE = *MergeTree, "
                "ALTER TABLE ... ADD COLUMN and SELECT have one: clickhouse/cluster_schema.py)"
            )
    for target, ddl in rebuild.items():
        out += [f"DROP TABLE IF EXISTS {target} ON CLUSTER {cluster}", ddl]
    return tuple(out)


def is_on_cluster(statement: str) -> bool:
    """Whether ``statement`` is distributed DDL (its reply is one row per host: :func:`parse_ddl_reply`)."""
    return _ON_CLUSTER.search(statement) is not None


def _match_create(statement: str) -> re.Match[str]:
    m = _CREATE.fullmatch(statement)
    if m is None:
        raise ValueError(f"not a CREATE TABLE IF NOT EXISTS ... ENGINE = *MergeTree statement: {statement[:80]!r}")
    return m


def _create_on_cluster(m: re.Match[str], cluster: str) -> list[str]:
    db, table = m["db"], m["table"]
    local = local_table(table)
    return [
        _replicated_create(m, cluster, local, zookeeper_path(db, local), "{replica}"),
        _distributed_ddl(db, table, cluster),
    ]


def _replicated_create(m: re.Match[str], cluster: str, name: str, path: str, replica: str) -> str:
    args = f"'{path}', '{replica}'" + (f", {m['args'].strip()}" if m["args"] and m["args"].strip() else "")
    rest = m["rest"].replace("non_replicated_deduplication_window", "replicated_deduplication_window")
    if "replicated_deduplication_window" not in rest:  # the legacy files: 18.16's default window is 100 blocks
        window = f"replicated_deduplication_window = {DEDUP_WINDOW_BLOCKS}"
        rest = (
            rest.replace("SETTINGS ", f"SETTINGS {window}, ", 1)
            if "SETTINGS " in rest
            else f"{rest}\nSETTINGS {window}"
        )
    return (
        f"CREATE TABLE IF NOT EXISTS {m['db']}.{name} ON CLUSTER {cluster}{m['columns']}\n"
        f"ENGINE = Replicated{m['family']}MergeTree({args}){rest}"
    )


def _distributed_ddl(database: str, table: str, cluster: str) -> str:
    local = local_table(table)
    return (
        f"CREATE TABLE IF NOT EXISTS {database}.{table} ON CLUSTER {cluster} AS {database}.{local}\n"
        f"ENGINE = Distributed({cluster}, {database}, {local}, rand())"
    )


# ------------------------------------------------------------------------------------------- checks


@dataclass(frozen=True, slots=True)
class ClusterHost:
    """One row of ``system.clusters`` for the cluster: a host as the other hosts reach it (native port)."""

    shard_num: int
    replica_num: int
    host: str
    port: int
    user: str

    @property
    def address(self) -> str:
        """``host:port`` for ``remote()`` (an IPv6 address in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.address} (shard {self.shard_num}, replica {self.replica_num})"


def macro_problems(macros: dict[ClusterHost, dict[str, str]]) -> list[str]:
    """What is wrong with the hosts' macros for replicated tables ([] = nothing): a host without ``shard``
    or ``replica``; hosts of one shard with different ``shard`` macros (they would not be replicas of each
    other), or two shards with the same one (they would be); two replicas of a shard with the same
    ``replica`` macro (one would refuse to create its table)."""
    problems = [
        f"host {host} has no <macros><{name}> in its configuration"
        for host, found in macros.items()
        for name in REQUIRED_MACROS
        if not found.get(name)
    ]
    if problems:
        return problems
    shards: dict[int, set[str]] = {}
    for host, found in macros.items():
        shards.setdefault(host.shard_num, set()).add(found["shard"])
    for num, values in sorted(shards.items()):
        if len(values) > 1:
            problems.append(f"the hosts of shard {num} have different shard macros: {', '.join(sorted(values))}")
    owners = Counter(value for values in shards.values() for value in values)
    for value, count in sorted(owners.items()):
        if count > 1:
            problems.append(f"{count} shards of the cluster have the same shard macro {value!r}")
    for num in sorted(shards):
        replicas = Counter(found["replica"] for host, found in macros.items() if host.shard_num == num)
        problems += [
            f"{n} hosts of shard {num} have the same replica macro {value!r}" for value, n in replicas.items() if n > 1
        ]
    return problems


def mixed_table_problems(host: str, engines: dict[str, str], database: str, tables: tuple[str, ...]) -> list[str]:
    """Tables of ``database`` on ``host`` (``{name: engine}``) that a run without ``--cluster`` made under the
    names the cluster layout uses: plain ``T`` that is not Distributed, ``T_local`` or ``schema_migrations``
    that is not replicated. ``apply --cluster`` refuses them rather than mixing the two layouts."""
    problems = []
    for table in tables:
        engine = engines.get(table)
        if engine is not None and engine != "Distributed":
            problems.append(f"{database}.{table} on {host} is a {engine} table, not Distributed")
        engine = engines.get(local_table(table))
        if engine is not None and not engine.startswith("Replicated"):
            problems.append(f"{database}.{local_table(table)} on {host} is a {engine} table, not replicated")
    engine = engines.get("schema_migrations")
    if engine is not None and not engine.startswith("Replicated"):
        problems.append(f"{database}.schema_migrations on {host} is a {engine} table, not replicated")
    return problems


# ------------------------------------------------------------------------------------------- replies


@dataclass(frozen=True, slots=True)
class DdlHost:
    """One host's row in the reply to an ON CLUSTER statement."""

    host: str
    port: int
    status: int  # 0: done; else the error code (18.16 then fails the whole query)
    error: str


def parse_ddl_reply(text: str) -> list[DdlHost]:
    """The per-host rows of an ON CLUSTER statement's TabSeparated reply (host, port, status, error,
    num_hosts_remaining, num_hosts_active); other lines are skipped."""
    hosts = []
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) == 6 and fields[1].isdigit() and fields[2].lstrip("-").isdigit():
            hosts.append(DdlHost(fields[0], int(fields[1]), int(fields[2]), fields[3]))
    return hosts
