"""Shipper throughput: rows/s from the WAL into ClickHouse, end to end and from a backlog; shipper memory.

Reference: a direct INSERT of the same rows into the same server. The spans of the benchmark's WAL are
read, cut into the shipper's batches (20 000 rows or 8 MiB of WAL bytes), transformed and encoded by the
shipper's own ``freeze_batch`` and compressed as the shipper would for that server (gzip for 18.16), all
before the clock starts; then one ``requests`` session POSTs the bodies one after the other with the
shipper's URL parameters and headers (``wait_end_of_query=1``). Rows/s = rows / (first POST -> count()
after the last one). That is what the server takes from a client that costs nothing.

Subjects (the real processes, ``--max-rows-per-second 0``: the shipper's drain-rate limit, 200 000 rows/s
by default, is lifted so it cannot cap the measurement; other settings are the defaults):

* drain: a WAL holding N spans (written beforehand, ~143 spans per record as the client sends them), then
  ``python -m automagik_telemetry_agent shipper`` is started; time from spawning it to count() = N.
  Peak RSS of the shipper (VmRSS polled every 50 ms, and VmHWM).
* end to end: client processes (``AutomagikTelemetry``, each emitting as fast as its queue takes without
  drops) -> the ingest agent -> the shipper process -> rows visible; time from the first span to the last
  row visible. Client drops and the agent's peak RSS are reported.

Each measurement is repeated (default 3 times, interleaved) and the median is reported. When a target is
missed (or with ``--profile always``) one more drain runs under py-spy (``/tmp/pyspy/bin/py-spy`` or
``py-spy`` on the PATH) and the report shows where the shipper's time went.

    .venv/bin/python bench/bench_shipper.py            # ~2 min
    .venv/bin/python bench/bench_shipper.py --quick    # ~45 s

ClickHouse: a private ClickHouse 18.16 server (``tests/clickhouse_server.py``), or the server named by
``AUTOMAGIK_TELEMETRY_TEST_CLICKHOUSE_URL`` (user ``default`` without password; the benchmark creates
and drops databases called ``bench_shipper_*``).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import multiprocessing as mp
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from _harness import (
    HTTP_SPAN_SHAPES,
    ROOT,
    Agent,
    CpuMeter,
    agent_env,
    machine_line,
    proc_kb,
    process_cpu_seconds,
    protocol,
    terminate_process,
    tree_cpu_seconds,
)
from bench_ingest import build_message, resource_line

from automagik_telemetry.transport import compact_resource_line
from automagik_telemetry_agent.clickhouse.http import ClickHouseHttpSink
from automagik_telemetry_agent.clickhouse.schema import apply, pick_profile
from automagik_telemetry_agent.shipper.batch import freeze_batch
from automagik_telemetry_agent.shipper.options import ShipperOptions
from automagik_telemetry_agent.wal import WalEntry, WalOptions, WalReader, WalWriter

TARGET_E2E_RATIO = 0.35  # issue 15 (was 0.25)
TARGET_DRAIN_RATIO = 0.6  # issue 15 (was 0.5)
TARGET_RSS_MB = 150.0
TABLE = "traces"
POLL_S = 0.05
RESULT_TIMEOUT_S = 300.0
PYSPY_CANDIDATES = ("/tmp/pyspy/bin/py-spy", shutil.which("py-spy") or "")
CLIENT_SPANS = [
    (f"{method} {route}", {"http.method": method, "http.route": route, "http.status_code": status})
    for method, route, status in HTTP_SPAN_SHAPES
]


# ------------------------------------------------------------------------------------------ ClickHouse
def start_clickhouse() -> Any:
    """The private 18.16 server of the tests (started), or the external one named by the environment."""
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from clickhouse_server import EXTERNAL_URL_ENV, ClickHouseServer, ExternalClickHouse

    url = os.environ.get(EXTERNAL_URL_ENV)
    server = ExternalClickHouse(url) if url else ClickHouseServer()
    return server.start()


class Databases:
    """One fresh database (with the traces table, via ``schema.apply``) per measurement."""

    def __init__(self, ch: Any) -> None:
        self.ch = ch
        self.prefix = f"bench_shipper_{os.getpid()}_{int(time.time()) % 100000}"
        self.made: list[str] = []

    def new(self, label: str) -> str:
        name = f"{self.prefix}_{label}_{len(self.made)}"
        apply(self.ch.query, pick_profile(self.ch.version), name, TABLE, 0)
        self.made.append(name)
        return name

    def count(self, database: str, table: str = TABLE) -> int:
        return int(self.ch.query(f"SELECT count() FROM {database}.{table}").strip())

    def drop_all(self) -> None:
        for name in self.made:
            with contextlib.suppress(Exception):
                self.ch.query(f"DROP DATABASE IF EXISTS {name}")


def server_cpu(ch: Any) -> float | None:
    """CPU seconds of our own server process (None for an external server)."""
    proc = getattr(ch, "proc", None)
    return process_cpu_seconds(proc.pid) if proc is not None else None


# ------------------------------------------------------------------------------------------ processes
def clean_env() -> dict[str, str]:
    """The agent environment without AUTOMAGIK_TELEMETRY_* settings (nothing on the host leaks in)."""
    return {k: v for k, v in agent_env().items() if not k.startswith("AUTOMAGIK_TELEMETRY_")}


class ShipperProcess:
    """``python -m automagik_telemetry_agent shipper`` on a WAL directory; stderr to ``shipper.log``."""

    def __init__(self, workdir: str, wal_dir: str, url: str, database: str) -> None:
        self.log_path = os.path.join(workdir, "shipper.log")
        self.args = [
            sys.executable,
            "-m",
            "automagik_telemetry_agent",
            "shipper",
            "--wal-dir",
            wal_dir,
            "--clickhouse-endpoint",
            url,
            "--database",
            database,
            "--table",
            TABLE,
            "--max-rows-per-second",
            "0",
            "--log-level",
            "info",
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.spawned = 0.0
        self.ready_at: float | None = None
        self.ready_cpu_s = 0.0  # CPU time spent by "ready" (interpreter start, imports, detection)
        self.returncode: int | None = None
        self.peak_rss_kb = 0
        self.peak_anon_kb = 0  # RssAnon: the process's own memory (VmRSS also counts mapped files)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.spawned = time.monotonic()
            self.proc = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=clean_env(),
                cwd=os.path.dirname(self.log_path),
            )

    def poll(self) -> None:
        """Called every tick: notice "ready", sample VmRSS, fail loudly if the process died."""
        assert self.proc is not None
        self.peak_rss_kb = max(self.peak_rss_kb, proc_kb(self.pid, "VmRSS"))
        self.peak_anon_kb = max(self.peak_anon_kb, proc_kb(self.pid, "RssAnon"))
        if self.ready_at is None and b"ready" in Path(self.log_path).read_bytes().splitlines():
            self.ready_at = time.monotonic()
            self.ready_cpu_s = self.cpu_seconds()
        if self.proc.poll() is not None:
            raise RuntimeError(f"the shipper exited with {self.proc.returncode}: {self.log_text()[-3000:]}")

    def hwm_kb(self) -> int:
        return proc_kb(self.pid, "VmHWM")

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)

    def stop(self) -> int | None:
        if self.proc is None or self.returncode is not None:
            return self.returncode
        self.returncode = terminate_process(self.proc)
        return self.returncode

    def log_text(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    def final_stats(self) -> dict[str, Any]:
        """The counters of the "shipper stopped: {...}" lines it logs on exit (one per signal: traces,
        logs, metrics), numbers summed over the signals."""
        total: dict[str, Any] = {}
        for line in self.log_text().splitlines():
            if "shipper stopped: " in line:
                for key, value in ast.literal_eval(line.split("shipper stopped: ", 1)[1]).items():
                    if type(value) in (int, float) and type(total.get(key, 0)) in (int, float):
                        total[key] = total.get(key, 0) + value
                    else:
                        total.setdefault(key, value)
        return total


def problems_of(shipper: ShipperProcess, stats: dict[str, Any], rows: int) -> list[str]:
    problems = []
    if shipper.returncode != 0:
        problems.append(f"shipper exit code {shipper.returncode}")
    if stats.get("rows") != rows:
        problems.append(f"shipper stats say {stats.get('rows')} rows shipped, expected {rows}")
    for key in ("dead_lettered", "retries_transient", "retries_config", "bisect_requests"):
        if stats.get(key):
            problems.append(f"shipper {key} = {stats[key]}")
    return problems


# ------------------------------------------------------------------------------------------ the WAL
@dataclass
class Backlog:
    """A pristine WAL (copied for every drain) and how the shipper will cut it into batches."""

    wal_dir: str
    records: int
    spans: int
    nbytes: int  # payload bytes
    batches: int
    table: str = TABLE  # where its rows go: traces, or logs for a backlog of log records


def compact_span(otlp_line: bytes) -> bytes:
    """The compact spelling of one of ``span_line``'s OTLP spans (docs/protocol.md, "Compact span lines"):
    what our client writes to an agent that reads them. The shipper stores the same row from it."""
    span = orjson.loads(otlp_line)

    def flat(attributes: list[dict[str, Any]]) -> dict[str, Any]:
        out = {}
        for kv in attributes:
            ((kind, value),) = kv["value"].items()
            out[kv["key"]] = int(value) if kind == "intValue" else value
        return out

    status = span.get("status") or {}
    events = [[e["name"], e["timeUnixNano"], flat(e.get("attributes", []))] for e in span.get("events") or []]
    return orjson.dumps(
        [
            span["traceId"],
            span["spanId"],
            span["parentSpanId"],
            span["name"],
            span["kind"],
            span["startTimeUnixNano"],
            span["endTimeUnixNano"],
            flat(span["attributes"]),
            status.get("code", 0),
            status.get("message", ""),
            events or 0,
        ],
        option=orjson.OPT_APPEND_NEWLINE,
    )


def backlog_records(rng: random.Random, compact: bool) -> Iterator[tuple[bytes, int]]:
    """(payload, spans) of WAL records as a client sends them: a resource line and spans up to 64 KiB."""
    resources = [resource_line(sender) for sender in range(4)]
    pending: list[bytes] = []
    record = 0
    while True:
        resource = resources[record % len(resources)]
        message, count = build_message(rng, resource)
        payload = bytes(message[protocol.HEADER_SIZE :])
        if not compact:
            record += 1
            yield payload, count
            continue
        head = compact_resource_line(resource)
        pending += [compact_span(line) for line in payload.split(b"\n")[1:-1]]
        size = len(head)
        for i, line in enumerate(pending):
            if size + len(line) > protocol.MAX_PAYLOAD_SIZE:
                record += 1
                yield head + b"".join(pending[:i]), i
                pending = pending[i:]
                break
            size += len(line)


def log_records(rng: random.Random) -> Iterator[tuple[bytes, int]]:
    """(payload, records) of WAL records of log records as our client sends them (``track_log``'s lines:
    a message, a severity, two attributes) behind the same resource lines, up to 64 KiB each."""
    from automagik_telemetry.logs import LogRecord

    resources = [resource_line(sender) for sender in range(4)]
    record = 0
    while True:
        resource = resources[record % len(resources)]
        lines, size = [], len(resource)
        while True:
            status = rng.choice((200, 200, 201, 404, 500))
            log = LogRecord(
                f"request {rng.getrandbits(32):08x} done in {rng.randrange(1, 900)} ms",
                17 if status >= 500 else 9,
                "ERROR" if status >= 500 else "INFO",
                {"http.route": rng.choice(("/api/items", "/api/cart", "/healthz")), "http.status_code": status},
            )
            line = log.to_line(4096)
            if size + len(line) > protocol.MAX_PAYLOAD_SIZE:
                break
            lines.append(line)
            size += len(line)
        record += 1
        yield resource + b"".join(lines), len(lines)


def write_backlog(
    wal_dir: str, target_spans: int, options: ShipperOptions, compact: bool = False, logs: bool = False
) -> Backlog:
    """Records like the agent stores them (resource line + spans of ~450 bytes, 64 KiB messages; with
    ``compact``, the same spans as compact lines of ~200 bytes, more per message), until at least
    ``target_spans`` and the last batch is full (no partial batch waiting batch_wait). With ``logs``, log
    records instead of spans (record kind 2, for the ``logs`` table)."""
    rng = random.Random(7)
    writer = WalWriter(wal_dir, WalOptions(min_free_bytes=0)).open()
    records = spans = nbytes = batches = 0
    batch_items = batch_bytes = 0
    kind = 2 if logs else 1
    try:
        for payload, count in log_records(rng) if logs else backlog_records(rng, compact):
            writer.append(payload, count, kind)
            records += 1
            spans += count
            nbytes += len(payload)
            batch_items += count
            batch_bytes += len(payload)
            if batch_items >= options.batch_rows or batch_bytes >= options.batch_bytes:  # as Shipper._collect
                batches += 1
                batch_items = batch_bytes = 0
                if spans >= target_spans:
                    break
        writer.flush()
        writer.sync()
    finally:
        writer.close()
    return Backlog(wal_dir, records, spans, nbytes, batches, "logs" if logs else TABLE)


def collect(reader: WalReader, options: ShipperOptions) -> list[WalEntry]:
    """One batch's records, with the same limits as ``Shipper._collect`` (no waiting: the WAL is complete)."""
    entries: list[WalEntry] = []
    items = size = 0
    while items < options.batch_rows and size < options.batch_bytes:
        got = reader.read(
            max_records=1_000_000,
            max_bytes=max(1, options.batch_bytes - size),
            max_items=max(1, options.batch_rows - items),
        )
        if not got:
            break
        entries += got
        items += sum(e.count for e in got)
        size += sum(len(e.payload) for e in got)
    return entries


