"""Check a ClickHouse cluster before ``schema apply --cluster NAME`` creates anything: its hosts in
``system.clusters``, their ``shard``/``replica`` macros, and no table of the plain layout under the
cluster layout's names. The pure checks are :mod:`.cluster_schema`'s; this module reads the hosts.
"""

from __future__ import annotations

from . import cluster_schema
from .cluster_schema import ClusterHost
from .sql import Executor, SchemaError, identifier, one_line, quote, tsv_rows

__all__ = ["cluster_hosts", "verify_cluster"]


def verify_cluster(execute: Executor, cluster: str, database: str, tables: tuple[str, ...]) -> list[ClusterHost]:
    """Check, before anything is created, that ``cluster`` can take the cluster layout; its hosts.

    * ``cluster`` is in the server's ``system.clusters`` (else the error names the clusters there);
    * every host of it has the ``shard`` and ``replica`` macros, consistent over the cluster
      (:func:`.cluster_schema.macro_problems`);
    * no host has, under the names the layout uses, a table that ``schema apply`` without ``--cluster``
      made (:func:`.cluster_schema.mixed_table_problems`): the layouts are never mixed.

    Each host is read with ``remote('host:port', system, ...)`` as the cluster's user of
    ``system.clusters`` (no password): ``system.clusters`` names the hosts by their native port, which an
    HTTP endpoint list need not cover, and ``remote()`` reaches each one itself (``cluster()`` would pick
    one replica per shard). A host that is down or refuses that user fails the check, naming the host:
    ON CLUSTER statements would wait for it (``distributed_ddl_task_timeout``, 180 s) and fail anyway.
    """
    hosts = cluster_hosts(execute, cluster)
    macros: dict[ClusterHost, dict[str, str]] = {}
    mixed: list[str] = []
    for host in hosts:
        macros[host] = dict(_remote_pairs(execute, host, "macros", "macro, substitution", ""))
        engines = dict(_remote_pairs(execute, host, "tables", "name, engine", f"WHERE database = {quote(database)}"))
        mixed += cluster_schema.mixed_table_problems(host.address, engines, database, tables)
    problems = cluster_schema.macro_problems(macros) + mixed
    if problems:
        hint = (
            " (a database set up without --cluster cannot be converted in place: use another --database, "
            "or move its data: docs/schema.md#clusters)"
            if mixed
            else ""
        )
        raise SchemaError(f"cluster {cluster}: " + "; ".join(problems) + hint)
    return hosts


def cluster_hosts(execute: Executor, cluster: str) -> list[ClusterHost]:
    """The hosts of ``cluster`` in the server's ``system.clusters``, shard-major; SchemaError if it has none."""
    out = execute(
        "SELECT shard_num, replica_num, host_name, port, user FROM system.clusters "
        f"WHERE cluster = {quote(identifier(cluster))} ORDER BY shard_num, replica_num FORMAT TabSeparated"
    )
    hosts = [
        ClusterHost(int(row[0]), int(row[1]), row[2], int(row[3]), row[4])
        for row in tsv_rows(out)
        if len(row) == 5 and row[0].isdigit() and row[1].isdigit() and row[3].isdigit()
    ]
    if not hosts:
        known = [
            row[0] for row in tsv_rows(execute("SELECT DISTINCT cluster FROM system.clusters FORMAT TabSeparated"))
        ]
        raise SchemaError(
            f"no cluster {cluster!r} on this server: its system.clusters has "
            + (", ".join(sorted(known)) if known else "none")
            + " (clusters are defined in <remote_servers> of the servers' configuration)"
        )
    return hosts


def _remote_pairs(execute: Executor, host: ClusterHost, table: str, columns: str, where: str) -> list[tuple[str, str]]:
    """Two columns of ``system.<table>`` on ``host``, read through ``remote()``; SchemaError naming the host."""
    sql = (
        f"SELECT {columns} FROM remote({quote(host.address)}, system, {table}, {quote(host.user or 'default')}) "
        f"{where} FORMAT TabSeparated"
    )
    try:
        out = execute(sql)
    except Exception as exc:  # the executor's own error (SinkError over HTTP, chDB's): one line, naming the host
        raise SchemaError(
            f"cannot read system.{table} of host {host} through remote() as user {host.user!r}: {one_line(exc)} "
            "(every host of the cluster must be up, and accept the cluster's user from this server)"
        ) from None
    return [(row[0], row[1]) for row in tsv_rows(out) if len(row) == 2]
