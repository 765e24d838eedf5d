"""A real ClickHouse cluster for the tests: one private ZooKeeper 3.8 + several clickhouse-server 18.16.

Nothing system-wide is used: ZooKeeper (Debian package ``zookeeper``, scripts/bootstrap.sh; not the
``zookeeperd`` service) runs as ``java ... org.apache.zookeeper.server.ZooKeeperServerMain zoo.cfg`` in its
own temp dir, and each replica is a :class:`ClickHouseServer` of tests/clickhouse_server.py (its config.xml
and users) plus one file, ``config.d/cluster.xml``. Both are tests/managed_process.py's ``ManagedProcess``:
the same start/stop/kill/restart/freeze/thaw/log_tail code. Everything listens on 127.0.0.1
only, on free ports; ``close()`` stops every process and removes the temp dirs. A watchdog process
does the same if the test process dies without running its teardown (SIGKILL, a runner's timeout).
A 1x2 cluster starts in about 0.5 s (ZooKeeper ~0.3-1 s, the replicas in parallel ~0.1-0.2 s).

API (``ClickHouseCluster``; the fixtures of tests/cluster/conftest.py give started ones)::

    cluster.name                  "telemetry_cluster" (<remote_servers>, internal_replication=true)
    cluster.replicas              [Replica, ...] flat, shard-major; cluster.shards: [[Replica, ...], ...]
    cluster.zookeeper             the ZooKeeper handle (below)
    cluster.query(sql, **kw)      ClickHouseServer.query on replicas[0] (data=, settings=, timeout=...)
    cluster.ddl(sql)              an ON CLUSTER statement, waited for on every host (retries, see there)
    cluster.scratch_database()    context manager: CREATE DATABASE x ON CLUSTER ..., dropped ON CLUSTER
    cluster.zookeeper_children(path)  znode names, read through a replica's system.zookeeper
    cluster.ensure_running()      thaw/start ZooKeeper and every replica, wait for their ZooKeeper sessions
    cluster.startup_seconds       how long start() took; cluster.session_timeout_ms
    wait_for(fn, timeout=...)     module function: poll ``fn`` until it returns a truthy value

    Replica (a ClickHouseServer): http_url (== url), http_port, tcp_port, interserver_port, shard and
    replica (1-based), name ("s1r2"), macros, query(sql, ...), kill() (SIGKILL), freeze()/thaw()
    (SIGSTOP/SIGCONT, also named pause()/resume()), frozen, stop(), start(), restart() (same ports, same
    data dir), running, ensure_running(), wait_zookeeper_session(), log_tail().

    ZooKeeper: host, port, connect_string, data_dir, stop() (SIGTERM) / start() (same port and data
    dir: znodes survive), kill() (SIGKILL), restart(), freeze()/thaw() (SIGSTOP/SIGCONT), running,
    frozen, four_letter("srvr"|"ruok"|"conf"|"cons"|"mntr"|"stat"|"dump"), ensure_running(), log_tail().

Replicated tables: ``ReplicatedMergeTree('/clickhouse/tables/{shard}/<db>.<table>', '{replica}')``. Macros:
``shard`` ("1", "2", ...), ``replica`` ("s<shard>r<n>", unique in the cluster) and ``cluster`` (18.16
expands ``ON CLUSTER '{cluster}'``). ON CLUSTER DDL uses ``<distributed_ddl><path>/clickhouse/task_queue/ddl``;
18.16 finds its own entry in the cluster by (local address, tcp_port), so each replica has its own TCP port.

Timings chosen for fast tests (constructor arguments; server defaults in brackets): ZooKeeper
session_timeout_ms 5000 [30000] and operation_timeout_ms 3000 [10000]; MergeTree
zookeeper_session_expiration_check_period and check_delay_period 1 s [60 s] (how often a replicated table
checks its session). ZooKeeper: tickTime=500, forceSync=no (no fsync: a killed ZooKeeper may lose its
last writes), -Xmx256m, admin server off, 4lw commands above enabled.

18.16 behaviour seen while writing this (tests/cluster/test_cluster_fixture.py shows each):
- ZooKeeper stopped: an INSERT into a replicated table fails at once with 242 (TABLE_IS_READ_ONLY, HTTP
  500); reads still work. After ZooKeeper is back, INSERTs work again only after up to ~10 s: a failed
  reconnect is retried after a fixed 10 s (ReplicatedMergeTreeRestartingThread, not configurable).
- ZooKeeper frozen (SIGSTOP): the INSERT fails after operation_timeout_ms with 999 (KEEPER_EXCEPTION,
  "Connection loss"), later ones with 242; after SIGCONT INSERTs work within ~0.1 s.
- A SIGKILLed replica leaves its ``is_active`` znode until its session expires (session_timeout_ms);
  restarted before that, its tables stay read-only ~10 s more (same fixed retry). Restarted after it,
  it catches up at once.
- Deduplication: replicated_deduplication_window = 100 blocks; the block ID hashes the part's data,
  which is sorted by the ORDER BY key, so the same rows in another order are a duplicate too.
- The DDLWorker race described in :meth:`Replica.wait_zookeeper_session` (a SIGSEGV on an early ON CLUSTER).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar
from xml.sax.saxutils import escape

from clickhouse_server import (
    START_TIMEOUT,
    ClickHouseQueryError,
    ClickHouseServer,
    ClickHouseStartError,
    find_binary,
)
from managed_process import ManagedProcess, StartCloseContext, distinct_free_ports, wait_until

CLUSTER_NAME = "telemetry_cluster"
RETRIED_DDL_ERRORS = frozenset({242, 999})  # TABLE_IS_READ_ONLY, KEEPER_EXCEPTION (see ClickHouseCluster.ddl)
DDL_PATH = "/clickhouse/task_queue/ddl"
JAVA_ENV = "AUTOMAGIK_TELEMETRY_TEST_JAVA"
ZOOKEEPER_JAR = "/usr/share/java/zookeeper.jar"  # Debian's libzookeeper-java; its manifest has the classpath
SLF4J_SIMPLE_JAR = "/usr/share/java/slf4j-simple.jar"  # libslf4j-java (a dependency): logs to stderr
ZOOKEEPER_MAIN = "org.apache.zookeeper.server.ZooKeeperServerMain"  # standalone server, no quorum ports
ZOOKEEPER_JVM_OPTS = (
    "-Xmx256m",
    "-Xms32m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",  # C1 only: faster start, plenty for a test
    "-XX:-UsePerfData",  # no /tmp/hsperfdata_<user>/<pid> left behind by a SIGKILL
    "-Djava.net.preferIPv4Stack=true",
    "-Dzookeeper.jmx.log4j.disable=true",
    "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
)

# The cluster's watchdog, a separate process (see ClickHouseCluster.start): it blocks on its stdin, a pipe
# from the test process, and gets EOF when that process closes it (close()) or is gone for any reason
# (SIGKILL, a runner's timeout); it then SIGKILLs every process whose command line names the cluster's
# temp dir (argv[1]) and removes that dir if argv[2] == "1". No pid bookkeeping, so no pid-reuse risk.
_REAPER = r"""
import os, shutil, signal, sys, time
marker, remove = sys.argv[1], sys.argv[2] == "1"
sys.stdin.buffer.read()
for _ in range(20):
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(pid))
            except OSError:
                pass
    if not found:
        break
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    time.sleep(0.1)
if remove:
    shutil.rmtree(marker, ignore_errors=True)