@dataclass
class Prepared:
    bodies: list[tuple[bytes, int]]  # (compressed body, rows)
    encoding: str
    raw_bytes: int
    freeze_s: float  # CPU seconds of freeze_batch (transform + encode) for all rows
    compress_s: float

    @property
    def rows(self) -> int:
        return sum(rows for _, rows in self.bodies)

    @property
    def sent_bytes(self) -> int:
        return sum(len(body) for body, _ in self.bodies)


def prepare_reference(backlog: Backlog, sink: ClickHouseHttpSink, options: ShipperOptions) -> Prepared:
    """The backlog's batches, transformed, encoded and compressed exactly as the shipper does."""
    assert sink.profile is not None
    reader = WalReader(backlog.wal_dir)
    bodies: list[tuple[bytes, int]] = []
    encoding, raw, freeze_s, compress_s = "none", 0, 0.0, 0.0
    try:
        while entries := collect(reader, options):
            t0 = time.process_time()
            batch = freeze_batch(entries, sink.profile, "bench")
            t1 = time.process_time()
            encoding = sink.choose_encoding(len(batch.body))
            bodies.append((sink.compress(batch.body, encoding), batch.rows))
            freeze_s += t1 - t0
            compress_s += time.process_time() - t1
            raw += len(batch.body)
    finally:
        reader.close()
    return Prepared(bodies, encoding, raw, freeze_s, compress_s)


