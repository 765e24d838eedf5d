"""OTLP/HTTP protobuf ingest into the agent, beside the socket path, in the same run.

Workload: 2 sender processes, each exporting ``--requests`` requests of 512 spans (the OpenTelemetry
SDK's batch size) one after another on a keep-alive connection, as an SDK's batch span processor does:
the next request is sent when the previous one is answered. Such an exporter waits for the group commit
on every request (``wal.fsync_interval_ms``, 50 ms), so a second line lets each sender keep 4 requests
in flight on 4 connections (as exporters with concurrent exports do): that one is bound by CPU. Spans
look like HTTP server spans (name, kind, 1 event, 5 attributes); every request is different (a receiver
that deduplicates retries must not be fed the same body twice). The time runs from the release of the
senders to the last answer, and a 200 means durable in the WAL (``--fsync interval``: 50 ms group
commit), so it includes the wait for it.

Reference, same run, same spans: the socket path. The same requests decoded beforehand into the RECORDS
messages the receiver would write (one per ~64 KiB), sent by the same 2 processes over the agent's Unix
socket, waiting for the final ACK. The ratio OTLP/socket shows what HTTP and protobuf decoding cost.

Agent CPU per span: user + system time of the supervisor and all its children (ingest, otlp) over the
run, divided by the spans. ``--sink none``: shipping is measured by bench_shipper.py.

    .venv/bin/python bench/bench_otlp.py            # ~1 min
    .venv/bin/python bench/bench_otlp.py --quick    # ~15 s
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing as mp
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

from _harness import Agent, CpuMeter, free_port, machine_line, protocol, tree_cpu_seconds
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from automagik_telemetry_agent.ingest.otlp.export import messages
from automagik_telemetry_agent.ingest.otlp.proto import decode_protobuf
from automagik_telemetry_agent.ingest.otlp.signals import OtlpSignal

TARGET_SPANS_PER_S = 100_000
SENDERS = 2
SPANS_PER_REQUEST = 512
ROUTES = ("/api/items/{id}", "/api/users/{id}/orders", "/api/search", "/healthz", "/api/cart/{id}/checkout")
T0 = 1_700_000_000_000_000_000


def build_request(sender: int, n: int) -> bytes:
    rng = random.Random(sender * 1_000_003 + n)
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    for key, value in (("service.name", f"bench-{sender}"), ("host.name", "bench-host"), ("telemetry.sdk.name", "x")):
        rs.resource.attributes.add(key=key).value.string_value = value
    ss = rs.scope_spans.add()
    ss.scope.name, ss.scope.version = "opentelemetry.instrumentation.flask", "0.50b0"
    base = (sender << 40) | (n << 12)
    for i in range(SPANS_PER_REQUEST):
        span = ss.spans.add()
        span.trace_id = (base + i // 8 + 1).to_bytes(16, "big")
        span.span_id = (base + i + 1).to_bytes(8, "big")
        if i % 8:
            span.parent_span_id = (base + i - i % 8 + 1).to_bytes(8, "big")
        route = rng.choice(ROUTES)
        span.name, span.kind = f"GET {route}", 2
        span.start_time_unix_nano = T0 + base + i * 1000
        span.end_time_unix_nano = span.start_time_unix_nano + rng.randrange(50_000, 50_000_000)
        for key, value in (("http.method", "GET"), ("http.route", route), ("net.peer.ip", "10.0.0.7")):
            span.attributes.add(key=key).value.string_value = value
        span.attributes.add(key="http.status_code").value.int_value = rng.choice((200, 200, 201, 404, 500))
        span.attributes.add(key="http.response_content_length").value.int_value = rng.randrange(100, 90_000)
        event = span.events.add(name="request.received", time_unix_nano=span.start_time_unix_nano + 10)
        event.attributes.add(key="queue").value.string_value = "default"
    return request.SerializeToString()


# ------------------------------------------------------------------------------------------ senders
def otlp_sender(port: int, sender: int, requests: int, start: object, pipe: object, in_flight: int = 1) -> None:
    """``in_flight`` connections (threads), each exporting its share of the requests one after another."""
    bodies = [build_request(sender, n) for n in range(requests)]
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=60) for _ in range(in_flight)]
    for conn in conns:
        conn.connect()
    failures = [0] * in_flight

    def export(k: int) -> None:
        for body in bodies[k::in_flight]:
            conns[k].request("POST", "/v1/traces", body=body, headers={"Content-Type": "application/x-protobuf"})
            response = conns[k].getresponse()
            response.read()
            failures[k] += response.status != 200

    threads = [threading.Thread(target=export, args=(k,)) for k in range(in_flight)]
    pipe.send("built")  # type: ignore[attr-defined]
    start.wait()  # type: ignore[attr-defined]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pipe.send({"done": time.monotonic(), "failures": sum(failures)})  # type: ignore[attr-defined]


def socket_sender(path: str, sender: int, requests: int, start: object, pipe: object) -> None:
    payloads = []
    for n in range(requests):
        export = decode_protobuf(OtlpSignal.TRACES, build_request(sender, n))
        payloads += [(m.payload, m.count) for m in messages(export, f"{sender:016x}{n:016x}")]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.connect(path)
    pipe.send("built")  # type: ignore[attr-defined]
    start.wait()  # type: ignore[attr-defined]
    for seq, (payload, count) in enumerate(payloads, 1):
        sock.sendall(protocol.encode(protocol.MessageType.RECORDS, payload, seq=seq, count=count, kind=1))
    acked = 0
    while acked < len(payloads):
        header = protocol.decode_header(sock.recv(protocol.MAX_MESSAGE_SIZE))
        if header.type == protocol.MessageType.ACK:
            acked = header.seq
        elif header.type == protocol.MessageType.REJECT:
            raise RuntimeError(f"message {header.seq} rejected")
    pipe.send({"done": time.monotonic(), "failures": 0})  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------ runs
@dataclass
class Run:
    spans: int
    seconds: float
    agent_cpu_s: float

    @property
    def spans_per_s(self) -> float:
        return self.spans / self.seconds

    @property
    def cpu_us_per_span(self) -> float:
        return 1e6 * self.agent_cpu_s / self.spans


def run(kind: str, requests: int, in_flight: int = 1) -> Run:
    with tempfile.TemporaryDirectory(prefix="bench-otlp-") as workdir:
        port = free_port()
        agent = Agent(workdir, extra_args=["--otlp-listen", f"127.0.0.1:{port}" if kind == "otlp" else ""])
        with agent:
            if kind == "otlp":  # the receiver is ready shortly after the agent
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    try:
                        socket.create_connection(("127.0.0.1", port), 0.2).close()
                        break
                    except OSError:
                        time.sleep(0.02)
            ctx = mp.get_context("fork")
            start = ctx.Event()
            pipes, procs = [], []
            for s in range(SENDERS):
                parent, child = ctx.Pipe()
                target, where = (otlp_sender, port) if kind == "otlp" else (socket_sender, agent.socket_path)
                extra = (in_flight,) if kind == "otlp" else ()
                proc = ctx.Process(target=target, args=(where, s, requests, start, child, *extra))
                proc.start()
                pipes.append(parent)
                procs.append(proc)
            for p in pipes:
                assert p.poll(120) and p.recv() == "built"
            assert agent.proc is not None
            cpu0 = tree_cpu_seconds(agent.proc.pid)
            t0 = time.monotonic()
            start.set()
            results = []
            for p in pipes:
                assert p.poll(300), "a sender did not finish"
                results.append(p.recv())
            seconds = max(r["done"] for r in results) - t0
            cpu = tree_cpu_seconds(agent.proc.pid) - cpu0
            for proc in procs:
                proc.join(10)
            failures = sum(r["failures"] for r in results)
            spans = SENDERS * requests * SPANS_PER_REQUEST
            received = agent.stats()["items_received"]
            if failures or received != spans:
                raise RuntimeError(f"{kind}: {failures} requests failed, {received} of {spans} spans received")
    return Run(spans, seconds, cpu)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests of 512 spans per sender (200)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each path, interleaved; median (3)")
    parser.add_argument("--quick", action="store_true", help="--requests 40 --repeats 1")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.repeats = 40, 1
    print(machine_line())
    meter = CpuMeter()
    variants = {"socket": ("socket", 1), "otlp": ("otlp", 1), "otlp4": ("otlp", 4)}
    runs: dict[str, list[Run]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for name, (kind, in_flight) in variants.items():
            runs[name].append(run(kind, args.requests, in_flight))
    print(meter.summary())
    print(f"{SENDERS} senders x {args.requests} requests x {SPANS_PER_REQUEST} spans, durable (--fsync interval)\n")
    print(f"{'path':<34}{'spans/s':>12}{'agent CPU us/span':>20}{'ratio':>8}")
    median = {k: sorted(v, key=lambda r: r.spans_per_s)[len(v) // 2] for k, v in runs.items()}
    ref = median["socket"]
    labels = (
        ("socket", "socket (RECORDS, reference)"),
        ("otlp", "OTLP protobuf, 1 in flight/sender"),
        ("otlp4", "OTLP protobuf, 4 in flight/sender"),
    )
    for kind, label in labels:
        r = median[kind]
        print(f"{label:<34}{r.spans_per_s:>12,.0f}{r.cpu_us_per_span:>20.2f}{r.spans_per_s / ref.spans_per_s:>8.2f}")
    for name in ("otlp", "otlp4"):
        spread = [round(r.spans_per_s) for r in runs[name]]
        print(f"{name} runs (spans/s): {spread}; median {statistics.median(spread):,.0f}")
    met = max(median["otlp"].spans_per_s, median["otlp4"].spans_per_s) >= TARGET_SPANS_PER_S
    print(f"target: OTLP >= {TARGET_SPANS_PER_S:,} spans/s: {'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