"""

T = TypeVar("T")


def wait_for(fn: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, what: str = "") -> T:
    """``wait_until`` where an exception from ``fn`` counts as "not yet"."""
    return wait_until(fn, timeout, interval, what or repr(fn), retry_on=(Exception,))


def find_java() -> str:
    for c in (os.environ.get(JAVA_ENV), shutil.which("java"), "/usr/bin/java"):
        if c and os.access(c, os.X_OK):
            return c
    raise FileNotFoundError(f"java not found (the Debian package zookeeper pulls in default-jre), or set {JAVA_ENV}")


def missing_dependencies() -> list[str]:
    """What this machine lacks to run a cluster ([] = all there), as readable sentences."""
    missing = []
    try:
        find_binary()
    except ClickHouseStartError as e:
        missing.append(str(e))
    try:
        find_java()
    except FileNotFoundError as e:
        missing.append(str(e))
    if not os.path.exists(ZOOKEEPER_JAR):
        missing.append(f"{ZOOKEEPER_JAR} not found: Debian package zookeeper (scripts/bootstrap.sh installs it)")
    return missing


class ZooKeeperStartError(RuntimeError):
    pass


class ZooKeeper(ManagedProcess):
    """A private standalone ZooKeeper server (see the module docstring); process control (start, stop,
    kill, restart, freeze/thaw, log_tail) is :class:`managed_process.ManagedProcess`'s."""

    host = "127.0.0.1"
    what = "ZooKeeper"
    start_error = ZooKeeperStartError
    start_timeout = 30.0

    def __init__(self, base_dir: str | os.PathLike[str] | None = None, port: int = 0):
        super().__init__(base_dir, prefix="zookeeper-test-")
        self.java = find_java()
        self.data_dir = self.base_dir / "data"
        self.port = port

    @property
    def connect_string(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def _ports(self) -> tuple[int, ...]:
        return (self.port,)

    @_ports.setter
    def _ports(self, ports: Sequence[int]) -> None:
        (self.port,) = ports

    def _command(self) -> list[str]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cfg = self.base_dir / "zoo.cfg"
        cfg.write_text(
            "\n".join(
                [
                    "tickTime=500",
                    "minSessionTimeout=1000",
                    "maxSessionTimeout=60000",
                    f"dataDir={self.data_dir}",
                    f"clientPort={self.port}",
                    f"clientPortAddress={self.host}",
                    "admin.enableServer=false",
                    "4lw.commands.whitelist=ruok,srvr,stat,conf,cons,mntr,dump",
                    "forceSync=no",
                    "preAllocSize=4096",
                    "autopurge.purgeInterval=0",
                    "maxClientCnxns=0",
                    "",
                ]
            )
        )
        classpath = ZOOKEEPER_JAR + (f":{SLF4J_SIMPLE_JAR}" if os.path.exists(SLF4J_SIMPLE_JAR) else "")
        return [self.java, *ZOOKEEPER_JVM_OPTS, "-cp", classpath, ZOOKEEPER_MAIN, str(cfg)]

    def _ready(self) -> bool:
        return self.serving()

    def four_letter(self, word: str, timeout: float = 1.0) -> str | None:
        """Send a four-letter word (ruok, srvr, conf, mntr, ...); the answer, or None if nobody answers."""
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout) as s:
                s.sendall(word.encode())
                s.shutdown(socket.SHUT_WR)
                chunks = []
                while chunk := s.recv(65536):
                    chunks.append(chunk)
                return b"".join(chunks).decode("utf-8", "replace")
        except OSError:
            return None

    def serving(self, timeout: float = 1.0) -> bool:
        """``srvr`` reports a mode (it answers "not currently serving requests" while starting) and ``conf``
        names our dataDir: another server that grabbed the port does not count."""
        srvr = self.four_letter("srvr", timeout) or ""
        if "Mode: standalone" not in srvr:
            return False
        conf = self.four_letter("conf", timeout) or ""
        return f"dataDir={self.data_dir}" in conf


