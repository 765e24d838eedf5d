"""A fleet of agents feeding one ClickHouse cluster: inserts/s, rows per insert and parts at the server, per policy.

Why: every agent sends a partial batch after ``batch_wait`` (1 s), so N agents make about N INSERTs per second,
each a new part on every replica; at a few hundred agents a shard drowns in parts (TOO_MANY_PARTS, 252).
The fleet insert policy (``--insert-policy fleet``) stretches each agent's batch_wait while the shard's
inserts per second exceed ``--target-inserts-per-second``. This benchmark measures both policies at the
server, never through the agent's own metrics.

Set-up (all real processes, nothing mocked):

* a ClickHouse cluster of tests/clickhouse_cluster.py: ``--shards`` x ``--replicas`` clickhouse-server 18.16
  and a private ZooKeeper; per policy a fresh database holding the replicated ``traces_local`` (plus
  ``logs_local``, ``metrics_local``) and the Distributed ``traces`` over them, made by `automagik-telemetry
  schema apply --cluster` (``--schema auto``, the default, falls back to the equivalent ON CLUSTER DDL
  here if that fails, and says so: :func:`create_tables`);
* ``--agents`` real agents (tests/agent_process.py: supervisor + ingest + shipper processes), each with its
  own directory, WAL and socket, ``--otlp-listen "" --metrics-listen ""``, ``--cluster``, and every
  replica in ``--clickhouse-endpoint``. The list is rotated by the agent's index: on one machine all
  agents share a host name, and the agent's own rotation (by a hash of it) is then the same for all, so
  this rotation spreads them as a fleet of distinct hosts would be spread;
* load processes (one per CPU up to 4, or ``--load-processes``), each driving its share of the agents over
  the socket protocol (raw RECORDS messages as the client sends them, non-blocking sockets, ACKs read
  as they come): ``--rate`` spans/s per agent for ``--seconds``, in messages every 100 ms. Every span id is
  unique (run, agent, counter), so the stored rows can be checked exactly once. Every ``--marker-every``
  seconds one span per agent is a marker (name ``bench.marker``) whose start time is its send time.

Measured every second on every replica (a loop in this process; markers and the agents' status are polled
by threads of their own, so that a slow sample on a loaded machine holds up neither):

* inserts/s: the delta of ``system.events`` InsertQuery (a replicated fetch counts as
  ReplicatedPartFetches, not InsertQuery: checked on 18.16), summed over the replicas of a shard;
* rows per insert: delta InsertedRows / delta InsertQuery;
* active parts of ``traces_local`` (the largest partition's count, and all partitions) per replica;
* RejectedInserts (the server's 252s) and DelayedInserts (inserts slowed by parts_to_delay_insert);
* latency: the markers are looked for every 0.5 s on every replica; a marker's latency is the middle of the
  first interval in which it was visible on any replica, minus its send time (resolution 0.5 s).

After the load: wait until every span is visible through the Distributed table and both replicas hold the
same count, then ``count()`` and ``uniqExact(span_id)`` must both equal the spans the agents acknowledged
(every span exactly once). The agents' CPU (supervisor and children, from /proc) per span, their memory
(PSS, from /proc/<pid>/smaps_rollup), the servers' CPU and any 252 in the agents' logs are reported. The
batch_wait each agent says it uses (`status` over its control socket) is printed beside the time series,
never used for a number.

    .venv/bin/python bench/bench_fleet.py                                  # 50 agents x 300 spans/s, 5 min per policy
    .venv/bin/python bench/bench_fleet.py --agents 8 --seconds 40          # the CI-sized run, ~100 s
    .venv/bin/python bench/bench_fleet.py --policy fleet --target-inserts-per-second 2

tests/cluster/test_fleet_policy.py runs :func:`run_policy` with small numbers and asserts on the result.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from _harness import HTTP_SPAN_SHAPES, ROOT, CpuMeter, machine_line, proc_kb, process_cpu_seconds

TESTS = str(ROOT / "tests")
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

from agent_process import AgentProcess, child_processes, run_cli  # noqa: E402
from clickhouse_cluster import ClickHouseCluster, Replica  # noqa: E402

from automagik_telemetry import protocol  # noqa: E402
from automagik_telemetry_agent.clickhouse import schema as schema_module  # noqa: E402
from automagik_telemetry_agent.clickhouse.rows import Profile  # noqa: E402

SERVICE = "bench-fleet"
MARKER = "bench.marker"
TICK_S = 0.1  # a load process sends every agent one message per tick
SAMPLE_S = 1.0
MARKER_POLL_S = 0.5
REPORT_EVERY_S = 10.0
ACK_TIMEOUT_S = 60.0
AGENT_READY_TIMEOUT_S = 240.0
EVENTS = ("InsertQuery", "InsertedRows", "RejectedInserts", "DelayedInserts", "ReplicatedPartFetches")
SPAN_SHAPES = [(f"{method} {route}", method, route, status) for method, route, status in HTTP_SPAN_SHAPES]


# ------------------------------------------------------------------------------------------ settings
@dataclass
class FleetOptions:
    agents: int = 50
    seconds: float = 300.0
    rate: int = 300  # spans/s per agent
    target_inserts_per_second: float | None = None  # None: the agent's default (10)
    batch_wait_max: float | None = None  # None: the agent's default (30 s)
    marker_every: float = 2.0
    load_processes: int = 0  # 0: one per CPU
    schema: str = "auto"  # auto | cli | bench
    settle_fraction: float = 0.5  # the "settled" window is the last half of the load
    drain_timeout: float = 1800.0  # at most this long after the load for every span to be visible ...
    drain_stall: float = 90.0  # ... and never this long without any progress
    log_level: str = "warning"
    extra_flags: dict[str, Any] = field(default_factory=dict)
    quiet: bool = False


# ------------------------------------------------------------------------------------------ schema
def schema_cli_knows_clusters() -> bool:
    """Has `schema apply --cluster` landed? The flag exists for every setting; the command must pass it on."""
    cli = ROOT / "daemon" / "automagik_telemetry_agent" / "cli" / "schema.py"
    return "cluster" in Path(schema_module.__file__).read_text() and "cluster" in cli.read_text()


_CREATE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+)\.(\w+)\s*\(", re.I)
_ADD_COLUMN = re.compile(r"ALTER TABLE (\w+)\.(\w+) ADD COLUMN (.+)", re.I | re.S)


def cluster_ddl(cluster_name: str, database: str) -> list[str]:
    """The legacy profile's migrations as ON CLUSTER DDL: every table as ``<name>_local`` with
    ReplicatedMergeTree('/clickhouse/tables/{shard}/<db>.<name>_local', '{replica}'), the ADD COLUMNs of
    later migrations folded into its CREATE (one DDL round per table, not one per column), then a
    Distributed ``<name>`` over each (rand() sharding: reads only, the agents insert into the local tables)."""
    migrations = schema_module.render_migrations(
        Profile.LEGACY, database, "traces_local", 0, logs_table="logs_local", metrics_table="metrics_local"
    )
    creates: dict[str, str] = {}
    for migration in migrations:
        for statement in migration.statements:
            if m := _CREATE.match(statement):
                creates[m.group(2)] = statement
            elif m := _ADD_COLUMN.match(statement):
                table = m.group(2)
                head, sep, tail = creates[table].rpartition("\n)\nENGINE")
                if not sep:
                    raise RuntimeError(f"cannot fold an ADD COLUMN into {creates[table]!r}")
                creates[table] = f"{head},\n    {m.group(3).strip()}{sep}{tail}"
            else:
                raise RuntimeError(f"unexpected migration statement: {statement[:200]}")
    out = [f"CREATE DATABASE IF NOT EXISTS {database} ON CLUSTER {cluster_name}"]
    for table, create in creates.items():
        create = create.replace(f"{database}.{table}", f"{database}.{table} ON CLUSTER {cluster_name}", 1).replace(
            "ENGINE = MergeTree()",
            f"ENGINE = ReplicatedMergeTree('/clickhouse/tables/{{shard}}/{database}.{table}', '{{replica}}')",
        )
        out.append(create)
    for table in creates:
        plain = table.removesuffix("_local")
        out.append(
            f"CREATE TABLE IF NOT EXISTS {database}.{plain} ON CLUSTER {cluster_name} AS {database}.{table} "
            f"ENGINE = Distributed({cluster_name}, {database}, {table}, rand())"
        )
    return out


def _engines(r: Replica, database: str) -> dict[str, str]:
    out = r.query(f"SELECT name, engine FROM system.tables WHERE database = '{database}'")
    return dict(line.split("\t") for line in out.splitlines())


def _tables_ok(cluster: ClickHouseCluster, database: str) -> str:
    """ "" if every replica has the replicated traces_local and the Distributed traces, else what it has."""
    for r in cluster.replicas:
        engines = _engines(r, database)
        if engines.get("traces_local") != "ReplicatedMergeTree" or engines.get("traces") != "Distributed":
            return f"{r.name}: {engines}"
    return ""


def create_tables(cluster: ClickHouseCluster, database: str, how: str = "auto") -> str:
    """The tables of one run; returns how they were made. ``how``: cli (`schema apply --cluster`, an error if
    that fails), bench (:func:`cluster_ddl`), auto (cli once it has landed, else or if it fails bench)."""
    if how == "cli" or (how == "auto" and schema_cli_knows_clusters()):
        endpoints = ",".join(r.http_url for r in cluster.replicas)
        result = run_cli(
            "schema", "apply", "--clickhouse-endpoint", endpoints, "--cluster", cluster.name, "--database", database
        )
        why = (
            f"exit {result.returncode}: {result.stderr.strip()[-500:]}"
            if result.returncode
            else _tables_ok(cluster, database)
        )
        if not why:
            return "schema apply --cluster"
        if how == "cli":
            raise RuntimeError(f"schema apply --cluster did not make the cluster's tables: {why}")
        drop_database(cluster, database)
        for r in cluster.replicas:  # whatever it made without ON CLUSTER
            r.query(f"DROP DATABASE IF EXISTS {database}")
        fallback = f" (schema apply --cluster did not: {why[:300]})"
    else:
        fallback = ""
    for statement in cluster_ddl(cluster.name, database):
        cluster.ddl(statement, timeout=60)
    why = _tables_ok(cluster, database)
    if why:
        raise RuntimeError(f"the bench's DDL did not make the tables: {why}")
    return "bench DDL (ON CLUSTER, mirrors deploy/clickhouse/legacy)" + fallback


def drop_database(cluster: ClickHouseCluster, database: str) -> None:
    with contextlib.suppress(Exception):
        cluster.ddl(f"DROP DATABASE IF EXISTS {database} ON CLUSTER {cluster.name}", timeout=60)


# ------------------------------------------------------------------------------------------ load processes
def resource_line(agent: int) -> bytes:
    attributes = [
        ("service.name", SERVICE),
        ("project.name", SERVICE),
        ("project.version", "1.0.0"),
        ("deployment.environment", "bench"),
        ("host.name", f"bench-host-{agent:05d}"),
        ("os.type", "linux"),
        ("process.runtime.name", "cpython"),
        ("telemetry.sdk.name", "automagik-telemetry"),
    ]
    inner = ",".join(f'{{"key":"{k}","value":{{"stringValue":"{v}"}}}}' for k, v in attributes)
    return f'{{"attributes":[{inner}]}}\n'.encode()


def _span_templates() -> list[bytes]:
    """One ``%``-template per span shape: (trace id, span id, name, start ns, end ns) are filled in."""
    out = []
    for _name, method, route, status in SPAN_SHAPES:
        attributes = (
            f'{{"key":"http.method","value":{{"stringValue":"{method}"}}}},'
            f'{{"key":"http.route","value":{{"stringValue":"{route}"}}}},'
            f'{{"key":"http.status_code","value":{{"intValue":"{status}"}}}}'
        )
        out.append(
            (
                '{"traceId":"%032x","spanId":"%016x","parentSpanId":"","name":"%s","kind":2,'
                '"startTimeUnixNano":%d,"endTimeUnixNano":%d,"attributes":[' + attributes + "],"
                '"status":{"code":0,"message":""},"events":[]}\n'
            ).encode()
        )
    return out


class _AgentLoad:
    """One agent's connection and counters inside a load process."""

    def __init__(self, index: int, socket_path: str, run_tag: int) -> None:
        import socket

        self.index = index
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.connect(socket_path)
        self.sock.setblocking(False)
        self.resource = resource_line(index)
        self.id_base = ((run_tag + 1) << 56) | (index << 36)  # unique per run and agent, never zero
        self.counter = 0
        self.seq = 0
        self.spans_of: dict[int, int] = {}  # seq -> spans, until acknowledged
        self.acked_seq = 0
        self.acked_spans = 0
        self.rejected_spans = 0
        self.sent_spans = 0
        self.pending: tuple[bytes, int, int] | None = None  # (message, spans, seq) refused with EAGAIN
        self.blocked = 0
        self.markers = 0
        self.eof = False

    def build(self, n: int, now_ns: int, marker: bool, templates: list[bytes], names: list[bytes]) -> tuple[bytes, int]:
        lines = []
        c = self.counter
        for i in range(n):
            shape = (c + i) % len(templates)
            name = MARKER.encode() if marker and i == 0 else names[shape]
            span_id = self.id_base | (c + i)
            trace_id = ((self.id_base | ((c + i) // 4)) << 64) | 0x5EED  # 4 spans per trace, never all zeros
            lines.append(templates[shape] % (trace_id, span_id, name, now_ns, now_ns + 1_000_000 + shape))
        self.counter = c + n
        self.seq += 1
        return protocol.encode_records(self.resource, lines, seq=self.seq), self.seq

    def try_send(self, message: bytes, spans: int, seq: int) -> bool:
        try:
            self.sock.send(message)
        except BlockingIOError:
            self.pending = (message, spans, seq)
            self.blocked += 1
            return False
        self.pending = None
        self.spans_of[seq] = spans
        self.sent_spans += spans
        return True

    def read_replies(self) -> None:
        while not self.eof:
            try:
                reply = self.sock.recv(protocol.MAX_MESSAGE_SIZE)
            except BlockingIOError:
                return
            except ConnectionResetError:
                reply = b""
            if not reply:
                self.eof = True
                return
            header = protocol.decode_header(reply)
            if header.type == protocol.MessageType.ACK:
                for seq in [s for s in self.spans_of if s <= header.seq]:
                    self.acked_spans += self.spans_of.pop(seq)
                self.acked_seq = max(self.acked_seq, header.seq)
            elif header.type == protocol.MessageType.REJECT:
                self.rejected_spans += self.spans_of.pop(header.seq, 0)


def load_main(conn: Connection, jobs: list[tuple[int, str]], rate: int, seconds: float, marker_every: float) -> None:
    """A load process: connect to every agent of ``jobs`` ((index, socket path)), say "ready", wait for the
    start time, send ``rate`` spans/s to each for ``seconds``, wait for the ACKs, send back a result dict."""
    import selectors

    run_tag = int(conn.recv())
    agents = [_AgentLoad(index, path, run_tag) for index, path in jobs]
    templates = _span_templates()
    names = [name.encode() for name, *_ in SPAN_SHAPES]
    max_per_message = 120  # ~420-byte spans: well inside the 64 KiB message limit
    conn.send("ready")
    start_wall = float(conn.recv())
    time.sleep(max(0.0, start_wall - time.time()))
    t0 = time.monotonic()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    rng = random.Random(run_tag * 1_000_003 + jobs[0][0])
    # markers at random moments (not in step with the agents' once-a-second inserts)
    next_marker = {a.index: t0 + rng.uniform(0, marker_every) for a in agents}
    late_max = 0.0
    tick = 0
    end = t0 + seconds
    while True:
        tick += 1
        due_at = t0 + tick * TICK_S
        now = time.monotonic()
        if now < due_at:
            time.sleep(due_at - now)
        now = time.monotonic()
        late_max = max(late_max, now - due_at)
        elapsed = min(now, end) - t0
        now_ns = time.time_ns()
        for a in agents:
            a.read_replies()
            if a.pending is not None and not a.try_send(*a.pending):
                continue
            due = int(rate * elapsed) - a.counter
            while due > 0 and a.pending is None:
                n = min(due, max_per_message)
                marker = now >= next_marker[a.index] and now < end
                if marker:
                    next_marker[a.index] += marker_every * rng.uniform(0.5, 1.5)
                    a.markers += 1
                message, seq = a.build(n, now_ns, marker, templates, names)
                due -= n
                a.try_send(message, n, seq)
        if now >= end and all(a.pending is None for a in agents):
            break
    send_done = time.monotonic()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    selector = selectors.DefaultSelector()
    for a in agents:
        selector.register(a.sock, selectors.EVENT_READ, a)
    deadline = time.monotonic() + ACK_TIMEOUT_S
    while time.monotonic() < deadline and any(a.spans_of and not a.eof for a in agents):
        for key, _ in selector.select(0.5):
            key.data.read_replies()
    conn.send(
        {
            "agents": {
                a.index: {
                    "sent": a.sent_spans,
                    "acked": a.acked_spans,
                    "rejected": a.rejected_spans,
                    "unanswered": sum(a.spans_of.values()),
                    "markers": a.markers,
                    "blocked": a.blocked,
                    "eof": a.eof,
                }
                for a in agents
            },
            "send_seconds": send_done - t0,
            "late_max": late_max,
            "cpu_s": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
        }
    )
    for a in agents:
        a.sock.close()


# ------------------------------------------------------------------------------------------ server sampling
@dataclass
class ReplicaSample:
    events: dict[str, int]
    parts_max: int  # active parts in the largest partition of traces_local
    parts_total: int
    rows: int  # rows in the active parts of traces_local
    merges: int


@dataclass
class Sample:
    t: float  # seconds since the load started
    replicas: list[ReplicaSample]


def sample_replica(r: Replica, database: str) -> ReplicaSample:
    names = ", ".join(f"'{e}'" for e in EVENTS)
    events = dict.fromkeys(EVENTS, 0)
    for line in r.query(f"SELECT event, value FROM system.events WHERE event IN ({names})", timeout=10).splitlines():
        name, value = line.split("\t")
        events[name] = int(value)
    parts = [
        [int(x) for x in line.split("\t")]
        for line in r.query(
            "SELECT count(), sum(rows) FROM system.parts WHERE active AND database = "
            f"'{database}' AND table = 'traces_local' GROUP BY partition",
            timeout=10,
        ).splitlines()
    ]
    merges = int(r.query(f"SELECT count() FROM system.merges WHERE database = '{database}'", timeout=10))
    return ReplicaSample(
        events,
        max((p[0] for p in parts), default=0),
        sum(p[0] for p in parts),
        sum(p[1] for p in parts),
        merges,
    )


class MarkerWatch:
    """Finds markers on every replica; first visibility (middle of the poll interval) per span id."""

    def __init__(self, replicas: Sequence[Replica], database: str, window_s: float) -> None:
        self.replicas = replicas
        self.database = database
        self.window_s = window_s
        self.sent_ns: dict[str, int] = {}
        self.seen_ns: dict[str, int] = {}
        self._last_poll_ns: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Poll every MARKER_POLL_S in a thread of its own (a slow sample must not coarsen the latencies)."""
        self._thread = threading.Thread(target=self._run, name="marker-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic()
            self.poll()
            self._stop.wait(max(0.0, MARKER_POLL_S - (time.monotonic() - t)))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)

    def poll(self) -> None:
        start_ns = time.time_ns()
        since = int(start_ns / 1e9 - self.window_s)
        for r in self.replicas:
            try:
                out = r.query(
                    f"SELECT span_id, timestamp_ns FROM {self.database}.traces_local WHERE service_name = "
                    f"'{SERVICE}' AND span_name = '{MARKER}' AND timestamp >= toDateTime({since}) FORMAT TSV",
                    timeout=10,
                )
            except Exception:
                continue
            for line in out.splitlines():
                span_id, ts = line.split("\t")
                if span_id not in self.seen_ns:
                    self.sent_ns[span_id] = int(ts)
                    prev = self._last_poll_ns if self._last_poll_ns is not None else start_ns
                    self.seen_ns[span_id] = (prev + start_ns) // 2
        self._last_poll_ns = start_ns

    def latencies(self, t_from_ns: int, t_to_ns: int) -> list[float]:
        """Latency (s) of the markers sent in [t_from_ns, t_to_ns)."""
        return sorted((self.seen_ns[s] - sent) / 1e9 for s, sent in self.sent_ns.items() if t_from_ns <= sent < t_to_ns)


# ------------------------------------------------------------------------------------------ processes
def agent_pids(agent: AgentProcess) -> list[int]:
    if not agent.running:
        return []
    return [agent.pid, *child_processes(agent.pid).values()]


def agent_cpu(agents: Sequence[AgentProcess]) -> dict[int, float]:
    """CPU seconds per pid of every agent process (supervisors and children)."""
    out = {}
    for agent in agents:
        for pid in agent_pids(agent):
            with contextlib.suppress(OSError, IndexError, ValueError):
                out[pid] = process_cpu_seconds(pid)
    return out


def agent_memory_mb(agent: AgentProcess) -> tuple[float, float]:
    """(PSS, RSS) of one agent's processes together, in MB."""
    pids = agent_pids(agent)
    pss = sum(proc_kb(p, "Pss", "smaps_rollup") for p in pids)
    rss = sum(proc_kb(p, "VmRSS", "status") for p in pids)
    return pss / 1024, rss / 1024


def _cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between two :func:`agent_cpu` snapshots (a process that was restarted counts from 0)."""
    return sum(c - before.get(pid, 0.0) for pid, c in after.items())


@dataclass
class Reported:
    """What the agents say about their insert policy (`status` over the control socket): only printed, never
    used for a measured number (those come from the server)."""

    batch_waits: list[float] = field(default_factory=list)  # sorted
    shard_rates: list[float] = field(default_factory=list)  # the shard's inserts/s at each one's last reading

    def text(self) -> str:
        return f"{_spread(self.batch_waits)} s @ {_spread(self.shard_rates)}/s"


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{values[0]:.1f}/{statistics.median(values):.1f}/{values[-1]:.1f}"


def reported(agents: Sequence[AgentProcess]) -> Reported:
    """Every agent's batch_wait and shard rate as it reports them; agents that do not answer are left out."""
    from automagik_telemetry_agent.ops.status import fetch_status

    out = Reported()
    for agent in agents:
        try:
            status = fetch_status({"socket.path": agent.socket_path}, timeout=2.0) or {}
        except Exception:
            continue
        metrics = status.get("metrics") or {}
        for key, into in (("batch_wait_s", out.batch_waits), ("server_inserts_per_s", out.shard_rates)):
            if isinstance(metrics.get(key), int | float):
                into.append(float(metrics[key]))
    out.batch_waits.sort()
    out.shard_rates.sort()
    return out


class ReportedWatch:
    """:func:`reported` in a thread of its own, every ``interval`` s (50 status requests must not hold up the
    sampler on a loaded machine); :attr:`latest` is the last complete round."""

    def __init__(self, agents: Sequence[AgentProcess], interval: float = REPORT_EVERY_S) -> None:
        self.latest = Reported()
        self._agents = agents
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reported-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.latest = reported(self._agents)
            self._stop.wait(self._interval)

    def stop(self) -> Reported:
        self._stop.set()
        self._thread.join(30)
        return self.latest


def rotated(endpoints: Sequence[str], k: int) -> list[str]:
    k %= len(endpoints)
    return [*endpoints[k:], *endpoints[:k]]


# ------------------------------------------------------------------------------------------ one run
@dataclass
class Window:
    """Server-side numbers over a time window of the load."""

    label: str
    seconds: float
    inserts_per_s: list[float]  # per shard
    rows_per_s: float
    rows_per_insert: float
    rejected: int
    delayed: int
    latency: list[float]

    @property
    def total_inserts_per_s(self) -> float:
        return sum(self.inserts_per_s)


@dataclass
class PolicyResult:
    policy: str
    database: str
    options: FleetOptions
    shards: list[list[str]]  # replica names per shard
    schema_made_by: str
    agents_started_s: float
    load: dict[str, Any]  # the load processes' summed counters
    achieved_rate: float  # spans/s per agent actually sent
    windows: dict[str, Window]
    parts_max: int  # largest partition's active parts, any replica, any sample
    parts_total_max: int
    parts_at_end: list[int]  # active parts per replica when the run ended
    drain_s: float  # load end -> every span visible through Distributed and on every replica
    stored: int
    distinct: int
    replica_rows: list[int]
    agent_cpu_s: float  # load start -> drained
    agent_cpu_load_s: float  # load start -> load end
    load_wall_s: float
    agent_pss_mb: float  # per agent (mean)
    agent_rss_mb: float
    server_cpu_s: float  # all replicas, load start -> drained
    zookeeper_cpu_s: float
    agent_log_252: int
    agent_log_problems: list[str]
    agent_exit_codes: list[int | None]
    samples: list[Sample]
    reported: Reported = field(default_factory=Reported)  # what the agents said at the load's end
    sampler_errors: int = 0
    sampler_slowest_s: float = 0.0

    @property
    def sent(self) -> int:
        return int(self.load["acked"])

    @property
    def exactly_once(self) -> bool:
        return self.stored == self.distinct == self.sent and self.load["rejected"] == 0 and not self.load["unanswered"]

    @property
    def cpu_us_per_span(self) -> float:
        return 1e6 * self.agent_cpu_s / max(1, self.sent)


def _pair(samples: list[Sample], t0: float, t1: float) -> tuple[Sample, Sample]:
    """The samples bounding [t0, t1]: the last at or before t0 and the last at or before t1 (never the same
    one while there are two: on a loaded machine the samples may be seconds apart)."""
    b = max((s for s in samples if s.t <= t1 + 0.5), key=lambda s: s.t, default=samples[-1])
    before = [s for s in samples if s.t < b.t]
    if not before:
        return b, b
    a = max((s for s in before if s.t <= t0 + 0.5), key=lambda s: s.t, default=before[0])
    return a, b


def _window(
    samples: list[Sample], shards: list[list[int]], t0: float, t1: float, label: str, lat: list[float]
) -> Window:
    a, b = _pair(samples, t0, t1)
    dt = max(1e-9, b.t - a.t)

    def delta(i: int, event: str) -> int:
        return b.replicas[i].events[event] - a.replicas[i].events[event]

    n = len(a.replicas)
    inserts = sum(delta(i, "InsertQuery") for i in range(n))
    rows = sum(delta(i, "InsertedRows") for i in range(n))
    return Window(
        label,
        dt,
        [sum(delta(i, "InsertQuery") for i in shard) / dt for shard in shards],
        rows / dt,
        rows / inserts if inserts else float("nan"),
        sum(delta(i, "RejectedInserts") for i in range(n)),
        sum(delta(i, "DelayedInserts") for i in range(n)),
        lat,
    )


def _series_line(samples: list[Sample], shards: list[list[int]], back: float) -> str:
    a, b = _pair(samples, samples[-1].t - back, samples[-1].t)
    dt = max(1e-9, b.t - a.t)
    per_shard = [
        sum(b.replicas[i].events["InsertQuery"] - a.replicas[i].events["InsertQuery"] for i in s) for s in shards
    ]
    inserts = sum(per_shard)
    rows = sum(r.events["InsertedRows"] for r in b.replicas) - sum(r.events["InsertedRows"] for r in a.replicas)
    rejected = sum(r.events["RejectedInserts"] for r in b.replicas) - sum(
        r.events["RejectedInserts"] for r in a.replicas
    )
    delayed = sum(r.events["DelayedInserts"] for r in b.replicas) - sum(r.events["DelayedInserts"] for r in a.replicas)
    rpi = f"{rows / inserts:9.0f}" if inserts else f"{'-':>9}"
    shard_text = ",".join(f"{x / dt:.1f}" for x in per_shard)
    return (
        f"{b.t:6.0f} {shard_text:>14} {rows / dt:9.0f} {rpi} "
        f"{'/'.join(str(r.parts_max) for r in b.replicas):>11} {'/'.join(str(r.parts_total) for r in b.replicas):>11} "
        f"{'/'.join(str(r.merges) for r in b.replicas):>7} {rejected:5d} {delayed:5d}"
    )


SERIES_HEADER = (
    f"{'t s':>6} {'inserts/s/shard':>14} {'rows/s':>9} {'rows/ins':>9} {'parts(part)':>11} {'parts(all)':>11} "
    f"{'merges':>7} {'252s':>5} {'delay':>5}  agents' batch_wait @ shard inserts/s*"
)
SERIES_NOTE = (
    "(per 10 s; parts and merges per replica; 252s = RejectedInserts, delay = DelayedInserts; "
    "* min/median/max of what the agents report (status), not measured)"
)


def new_database_name(policy: str) -> str:
    return f"bench_fleet_{policy}_{os.getpid()}_{time.time_ns() % 10**9}"


def prepare_tables(cluster: ClickHouseCluster, policies: Sequence[str], how: str) -> dict[str, tuple[str, str]]:
    """Every policy's database and tables at once (the ON CLUSTER round trips overlap): policy -> (database,
    how the tables were made)."""
    names = {policy: new_database_name(policy) for policy in policies}
    with ThreadPoolExecutor(len(names)) as pool:
        made = {policy: pool.submit(create_tables, cluster, db, how) for policy, db in names.items()}
        return {policy: (names[policy], future.result()) for policy, future in made.items()}


def run_policy(
    cluster: ClickHouseCluster,
    policy: str,
    opts: FleetOptions,
    say: Callable[[str], None] = print,
    tables: tuple[str, str] | None = None,
) -> PolicyResult:
    """One run: fresh tables (or ``tables``: (database, how made) of :func:`prepare_tables`), ``opts.agents``
    agents with ``--insert-policy policy``, the load, the checks. The database is left for the caller to drop
    (:func:`drop_database`)."""
    if opts.quiet:
        say = lambda _line: None  # noqa: E731
    t_run = time.monotonic()

    def note(text: str) -> None:
        say(f"[{policy} {time.monotonic() - t_run:5.1f} s] {text}")

    replicas = cluster.replicas
    shards = [[replicas.index(r) for r in shard] for shard in cluster.shards]
    if tables is None:
        database = new_database_name(policy)
        made_by = create_tables(cluster, database, opts.schema)
    else:
        database, made_by = tables
    note(f"tables in {database} made by {made_by}")
    endpoints = [r.http_url for r in replicas]
    base = tempfile.mkdtemp(prefix="bench-fleet-", dir="/tmp")
    agents: list[AgentProcess] = []
    loaders: list[tuple[Any, Connection]] = []
    markers: MarkerWatch | None = None
    watch: ReportedWatch | None = None
    try:
        flags: dict[str, Any] = {
            "sink": "clickhouse",
            "cluster": cluster.name,
            "database": database,
            "insert_policy": policy,
            "log_level": opts.log_level,
            "otlp_listen": "",
            "metrics_listen": "",
        }
        if opts.target_inserts_per_second is not None:
            flags["target_inserts_per_second"] = opts.target_inserts_per_second
        if opts.batch_wait_max is not None:
            flags["batch_wait_max"] = opts.batch_wait_max
        flags.update(opts.extra_flags)
        for k in range(opts.agents):
            agent = AgentProcess(
                os.path.join(base, f"a{k:04d}"), clickhouse_endpoint=",".join(rotated(endpoints, k)), **flags
            )
            agents.append(agent)
        # load processes, spawned (this process has threads: the agents' stderr readers) before the agents
        # start, so that their imports overlap; they connect once told the run tag
        nproc = opts.load_processes or max(1, min(os.cpu_count() or 1, 4))
        nproc = min(nproc, opts.agents)
        ctx = mp.get_context("spawn")
        for p in range(nproc):
            jobs = [(k, agents[k].socket_path) for k in range(p, opts.agents, nproc)]
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=load_main, args=(child, jobs, opts.rate, opts.seconds, opts.marker_every), daemon=True
            )
            proc.start()
            child.close()
            loaders.append((proc, parent))
        t_start = time.monotonic()
        for agent in agents:
            agent.start(wait=False)
        for agent in agents:
            agent.wait_ready(AGENT_READY_TIMEOUT_S)
        agents_started_s = time.monotonic() - t_start
        note(f"{opts.agents} agents ready in {agents_started_s:.1f} s")
        for _, conn in loaders:
            conn.send(policy == "fleet")  # run tag: span ids of the two runs never collide
        for proc, conn in loaders:
            if not conn.poll(60) or conn.recv() != "ready":
                raise RuntimeError(f"load process {proc.pid} did not get ready")

        # go
        sampler_replicas = list(replicas)
        window_s = max(90.0, 3 * (opts.batch_wait_max or 30.0))
        markers = MarkerWatch(sampler_replicas, database, window_s)
        sampler = {"errors": 0, "slowest_s": 0.0}

        def take_sample(t: float) -> Sample | None:
            """Every replica's counters now; None (counted) if a replica does not answer in time."""
            t_query = time.monotonic()
            try:
                return Sample(t, [sample_replica(r, database) for r in sampler_replicas])
            except Exception as exc:
                sampler["errors"] += 1
                if sampler["errors"] <= 3:
                    note(f"sample at t={t:.0f} s failed: {str(exc)[:200]}")
                return None
            finally:
                sampler["slowest_s"] = max(sampler["slowest_s"], time.monotonic() - t_query)

        first = None
        while first is None:
            first = take_sample(0.0)
        samples = [first]
        cpu_agents0 = agent_cpu(agents)
        cpu_server0 = sum(process_cpu_seconds(r.proc.pid) for r in replicas if r.proc is not None)
        zk = cluster.zookeeper.proc
        cpu_zk0 = process_cpu_seconds(zk.pid) if zk is not None else 0.0
        start_wall = time.time() + 0.5
        for _, conn in loaders:
            conn.send(start_wall)
        t0 = time.monotonic() + (start_wall - time.time())
        t0_ns = int(start_wall * 1e9)
        time.sleep(max(0.0, t0 - time.monotonic()))
        samples[0].t = 0.0
        note(f"load: {opts.agents} agents x {opts.rate} spans/s for {opts.seconds:.0f} s ({nproc} load processes)")
        watch = ReportedWatch(agents)
        say(SERIES_NOTE)
        say(SERIES_HEADER)
        results: dict[int, dict[str, Any]] = {}
        next_sample, next_report = t0 + SAMPLE_S, t0 + REPORT_EVERY_S
        parts_max = parts_total_max = 0
        load_end = t0 + opts.seconds
        markers.start()
        while len(results) < len(loaders):
            now = time.monotonic()
            if now >= next_sample:
                s = take_sample(now - t0)
                if s is not None:
                    samples.append(s)
                    parts_max = max(parts_max, *(r.parts_max for r in s.replicas))
                    parts_total_max = max(parts_total_max, *(r.parts_total for r in s.replicas))
                next_sample = max(next_sample + SAMPLE_S, time.monotonic())
                if s is not None and now >= next_report and now <= load_end + 1:
                    say(f"{_series_line(samples, shards, REPORT_EVERY_S)}  {watch.latest.text()}")
                    next_report += REPORT_EVERY_S
            for i, (proc, conn) in enumerate(loaders):
                if i in results:
                    continue
                if conn.poll(0):
                    results[i] = conn.recv()
                elif not proc.is_alive():
                    raise RuntimeError(f"load process {proc.pid} exited ({proc.exitcode}) without a result")
            time.sleep(min(max(0.0, next_sample - time.monotonic()), 0.05))
        loads = list(results.values())
        cpu_agents_mid = agent_cpu(agents)
        reported_at_end = watch.stop()
        load_wall = time.monotonic() - t0
        load_t = max(r["send_seconds"] for r in loads)
        load = {
            key: sum(a[key] for r in loads for a in r["agents"].values())
            for key in ("sent", "acked", "rejected", "unanswered", "markers", "blocked")
        }
        load["eof"] = sum(a["eof"] for r in loads for a in r["agents"].values())
        load["late_max"] = max(r["late_max"] for r in loads)
        load["cpu_s"] = sum(r["cpu_s"] for r in loads)
        load["send_seconds"] = load_t
        achieved = load["sent"] / max(1, opts.agents) / max(1e-9, opts.seconds)
        note(
            f"load done: {load['sent']} spans sent ({achieved:.1f}/s per agent, target {opts.rate}), "
            f"{load['acked']} acknowledged, {load['rejected']} rejected, {load['unanswered']} unanswered, "
            f"{load['blocked']} sends blocked (EAGAIN), ticks late by up to {load['late_max'] * 1000:.0f} ms, "
            f"load processes {load['cpu_s']:.1f} CPU-s"
        )

        # drain: every span visible through Distributed and on each replica of its shard
        expected = load["acked"]
        drain_t0 = time.monotonic()
        stored = 0
        deadline = drain_t0 + opts.drain_timeout
        replica_rows = [0] * len(replicas)
        progress: tuple[tuple[int, list[int]], float] = ((-1, []), drain_t0)
        next_drain_note = drain_t0 + REPORT_EVERY_S
        while time.monotonic() < deadline:
            s = take_sample(time.monotonic() - t0)
            if s is not None:
                samples.append(s)
            try:
                stored = int(cluster.query(f"SELECT count() FROM {database}.traces"))
                replica_rows = [int(r.query(f"SELECT count() FROM {database}.traces_local")) for r in replicas]
            except Exception as exc:
                note(f"count failed, retrying: {exc}")
                time.sleep(1)
                continue
            shard_rows = [{replica_rows[i] for i in shard} for shard in shards]
            if stored >= expected and all(len(x) == 1 for x in shard_rows):
                break
            now = time.monotonic()
            if (stored, replica_rows) != progress[0]:
                progress = ((stored, replica_rows), now)
                if now >= next_drain_note:
                    note(f"draining: {stored} of {expected} visible (replicas: {replica_rows})")
                    next_drain_note = now + REPORT_EVERY_S
            elif now - progress[1] > opts.drain_stall:
                note(f"no progress for {opts.drain_stall:.0f} s: giving up the drain")
                break
            time.sleep(0.25 if now - drain_t0 < 10 else 1.0)
        drain_s = time.monotonic() - drain_t0
        markers.stop()
        cpu_agents1 = agent_cpu(agents)
        cpu_server1 = sum(process_cpu_seconds(r.proc.pid) for r in replicas if r.proc is not None)
        cpu_zk1 = process_cpu_seconds(zk.pid) if zk is not None else 0.0
        mem = [agent_memory_mb(a) for a in agents]
        count, distinct = (
            int(x) for x in cluster.query(f"SELECT count(), uniqExact(span_id) FROM {database}.traces").split()
        )
        note(
            f"drained {drain_s:.1f} s after the load: {count} rows, {distinct} distinct span ids, "
            f"{expected} acknowledged (replicas: {replica_rows})"
        )

        # windows
        settle_from = opts.seconds * (1 - opts.settle_fraction)
        windows = {
            "load": _window(
                samples,
                shards,
                0.0,
                opts.seconds,
                "whole load",
                markers.latencies(t0_ns, t0_ns + int(opts.seconds * 1e9)),
            ),
            "settled": _window(
                samples,
                shards,
                settle_from,
                opts.seconds,
                f"last {opts.settle_fraction:.0%} (t >= {settle_from:.0f} s)",
                markers.latencies(t0_ns + int(settle_from * 1e9), t0_ns + int(opts.seconds * 1e9)),
            ),
        }
        agent_cpu_load_s = _cpu_delta(cpu_agents0, cpu_agents_mid)
        agent_cpu_s = _cpu_delta(cpu_agents0, cpu_agents1)
    finally:
        for thread in (markers, watch):
            if thread is not None:
                thread.stop()
        for proc, _ in loaders:
            if proc.is_alive():
                proc.kill()
            proc.join(5)
        for agent in agents:
            if agent.running:
                agent.signal(signal.SIGTERM)
        codes: list[int | None] = []
        for agent in agents:
            if agent.proc is None:
                codes.append(None)
                continue
            try:
                codes.append(agent.wait_exit(30))
            except subprocess.TimeoutExpired:
                codes.append(agent.kill())
            agent.cleanup()
        note(f"agents stopped (exit codes {sorted(set(codes), key=str)})")
        shutil.rmtree(base, ignore_errors=True)  # the agents' WALs and sockets (their logs are in memory)
    logs = [a.stderr_text for a in agents]
    log_252 = sum(
        1 for text in logs for line in text.splitlines() if re.search(r"\b252\b|TOO_MANY_PARTS|Too many parts", line)
    )
    kinds: Counter[str] = Counter()  # warning/error lines, numbers and addresses blanked, with their counts
    for text in logs:
        for line in text.splitlines():
            if re.search(r"error|traceback|warning", line, re.I) and not line.startswith("--- start"):
                kinds[re.sub(r"\d+", "N", line.split(" ", 3)[-1])[:160]] += 1
    problems = [f"{n:6d} x {kind}" for kind, n in kinds.most_common()]
    return PolicyResult(
        policy=policy,
        database=database,
        options=opts,
        shards=[[r.name for r in shard] for shard in cluster.shards],
        schema_made_by=made_by,
        agents_started_s=agents_started_s,
        load=load,
        achieved_rate=achieved,
        windows=windows,
        parts_max=parts_max,
        parts_total_max=parts_total_max,
        parts_at_end=[r.parts_total for r in samples[-1].replicas],
        drain_s=drain_s,
        stored=count,
        distinct=distinct,
        replica_rows=replica_rows,
        agent_cpu_s=agent_cpu_s,
        agent_cpu_load_s=agent_cpu_load_s,
        load_wall_s=load_wall,
        agent_pss_mb=statistics.fmean(m[0] for m in mem) if mem else 0.0,
        agent_rss_mb=statistics.fmean(m[1] for m in mem) if mem else 0.0,
        server_cpu_s=cpu_server1 - cpu_server0,
        zookeeper_cpu_s=cpu_zk1 - cpu_zk0,
        agent_log_252=log_252,
        agent_log_problems=problems[:20],
        agent_exit_codes=codes,
        samples=samples,
        reported=reported_at_end,
        sampler_errors=int(sampler["errors"]),
        sampler_slowest_s=float(sampler["slowest_s"]),
    )


# ------------------------------------------------------------------------------------------ report
def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, round(q * len(values)) - 1))]