# ------------------------------------------------------------------------------------------ runs
@dataclass
class Run:
    seconds: float
    rows: int
    shipper_cpu_s: float | None = None  # the sending side (shipper process; None for the reference)
    server_cpu_s: float | None = None
    shipper_rss_mb: float | None = None  # peak (max of the polled VmRSS and the final VmHWM)
    shipper_anon_mb: float | None = None  # peak of the polled RssAnon
    agent_rss_mb: float | None = None
    startup_s: float | None = None  # spawn -> "ready" line of the shipper
    startup_cpu_s: float = 0.0  # the shipper's CPU time by "ready" (included in shipper_cpu_s)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds


def run_reference(ch: Any, dbs: Databases, prepared: Prepared) -> Run:
    database = dbs.new("ref")
    sink = ClickHouseHttpSink(ch.url, database, TABLE, read_timeout=120.0)
    try:
        sink.detect()
        params = sink.insert_params(None)
        headers = {"Content-Type": "application/x-ndjson"}
        if prepared.encoding != "none":
            headers["Content-Encoding"] = prepared.encoding
        url = sink.endpoint + "/"
        cpu0 = server_cpu(ch)
        start = time.monotonic()
        for body, _rows in prepared.bodies:
            r = sink.session.post(url, params=params, data=body, headers=headers, timeout=sink.timeout)
            if r.status_code != 200 or r.content.startswith(b"Code: "):
                raise RuntimeError(f"reference insert failed: HTTP {r.status_code} {r.text[:500]}")
        rows = dbs.count(database)
        seconds = time.monotonic() - start
        cpu1 = server_cpu(ch)
    finally:
        sink.close()
    if rows != prepared.rows:
        raise RuntimeError(f"reference: {rows} rows visible, {prepared.rows} sent")
    return Run(seconds, rows, server_cpu_s=None if cpu0 is None else cpu1 - cpu0)


