"""How busy the ClickHouse servers a sink inserts into are: the input of the fleet insert policy.

:func:`sample_load` asks every endpoint of the sink's dedup domain (the replicas of its shard: each of
them gets inserts from agents, and every part inserted into one is a part on all of them) one light
query::

    SELECT <InsertQuery events>, <most active parts in one partition of the table>, <parts_to_delay_insert>

``InsertQuery`` counts the INSERT statements a server has received since it started (every agent's, every
table's; replication does not count): its rate, summed over the shard's replicas, is the shard's inserts
per second. The parts figure is the merge backlog of the target table, and ``parts_to_delay_insert``
where the server starts slowing inserts down (150 on 18.16; TOO_MANY_PARTS follows at
``parts_to_throw_insert``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .failover import FailoverSink
from .http import ClickHouseHttpSink
from .sink import Sink, SinkError
from .sql import quote

__all__ = ["LOAD_TIMEOUT_S", "LoadSample", "load_sql", "sample_load"]

DEFAULT_PARTS_TO_DELAY = 150
LOAD_TIMEOUT_S = 2.0  # a reading that takes longer is skipped: the shipper's loop waits for it


@dataclass(frozen=True, slots=True)
class LoadSample:
    """One reading of a shard: its servers' INSERT count, and the worst partition's active parts."""

    endpoints: tuple[str, ...]  # the servers read (a change between two samples makes their delta meaningless)
    inserts: int  # InsertQuery events summed over them
    max_parts: int  # most active parts in one partition of the table, on any of them
    parts_to_delay: int  # the server's parts_to_delay_insert
    #: a server of the shard did not answer this light query within LOAD_TIMEOUT_S: it is overloaded (the
    #: other fields are then those of the servers that answered, or zero)
    slow: bool = False


def load_sql(database: str, table: str) -> str:
    """The one query of a load reading (18.16-compatible: scalar subqueries, empty sets read as 0)."""
    return (
        "SELECT (SELECT sum(value) FROM system.events WHERE event = 'InsertQuery'), "
        "(SELECT max(c) FROM (SELECT count() AS c FROM system.parts WHERE active AND database = "
        f"{quote(database)} AND table = {quote(table)} GROUP BY partition)), "
        "(SELECT toUInt64OrZero(any(value)) FROM system.merge_tree_settings WHERE name = 'parts_to_delay_insert') "
        "FORMAT TabSeparated"
    )


def _read(sink: ClickHouseHttpSink) -> tuple[int, int, int]:
    fields = sink.query(load_sql(sink.database, sink.table), timeout=LOAD_TIMEOUT_S).split()
    inserts, parts, delay = (int(f) if f.isdigit() else 0 for f in [*fields, "0", "0", "0"][:3])
    return inserts, parts, delay or DEFAULT_PARTS_TO_DELAY


def _domain_sinks(sink: Sink) -> list[ClickHouseHttpSink]:
    if isinstance(sink, ClickHouseHttpSink):
        return [sink]
    if isinstance(sink, FailoverSink):
        return sink.shard_sinks()
    return []


def sample_load(sink: Sink) -> LoadSample | None:
    """A reading of the servers ``sink`` inserts into; None for a sink without a server (the embedded store)
    or when one of them is unreachable (refused, an error: a failure is the retry loop's). One that takes
    longer than LOAD_TIMEOUT_S to answer gives a reading marked ``slow``: a server that cannot answer a
    trivial system query in two seconds is too busy for more inserts."""
    sinks = _domain_sinks(sink)
    if not sinks:
        return None
    try:
        readings = [_read(s) for s in sinks]
    except SinkError as exc:
        if exc.result.status is None and not exc.result.unsent:  # sent, and no answer in time
            return LoadSample(tuple(s.endpoint for s in sinks), 0, 0, DEFAULT_PARTS_TO_DELAY, slow=True)
        return None
    return LoadSample(
        tuple(s.endpoint for s in sinks),
        sum(r[0] for r in readings),
        max(r[1] for r in readings),
        min(r[2] for r in readings),
    )