def summary_rows(r: PolicyResult) -> list[tuple[str, str]]:
    w, s = r.windows["load"], r.windows["settled"]

    def lat(x: list[float]) -> str:
        if not x:
            return "no markers seen"
        return f"p50 {_pct(x, 0.5):.1f} / p95 {_pct(x, 0.95):.1f} / max {x[-1]:.1f} s ({len(x)} markers)"

    def per_agent_wait(win: Window) -> str:
        total = win.total_inserts_per_s
        return f"{r.options.agents / total:.1f} s" if total else "-"

    def shard_text(win: Window) -> str:
        return " + ".join(f"{x:.2f}" for x in win.inserts_per_s)

    return [
        ("inserts/s per shard (whole load)", shard_text(w)),
        (f"inserts/s per shard ({s.label})", shard_text(s)),
        ("rows per insert (whole / settled)", f"{w.rows_per_insert:.0f} / {s.rows_per_insert:.0f}"),
        ("one insert per agent every (settled)", per_agent_wait(s)),
        ("agents' batch_wait @ shard inserts/s they read (end)", r.reported.text()),
        ("rows/s inserted (settled)", f"{s.rows_per_s:.0f}"),
        ("active parts: max in a partition / all", f"{r.parts_max} / {r.parts_total_max} (at end: {r.parts_at_end})"),
        ("server 252s (RejectedInserts) / DelayedInserts", f"{w.rejected} / {w.delayed}"),
        ("lines naming 252 / TOO_MANY_PARTS in agent logs", str(r.agent_log_252)),
        ("latency send -> queryable (whole)", lat(w.latency)),
        ("latency send -> queryable (settled)", lat(s.latency)),
        ("drain after the load", f"{r.drain_s:.1f} s"),
        (
            "spans acked / stored / distinct",
            f"{r.sent} / {r.stored} / {r.distinct}  {'exactly once: OK' if r.exactly_once else 'NOT EXACTLY ONCE'}",
        ),
        ("achieved load", f"{r.achieved_rate:.1f} spans/s per agent (target {r.options.rate})"),
        (
            "agents' CPU (load start -> drained)",
            f"{r.agent_cpu_s:.1f} CPU-s = {r.cpu_us_per_span:.0f} us/span "
            f"(during the load {100 * r.agent_cpu_load_s / max(1e-9, r.load_wall_s) / r.options.agents:.1f}% "
            "of a core per agent)",
        ),
        ("agent memory (PSS / RSS, per agent)", f"{r.agent_pss_mb:.0f} / {r.agent_rss_mb:.0f} MB"),
        ("servers' CPU (all replicas) / ZooKeeper", f"{r.server_cpu_s:.1f} / {r.zookeeper_cpu_s:.1f} CPU-s"),
        ("agents' exit codes", ",".join(sorted({str(c) for c in r.agent_exit_codes}))),
        (
            "sampler: failed samples / slowest",
            f"{r.sampler_errors} / {r.sampler_slowest_s:.2f} s ({len(r.samples)} samples)",
        ),
    ]