def wait_for_rows(
    dbs: Databases,
    database: str,
    expected: int,
    shipper: ShipperProcess,
    others: tuple[int, ...] = (),
    table: str = TABLE,
) -> tuple[float, dict[int, int]]:
    """Poll count() and the processes every 50 ms until ``expected`` rows are visible; (time, peak RSS)."""
    peaks = dict.fromkeys(others, 0)
    deadline = time.monotonic() + RESULT_TIMEOUT_S
    while True:
        shipper.poll()
        for pid in others:
            peaks[pid] = max(peaks[pid], proc_kb(pid, "VmRSS"))
        if dbs.count(database, table) >= expected:
            return time.monotonic(), peaks
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"only {dbs.count(database, table)} of {expected} rows visible after "
                f"{RESULT_TIMEOUT_S}s: {shipper.log_text()[-2000:]}"
            )
        time.sleep(POLL_S)


def run_drain(ch: Any, dbs: Databases, backlog: Backlog) -> Run:
    database = dbs.new("drain")
    workdir = tempfile.mkdtemp(prefix="bench-shipper-drain-")
    try:
        wal_dir = os.path.join(workdir, "wal")
        shutil.copytree(backlog.wal_dir, wal_dir)
        shipper = ShipperProcess(workdir, wal_dir, ch.url, database)
        cpu0 = server_cpu(ch)
        shipper.start()
        try:
            end, _ = wait_for_rows(dbs, database, backlog.spans, shipper, table=backlog.table)
            cpu1 = server_cpu(ch)
            shipper_cpu = shipper.cpu_seconds()
            hwm = shipper.hwm_kb()
        finally:
            shipper.stop()
        stats = shipper.final_stats()
        problems = problems_of(shipper, stats, backlog.spans)
        rows = dbs.count(database, backlog.table)
        if rows != backlog.spans:
            problems.append(f"{rows} rows in the table, {backlog.spans} in the WAL")
        if problems:
            raise RuntimeError(f"drain: {'; '.join(problems)}: {shipper.log_text()[-2000:]}")
        startup = None if shipper.ready_at is None else shipper.ready_at - shipper.spawned
        return Run(
            end - shipper.spawned,
            rows,
            shipper_cpu,
            None if cpu0 is None else cpu1 - cpu0,
            max(shipper.peak_rss_kb, hwm) / 1024,
            shipper.peak_anon_kb / 1024,
            startup_s=startup,
            startup_cpu_s=shipper.ready_cpu_s,
            extra={
                "batches": stats.get("batches"),
                "requests": stats.get("requests"),
                "bytes_raw": stats.get("bytes_raw"),
                "bytes_compressed": stats.get("bytes_compressed"),
            },
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# ------------------------------------------------------------------------------------------ end to end
def client_main(socket_path: str, n_spans: int, go: Any, pipe: Any) -> None:
    """One application process: the real client, spans as fast as its queue takes them without drops."""
    result: dict[str, Any] = {"error": ""}
    try:
        from automagik_telemetry import AutomagikTelemetry, TelemetryConfig

        client = AutomagikTelemetry(
            config=TelemetryConfig(
                project_name="bench-service", version="1.4.2", socket_path=socket_path, environment="production"
            )
        )
        span, stats = client.span, client.stats
        high = client.config.max_queue_size // 2
        throttled = 0
        pipe.send("ready")
        go.wait()
        start = time.monotonic()
        cpu0 = time.process_time()  # every thread of this process: the hot path and the sender thread
        for i in range(n_spans):
            name, attributes = CLIENT_SPANS[i % 5]
            with span(name, attributes=attributes):
                pass
            if i & 255 == 255:  # keep the queue (10 000) from overflowing: wait for the sender thread
                while stats()["queue_depth"] > high:
                    throttled += 1
                    time.sleep(0.001)
        emitted = time.monotonic()
        flushed = client.flush(timeout=RESULT_TIMEOUT_S)
        cpu_s = time.process_time() - cpu0  # the throttle's sleeps cost no CPU
        result.update(
            client.stats(),
            flushed=flushed,
            start=start,
            emitted=emitted,
            acked_at=time.monotonic(),
            throttled=throttled,
            cpu_s=cpu_s,
        )
        client.shutdown()
    except Exception as exc:
        result["error"] = repr(exc)
    pipe.send(result)


def run_e2e(ch: Any, dbs: Databases, n_clients: int, spans_per_client: int) -> Run:
    database = dbs.new("e2e")
    workdir = tempfile.mkdtemp(prefix="bench-shipper-e2e-")
    ctx = mp.get_context("fork")
    procs: list[Any] = []
    try:
        with Agent(workdir, extra_args=["--sink", "none"]) as agent:  # ingest only: the shipper is ours
            assert agent.proc is not None
            shipper = ShipperProcess(workdir, agent.wal_dir, ch.url, database)
            shipper.start()
            try:
                while shipper.ready_at is None:
                    shipper.poll()
                    time.sleep(0.01)
                go = ctx.Event()
                pipes = []
                for _ in range(n_clients):
                    parent_end, child_end = ctx.Pipe()
                    proc = ctx.Process(
                        target=client_main, daemon=True, args=(agent.socket_path, spans_per_client, go, child_end)
                    )
                    proc.start()
                    procs.append(proc)
                    pipes.append(parent_end)
                for pipe in pipes:
                    if not pipe.poll(60) or pipe.recv() != "ready":
                        raise RuntimeError("a client process did not start")
                cpu0, shipper_cpu0, agent_cpu0 = server_cpu(ch), shipper.cpu_seconds(), tree_cpu_seconds(agent.proc.pid)
                shipper.peak_rss_kb = shipper.peak_anon_kb = 0
                start = time.monotonic()
                go.set()
                results: list[dict[str, Any]] = []
                pending = list(pipes)
                agent_peak = 0
                backlog_at_acked = 0
                while len(results) < n_clients:  # rows become visible meanwhile; watch memory
                    shipper.poll()
                    agent_peak = max(agent_peak, proc_kb(agent.proc.pid, "VmRSS"))
                    for pipe in [p for p in pending if p.poll()]:
                        results.append(pipe.recv())
                        pending.remove(pipe)
                    if time.monotonic() - start > RESULT_TIMEOUT_S:
                        raise TimeoutError("the clients did not finish")
                    time.sleep(POLL_S)
                errors = [r["error"] for r in results if r["error"]]
                if errors:
                    raise RuntimeError(f"client error: {errors[0]}")
                acked = sum(r["acked_records"] for r in results)
                backlog_at_acked = acked - dbs.count(database)
                end, peaks = wait_for_rows(dbs, database, acked, shipper, (agent.proc.pid,))
                cpu1, shipper_cpu = server_cpu(ch), shipper.cpu_seconds() - shipper_cpu0
                agent_cpu = tree_cpu_seconds(agent.proc.pid) - agent_cpu0
                agent_peak = max(agent_peak, peaks[agent.proc.pid], proc_kb(agent.proc.pid, "VmHWM"))
                shipper_peak = max(shipper.peak_rss_kb, shipper.hwm_kb())
                agent_stats = agent.stats()
            finally:
                shipper.stop()
                for proc in procs:
                    proc.join(10)
        stats = shipper.final_stats()
        problems = problems_of(shipper, stats, acked)
        if agent.returncode != 0:
            problems.append(f"agent exit code {agent.returncode}")
        if agent_stats["items_received"] != acked:
            problems.append(f"agent received {agent_stats['items_received']} spans, clients saw {acked} acked")
        if problems:
            raise RuntimeError(f"end to end: {'; '.join(problems)}: {shipper.log_text()[-2000:]}")
        emitted = max(r["emitted"] for r in results) - start
        client_totals = Counter()
        for r in results:
            client_totals.update(
                {
                    k: r[k]
                    for k in (
                        "enqueued_records",
                        "acked_records",
                        "dropped_queue_full",
                        "rejected_records",
                        "unconfirmed_records",
                        "internal_errors",
                        "throttled",
                    )
                }
            )
        extra = {
            "clients": dict(client_totals),
            "flushed": all(r["flushed"] for r in results),
            "emit_s": emitted,
            "acked_s": max(r["acked_at"] for r in results) - start,
            "backlog_at_acked": backlog_at_acked,
            "batches": stats.get("batches"),
            "agent_cpu_s": agent_cpu,  # supervisor + ingest (the shipper is ours, counted apart)
            "client_cpu_s": sum(r["cpu_s"] for r in results),
        }
        return Run(
            end - start,
            acked,
            shipper_cpu,
            None if cpu0 is None else cpu1 - cpu0,
            shipper_peak / 1024,
            shipper.peak_anon_kb / 1024,
            agent_peak / 1024,
            extra=extra,
        )
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        shutil.rmtree(workdir, ignore_errors=True)


# ------------------------------------------------------------------------------------------ profile
#: (label, function names): a sample counts for the first group (in this order) with a function on its stack.
PROFILE_GROUPS = (
    (
        "transform: transform_span / parse_resource",
        ("transform_span", "parse_resource", "render_attributes", "render_flat_attributes", "_compact_span"),
    ),
    ("encode + compress: gzip", ("compress",)),
    ("HTTP POST + waiting for ClickHouse", ("insert", "post", "request", "send")),
    ("freeze_batch itself (orjson.dumps per row, split, join)", ("freeze_batch",)),
    ("reading the WAL", ("read", "_collect")),
    ("cursor commit / inflight.json", ("commit", "_write_inflight", "write_atomic", "write_cursor")),
)


def find_pyspy() -> str | None:
    return next((p for p in PYSPY_CANDIDATES if p and os.access(p, os.X_OK)), None)


def run_profile(ch: Any, dbs: Databases, backlog: Backlog, pyspy: str, seconds: float) -> str:
    """One extra drain with py-spy attached (100 Hz, every thread, samples of running code only): where the
    shipper's CPU time goes."""
    database = dbs.new("profile")
    workdir = tempfile.mkdtemp(prefix="bench-shipper-profile-")
    try:
        wal_dir = os.path.join(workdir, "wal")
        shutil.copytree(backlog.wal_dir, wal_dir)
        out = os.path.join(workdir, "pyspy.txt")
        shipper = ShipperProcess(workdir, wal_dir, ch.url, database)
        shipper.start()
        try:
            while shipper.ready_at is None:
                shipper.poll()
                time.sleep(0.01)
            spy = subprocess.run(
                [
                    pyspy,
                    "record",
                    "--pid",
                    str(shipper.pid),
                    "--rate",
                    "100",
                    "--nonblocking",
                    "--format",
                    "raw",
                    "--duration",
                    str(max(1, round(seconds))),
                    "--output",
                    out,
                ],
                capture_output=True,
                text=True,
                check=False,
            )
        finally:
            shipper.stop()
        if spy.returncode != 0 or not os.path.exists(out):
            return f"py-spy failed ({spy.returncode}): {(spy.stderr or spy.stdout).strip()[-500:]}"
        return summarize_profile(Path(out).read_text())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def summarize_profile(raw: str) -> str:
    """py-spy's raw (collapsed) stacks -> share of the shipper's CPU samples (any thread in our code) per group,
    and the top leaf lines."""
    groups: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit() or "automagik_telemetry_agent/" not in stack:
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if " (" in f]
        names = [f.split(" (", 1)[0].rsplit(".", 1)[-1] for f in frames]  # "Session.post" -> "post"
        total += count
        leaves[frames[-1] if frames else stack] += count
        for label, functions in PROFILE_GROUPS:
            if any(name in functions for name in reversed(names)):
                groups[label] += count
                break
        else:
            groups["other (polling, reports, logging, ...)"] += count
    if not total:
        return "py-spy recorded no samples of the shipper loop"
    lines = [f"  {100 * n / total:5.1f}%  {label}" for label, n in groups.most_common()]
    lines.append("  top leaf frames:")
    lines += [f"  {100 * n / total:5.1f}%    {frame}" for frame, n in leaves.most_common(8)]
    return f"{total} samples (CPU: running threads only)\n" + "\n".join(lines)