class Replica(ClickHouseServer):
    """One clickhouse-server of the cluster: ClickHouseServer plus config.d/cluster.xml (macros,
    ZooKeeper, remote_servers, distributed_ddl, interserver HTTP on 127.0.0.1)."""

    def __init__(self, cluster: ClickHouseCluster, shard: int, replica: int, base_dir: Path):
        super().__init__(base_dir=base_dir, binary=cluster.binary)
        self.cluster = cluster
        self.shard = shard
        self.replica = replica
        self.interserver_port = 0

    @property
    def name(self) -> str:
        return f"s{self.shard}r{self.replica}"

    @property
    def macros(self) -> dict[str, str]:
        return {"cluster": self.cluster.name, "shard": str(self.shard), "replica": self.name}

    @property
    def http_url(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"<Replica {self.name} {self.url} tcp={self.tcp_port} running={self.running}>"

    def _write_config(self) -> None:
        super()._write_config()
        (self.base_dir / "config.d").mkdir(exist_ok=True)
        (self.base_dir / "config.d" / "cluster.xml").write_text(self.cluster.replica_config(self))

    def _start_once(self, timeout: float) -> None:
        """ClickHouseServer's start, then (if ZooKeeper is up) :meth:`wait_zookeeper_session`."""
        t0 = time.monotonic()
        super()._start_once(timeout)
        zk = self.cluster.zookeeper
        if zk.running and not zk.frozen:  # else: ClickHouseCluster.ensure_running() waits for it later
            try:
                self.wait_zookeeper_session(max(5.0, timeout - (time.monotonic() - t0)))
            except ClickHouseStartError:
                self.kill()
                raise

    def wait_zookeeper_session(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until this server has a (new) ZooKeeper session: a system.zookeeper query works.

        Why: 18.16's DDLWorker thread opens its session only after the HTTP port is open, and an ON CLUSTER
        query that arrives before it has one crashes the server (SIGSEGV, NULL pointer in
        zkutil::ZooKeeper::createImpl; seen about once in 15 starts). The session is the server's shared
        one, so once a query has used it the DDLWorker has it too. Do not send ON CLUSTER queries to a
        replica started while ZooKeeper was down before this returned."""
        zk = self.cluster.zookeeper
        try:
            wait_for(
                lambda: self.query("SELECT count() FROM system.zookeeper WHERE path = '/'", timeout=5),
                timeout=timeout,
                interval=0.02,
                what=f"{self.name} reaches ZooKeeper {zk.connect_string}",
            )
        except AssertionError as e:
            raise ClickHouseStartError(f"{e}\n{self.log_tail()}\n{zk.log_tail()}") from None


class ClickHouseCluster(StartCloseContext):
    """``shards`` x ``replicas`` clickhouse-servers and one ZooKeeper (see the module docstring)."""

    def __init__(
        self,
        shards: int = 1,
        replicas: int = 2,
        *,
        name: str = CLUSTER_NAME,
        base_dir: str | os.PathLike[str] | None = None,
        session_timeout_ms: int = 5000,
        operation_timeout_ms: int = 3000,
        merge_tree_settings: dict[str, object] | None = None,
    ):
        self.binary = find_binary()
        self.name = name
        self._owns_dir = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="clickhouse-cluster-test-"))
        self.session_timeout_ms = session_timeout_ms
        self.operation_timeout_ms = operation_timeout_ms
        self.merge_tree_settings: dict[str, object] = {
            "zookeeper_session_expiration_check_period": 1,
            "check_delay_period": 1,
            **(merge_tree_settings or {}),
        }
        self.zookeeper = ZooKeeper(self.base_dir / "zookeeper")
        self.shards = [
            [Replica(self, s, r, self.base_dir / f"s{s}r{r}") for r in range(1, replicas + 1)]
            for s in range(1, shards + 1)
        ]
        self.startup_seconds = 0.0
        self._reaper: subprocess.Popen[bytes] | None = None

    @property
    def replicas(self) -> list[Replica]:
        return [r for shard in self.shards for r in shard]

    def __repr__(self) -> str:
        return f"<ClickHouseCluster {self.name} {len(self.shards)}x{len(self.shards[0])} zk={self.zookeeper.port}>"

    # -- config ---------------------------------------------------------------------------------
    def replica_config(self, me: Replica) -> str:
        shards = "".join(
            "<shard><internal_replication>true</internal_replication>"
            + "".join(f"<replica><host>127.0.0.1</host><port>{r.tcp_port}</port></replica>" for r in shard)
            + "</shard>"
            for shard in self.shards
        )
        merge_tree = "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in self.merge_tree_settings.items())
        macros = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in me.macros.items())
        return f"""<?xml version="1.0"?>
<yandex>
    <interserver_http_host>127.0.0.1</interserver_http_host>
    <interserver_http_port>{me.interserver_port}</interserver_http_port>
    <macros>{macros}</macros>
    <zookeeper>
        <node><host>{self.zookeeper.host}</host><port>{self.zookeeper.port}</port></node>
        <session_timeout_ms>{self.session_timeout_ms}</session_timeout_ms>
        <operation_timeout_ms>{self.operation_timeout_ms}</operation_timeout_ms>
    </zookeeper>
    <remote_servers><{self.name}>{shards}</{self.name}></remote_servers>
    <distributed_ddl><path>{DDL_PATH}</path></distributed_ddl>
    <merge_tree>{merge_tree}</merge_tree>
</yandex>
"""

    # -- process control ------------------------------------------------------------------------
    def start(self, timeout: float = START_TIMEOUT) -> ClickHouseCluster:
        """ZooKeeper, then every replica in parallel. All ports are picked before the first replica
        starts (each config lists every replica); on a port collision all are picked again."""
        t0 = time.monotonic()
        if self._reaper is None:
            self._reaper = subprocess.Popen(
                [sys.executable, "-c", _REAPER, f"{self.base_dir}/", "1" if self._owns_dir else "0"],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C must reach pytest (which then runs close()), not the reaper
            )
        self.zookeeper.start(timeout)
        last: Exception | None = None
        for _ in range(3):
            taken = {self.zookeeper.port}
            for r in self.replicas:
                r.http_port, r.tcp_port, r.interserver_port = distinct_free_ports(3, taken)
            with ThreadPoolExecutor(len(self.replicas)) as pool:
                futures = [pool.submit(r.start, timeout) for r in self.replicas]
                errors = [e for e in (f.exception() for f in futures) if e is not None]
            if not errors:
                self.startup_seconds = time.monotonic() - t0
                return self
            for r in self.replicas:
                r.kill()
            last = errors[0]
            if not all("Address already in use" in str(e) for e in errors):
                raise last
        raise ClickHouseStartError(f"no free ports after 3 tries: {last}")

    def ensure_running(self, timeout: float = START_TIMEOUT) -> None:
        """Thaw/start ZooKeeper and every replica (a test may have left any of them frozen or dead), then
        wait until every replica has a ZooKeeper session again (after an outage its old one is dead)."""
        self.zookeeper.ensure_running()

        def replica_ready(r: Replica) -> None:
            r.ensure_running()
            r.wait_zookeeper_session(timeout)

        with ThreadPoolExecutor(len(self.replicas)) as pool:
            for f in [pool.submit(replica_ready, r) for r in self.replicas]:
                f.result()

    def close(self) -> None:
        """Stop every replica (before ZooKeeper: a replica shuts down faster with ZooKeeper there),
        then ZooKeeper; delete the temp dir if this object made it."""
        try:
            with ThreadPoolExecutor(len(self.replicas)) as pool:
                for f in [pool.submit(r.stop) for r in self.replicas]:
                    f.exception()
        finally:
            for r in self.replicas:
                r.kill()  # a no-op unless stop() failed
            self.zookeeper.close()
            if self._owns_dir:
                shutil.rmtree(self.base_dir, ignore_errors=True)
            if self._reaper is not None:
                assert self._reaper.stdin is not None
                self._reaper.stdin.close()  # EOF: it checks that nothing is left, and exits
                try:
                    self._reaper.wait(10)
                except subprocess.TimeoutExpired:
                    self._reaper.kill()
                    self._reaper.wait()
                self._reaper = None

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join([self.zookeeper.log_tail(lines), *(f"[{r.name}] {r.log_tail(lines)}" for r in self.replicas)])

    # -- queries --------------------------------------------------------------------------------
    def query(self, sql: str, **kw: object) -> str:
        """``ClickHouseServer.query`` on the first replica."""
        return self.replicas[0].query(sql, **kw)  # type: ignore[arg-type]

    def ddl(self, sql: str, *, timeout: float = 30.0, replica: Replica | None = None, retry: bool = True) -> str:
        """Run an ON CLUSTER statement on ``replica`` (default: the first) and wait for every host (18.16
        answers one TSV row per host: host, port, status, error, num_hosts_remaining, num_hosts_active).

        With ``retry`` (for idempotent statements: IF [NOT] EXISTS), errors 999 (KEEPER_EXCEPTION: the
        DDL worker's ZooKeeper session died in an outage and is renewed up to 5 s later) and 242
        (TABLE_IS_READ_ONLY: a replicated table waits up to 10 s for a new session) are retried until
        ``timeout``; other errors raise at once."""
        if "ON CLUSTER" not in sql.upper():
            raise ValueError(f"not an ON CLUSTER statement: {sql}")
        target = replica or self.replicas[0]
        deadline = time.monotonic() + timeout
        while True:
            left = max(1.0, deadline - time.monotonic())
            try:
                return target.query(sql, settings={"distributed_ddl_task_timeout": int(left)}, timeout=left + 10)
            except ClickHouseQueryError as e:
                if not retry or e.code not in RETRIED_DDL_ERRORS or time.monotonic() >= deadline:
                    raise
            time.sleep(0.2)

    def zookeeper_children(self, path: str, replica: Replica | None = None) -> list[str]:
        """The znodes under ``path``, read through a replica's system.zookeeper ([] if ``path`` is missing)."""
        target = replica or next(r for r in self.replicas if r.running and not r.frozen)
        try:
            out = target.query(f"SELECT name FROM system.zookeeper WHERE path = '{path}' ORDER BY name")
        except ClickHouseQueryError as e:
            if e.code == 999 and "No node" in e.body:  # Coordination::Exception: No node, path: ...
                return []
            raise
        return out.split()

    @contextlib.contextmanager
    def scratch_database(self, prefix: str = "test") -> Iterator[str]:
        """A fresh database on every replica (ON CLUSTER); dropped ON CLUSTER on exit, after bringing back
        whatever the test stopped (dropping the replicated tables removes their znodes too)."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.ddl(f"CREATE DATABASE {name} ON CLUSTER {self.name}")
        try:
            yield name
        finally:
            self.ensure_running()
            self.ddl(f"DROP DATABASE IF EXISTS {name} ON CLUSTER {self.name}")