def print_summary(results: list[PolicyResult]) -> None:
    if not results:
        return
    rows = [summary_rows(r) for r in results]
    width = max(len(k) for k, _ in rows[0])
    print()
    print(f"{'':{width}}  " + "  |  ".join(f"{r.policy}" for r in results))
    for i, (key, _) in enumerate(rows[0]):
        print(f"{key:{width}}  " + "  |  ".join(row[i][1] for row in rows))
    if len(results) == 2:
        a, b = results
        sa, sb = a.windows["settled"], b.windows["settled"]
        if sb.total_inserts_per_s:
            print(
                f"\n{b.policy} vs {a.policy} (settled): {sa.total_inserts_per_s / sb.total_inserts_per_s:.1f}x fewer "
                f"inserts, {sb.rows_per_insert / sa.rows_per_insert:.1f}x more rows per insert"
            )
    for r in results:
        if r.agent_log_problems:
            print(f"\n[{r.policy}] warning/error lines in the agents' logs, by kind (numbers as N; first 20):")
            for line in r.agent_log_problems:
                print(f"  {line}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--agents", type=int, default=50)
    p.add_argument("--seconds", type=float, default=300.0, help="load duration per policy")
    p.add_argument("--rate", type=int, default=300, help="spans/s per agent")
    p.add_argument("--policy", choices=("fixed", "fleet", "both"), default="both")
    p.add_argument("--shards", type=int, default=1)
    p.add_argument("--replicas", type=int, default=2, help="replicas per shard")
    p.add_argument("--target-inserts-per-second", type=float, default=None, help="agent flag (default: the agent's)")
    p.add_argument("--batch-wait-max", type=float, default=None, help="agent flag (default: the agent's)")
    p.add_argument("--marker-every", type=float, default=2.0, help="seconds between latency markers per agent")
    p.add_argument("--load-processes", type=int, default=0, help="0 = one per CPU (at most 4)")
    p.add_argument("--schema", choices=("auto", "cli", "bench"), default="auto")
    p.add_argument("--log-level", default="warning", help="the agents' log level")
    p.add_argument(
        "--zk-session-timeout-ms",
        type=int,
        default=30000,
        help="the replicas' ZooKeeper session timeout (the server default; the test fixture's 5 s is for fast "
        "outage tests and expires under a 2-CPU machine's full load)",
    )
    a = p.parse_args(argv)
    opts = FleetOptions(
        agents=a.agents,
        seconds=a.seconds,
        rate=a.rate,
        target_inserts_per_second=a.target_inserts_per_second,
        batch_wait_max=a.batch_wait_max,
        marker_every=a.marker_every,
        load_processes=a.load_processes,
        schema=a.schema,
        log_level=a.log_level,
    )
    policies = ["fixed", "fleet"] if a.policy == "both" else [a.policy]
    print(machine_line())
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}: {a.agents} agents x {a.rate} spans/s x {a.seconds:.0f} s per policy, "
        f"cluster {a.shards} shard(s) x {a.replicas} replicas, policies {', '.join(policies)}"
    )
    meter = CpuMeter()
    t = time.monotonic()
    cluster = ClickHouseCluster(
        a.shards, a.replicas, session_timeout_ms=a.zk_session_timeout_ms, operation_timeout_ms=10000
    )
    results: list[PolicyResult] = []
    try:
        cluster.start()
        print(f"cluster {cluster!r} started in {cluster.startup_seconds:.1f} s")
        t_tables = time.monotonic()
        tables = prepare_tables(cluster, policies, opts.schema)
        print(f"tables of {len(policies)} run(s) made in {time.monotonic() - t_tables:.1f} s")
        for i, policy in enumerate(policies):
            r = run_policy(cluster, policy, opts, tables=tables[policy])
            results.append(r)
            if i + 1 < len(policies):
                drop_database(cluster, r.database)  # its merges would go on competing with the next run
    finally:
        t_close = time.monotonic()
        cluster.close()
    print(f"cluster stopped in {time.monotonic() - t_close:.1f} s")
    print_summary(results)
    print(f"\n{meter.summary()}")
    print(f"total {time.monotonic() - t:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