# ------------------------------------------------------------------------------------------ report
def median_run(runs: list[Run]) -> Run:
    ordered = sorted(runs, key=lambda r: r.rows_per_s)
    return ordered[len(ordered) // 2]


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def _us(seconds: float | None, n: int) -> str:
    return "-" if seconds is None or not n else f"{1e6 * seconds / n:.1f}"


def report(
    args: argparse.Namespace,
    version: str,
    backlog: Backlog,
    prepared: Prepared,
    runs: dict[str, list[Run]],
    profile: str | None,
    compact_backlog: Backlog,
    prepared_compact: Prepared,
    log_backlog: Backlog,
) -> None:
    ref = median_run(runs["reference"])
    print(machine_line())
    print(f"ClickHouse {version} ({'external ' + args.external if args.external else 'private server, same machine'})")
    print(
        f"rows: OTLP/JSON spans of ~{backlog.nbytes / backlog.spans:.0f} bytes in the WAL "
        f"({backlog.spans / backlog.records:.0f} per record), compact span lines of "
        f"~{compact_backlog.nbytes / compact_backlog.spans:.0f} bytes "
        f"({compact_backlog.spans / compact_backlog.records:.0f} per record); "
        f"{prepared.raw_bytes / prepared.rows:.0f} bytes per JSONEachRow row, {prepared.encoding} "
        f"{prepared.raw_bytes / max(1, prepared.sent_bytes):.1f}:1"
    )
    print(
        f"backlog: {backlog.spans:,} spans, {backlog.records} records, {backlog.nbytes / 1e6:.0f} MB, "
        f"{backlog.batches} batches of ~{backlog.spans / backlog.batches:,.0f} rows (shipper defaults: 20 000 rows "
        f"or 8 MiB of WAL bytes per INSERT); compact: {compact_backlog.spans:,} spans, {compact_backlog.records} "
        f"records, {compact_backlog.nbytes / 1e6:.0f} MB; logs: {log_backlog.spans:,} log records of "
        f"~{log_backlog.nbytes / log_backlog.spans:.0f} bytes, {log_backlog.records} records (no reference: "
        "the ratio column is for spans)"
    )
    print(
        f"end to end: {args.clients} client processes x {args.client_spans:,} spans; shipper "
        "--max-rows-per-second 0 (limit lifted), other settings default"
    )
    print(f"median of {args.repeats} runs each (the run with the median rows/s)\n")
    print(
        f"{'variant':<46}{'rows/s':>10}{'x ref':>7}{'seconds':>9}{'rows':>10}{'ship CPU s':>11}"
        f"{'ship us/row':>12}{'CH us/row':>10}{'peak RSS MB':>12}"
    )
    labels = {
        "reference": "reference: direct POST of pre-encoded bodies",
        "drain": "drain: shipper, WAL of OTLP/JSON span lines",
        "drain_compact": "drain: shipper, WAL of compact span lines",
        "drain_logs": "drain: shipper, WAL of log records (logs)",
        "e2e": f"end to end: {args.clients} clients -> agent -> shipper",
    }
    for name, variant_runs in runs.items():
        run = median_run(variant_runs)
        steady = None if run.shipper_cpu_s is None else run.shipper_cpu_s - run.startup_cpu_s
        ratio = "-" if name == "drain_logs" else f"{run.rows_per_s / ref.rows_per_s:.2f}"  # other rows: no ratio
        print(
            f"{labels[name]:<46}{run.rows_per_s:>10,.0f}{ratio:>7}"
            f"{run.seconds:>9.2f}{run.rows:>10,}{_fmt(run.shipper_cpu_s, '.2f'):>11}{_us(steady, run.rows):>12}"
            f"{_us(run.server_cpu_s, run.rows):>10}{_fmt(run.shipper_rss_mb, '.0f'):>12}"
        )
    for name, variant_runs in runs.items():
        each = ", ".join(f"{r.rows_per_s / 1e3:,.1f}k" for r in variant_runs)
        print(f"  {name} runs: {each} rows/s")
    print(
        "(ship CPU s: CPU time of the shipper process during the run, start-up included; ship us/row: the same "
        "without the CPU it spent before 'ready' (interpreter, imports, server detection); CH us/row: the "
        "server's CPU time per row)"
    )
    for label, prep in (("OTLP/JSON lines", prepared), ("compact lines", prepared_compact)):
        n = prep.rows
        print(
            f"preparing the reference from {label} in this process: {1e6 * prep.freeze_s / n:.1f} us/row in "
            f"freeze_batch (transform + orjson), {1e6 * prep.compress_s / n:.1f} us/row for {prep.encoding}"
        )
    if "e2e" in runs:
        e2e = median_run(runs["e2e"])
        n = e2e.rows
        agent_s = e2e.extra["agent_cpu_s"]
        ship_s = e2e.shipper_cpu_s or 0.0
        print(
            f"end to end, CPU per span: application processes (all threads) {_us(e2e.extra['client_cpu_s'], n)} us; "
            f"agent: supervisor + ingest {_us(agent_s, n)} us, shipper {_us(ship_s, n)} us, together "
            f"{_us(agent_s + ship_s, n)} us; ClickHouse server {_us(e2e.server_cpu_s, n)} us/row"
        )
    drain = median_run(runs["drain"])
    print(
        f"drain: shipper start-up (spawn -> ready) {_fmt(drain.startup_s, '.2f')} s, included; "
        f"{drain.extra.get('requests')} INSERTs for {drain.extra.get('batches')} batches; shipper peak RSS "
        f"{drain.shipper_rss_mb:.0f} MB, of which anonymous (RssAnon) {drain.shipper_anon_mb:.0f} MB"
    )
    if "e2e" in runs:
        e2e = median_run(runs["e2e"])
        c = e2e.extra["clients"]
        print(
            f"end to end: clients emitted for {e2e.extra['emit_s']:.2f} s (all acked by the agent at "
            f"{e2e.extra['acked_s']:.2f} s, {e2e.extra['backlog_at_acked']:,} rows not yet visible then), last row "
            f"visible at {e2e.seconds:.2f} s; clients: {c['enqueued_records']:,} enqueued, {c['acked_records']:,} "
            f"acked, {c['dropped_queue_full']} dropped (queue full), {c['rejected_records']} rejected, "
            f"{c['unconfirmed_records']} unconfirmed, {c['internal_errors']} internal errors, "
            f"flush {'ok' if e2e.extra['flushed'] else 'FAILED'}, throttled {c['throttled']} x 1 ms; "
            f"agent peak RSS {e2e.agent_rss_mb:.0f} MB, shipper peak RSS {e2e.shipper_rss_mb:.0f} MB"
        )
    print()
    drain_ratio = drain.rows_per_s / ref.rows_per_s
    rss = max(r.shipper_rss_mb or 0 for rs in runs.values() for r in rs)
    agent_rss = max((r.agent_rss_mb or 0 for r in runs.get("e2e", [])), default=0.0)
    targets = []
    if "e2e" in runs:
        e2e_ratio = median_run(runs["e2e"]).rows_per_s / ref.rows_per_s
        targets.append(
            f"end to end >= {TARGET_E2E_RATIO}x -> {e2e_ratio:.2f}x {_verdict(e2e_ratio >= TARGET_E2E_RATIO)}"
        )
    targets.append(
        f"drain >= {TARGET_DRAIN_RATIO}x -> {drain_ratio:.2f}x {_verdict(drain_ratio >= TARGET_DRAIN_RATIO)}"
    )
    compact_ratio = median_run(runs["drain_compact"]).rows_per_s / ref.rows_per_s
    targets.append(
        f"drain of compact lines >= {TARGET_DRAIN_RATIO}x -> {compact_ratio:.2f}x "
        f"{_verdict(compact_ratio >= TARGET_DRAIN_RATIO)}"
    )
    targets.append(
        f"shipper RSS <= {TARGET_RSS_MB:.0f} MB -> {rss:.0f} MB (max of all runs) {_verdict(rss <= TARGET_RSS_MB)}"
    )
    if agent_rss:
        targets.append(
            f"agent RSS <= {TARGET_RSS_MB:.0f} MB -> {agent_rss:.0f} MB {_verdict(agent_rss <= TARGET_RSS_MB)}"
        )
    print("targets: " + "; ".join(targets))
    if profile:
        print("\nprofile of the shipper during a drain (py-spy, all threads, share of CPU samples):")
        print(profile)


# ------------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--spans", type=int, default=500_000, help="spans in the backlog (rounded up to whole batches; default 500 000)"
    )
    parser.add_argument("--clients", type=int, default=2, help="client processes end to end (default 2)")
    parser.add_argument("--client-spans", type=int, default=150_000, help="spans per client process")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions; the median is reported")
    parser.add_argument("--skip-e2e", action="store_true", help="only the reference and the drain")
    parser.add_argument(
        "--profile",
        choices=("auto", "always", "never"),
        default="auto",
        help="py-spy on one extra drain: when a target is missed (auto), always or never",
    )
    parser.add_argument("--quick", action="store_true", help="a ~45 s version (smaller backlog, fewer spans)")
    args = parser.parse_args(argv)
    if args.quick:
        args.spans = min(args.spans, 100_000)
        args.client_spans = min(args.client_spans, 25_000)
    args.external = os.environ.get("AUTOMAGIK_TELEMETRY_TEST_CLICKHOUSE_URL", "")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = ShipperOptions()  # the batch limits the shipper process runs with (defaults)
    meter = CpuMeter()
    scratch = tempfile.mkdtemp(prefix="bench-shipper-")
    ch = start_clickhouse()
    dbs = Databases(ch)
    profile: str | None = None
    try:
        version = ch.version
        backlog = write_backlog(os.path.join(scratch, "wal"), args.spans, options)
        compact_backlog = write_backlog(os.path.join(scratch, "wal-compact"), args.spans, options, compact=True)
        log_backlog = write_backlog(os.path.join(scratch, "wal-logs"), args.spans, options, logs=True)
        sink = ClickHouseHttpSink(ch.url, dbs.new("prep"), TABLE)
        sink.detect()
        prepared = prepare_reference(backlog, sink, options)
        prepared_compact = prepare_reference(compact_backlog, sink, options)
        sink.close()
        print(
            f"  prepared {prepared.rows:,} rows in {len(prepared.bodies)} bodies "
            f"({prepared.freeze_s + prepared.compress_s:.1f} CPU-s)",
            file=sys.stderr,
            flush=True,
        )
        runs: dict[str, list[Run]] = {"reference": [], "drain": [], "drain_compact": [], "drain_logs": []}
        if not args.skip_e2e:
            runs["e2e"] = []
        for rep in range(1, args.repeats + 1):
            runs["reference"].append(run_reference(ch, dbs, prepared))
            runs["drain"].append(run_drain(ch, dbs, backlog))
            runs["drain_compact"].append(run_drain(ch, dbs, compact_backlog))
            runs["drain_logs"].append(run_drain(ch, dbs, log_backlog))
            if not args.skip_e2e:
                runs["e2e"].append(run_e2e(ch, dbs, args.clients, args.client_spans))
            summary = ", ".join(f"{name} {r[-1].rows_per_s / 1e3:,.1f}k" for name, r in runs.items())
            print(f"  repetition {rep}/{args.repeats}: {summary} rows/s", file=sys.stderr, flush=True)
        ref = median_run(runs["reference"]).rows_per_s
        missed = median_run(runs["drain"]).rows_per_s < TARGET_DRAIN_RATIO * ref or (
            "e2e" in runs and median_run(runs["e2e"]).rows_per_s < TARGET_E2E_RATIO * ref
        )
        pyspy = find_pyspy()
        if args.profile == "always" or (args.profile == "auto" and missed):
            if pyspy is None:
                profile = "py-spy not found (/tmp/pyspy/bin/py-spy or on PATH): no profile"
            else:
                profile = run_profile(ch, dbs, backlog, pyspy, min(8.0, 0.6 * median_run(runs["drain"]).seconds))
    finally:
        dbs.drop_all()
        ch.close()
        shutil.rmtree(scratch, ignore_errors=True)
    report(args, version, backlog, prepared, runs, profile, compact_backlog, prepared_compact, log_backlog)
    print(meter.summary() + (" (the ClickHouse server is counted as this benchmark)" if not args.external else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
