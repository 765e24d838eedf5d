"""Ingest throughput: spans/s from sender processes into the agent's WAL, durably acknowledged.

Reference: a bare single-thread SOCK_SEQPACKET read loop (accept, ``recv_into`` until every byte has
arrived, nothing else) receiving the same pre-built messages from the same sender processes.
Subject: the real agent process (``--fsync interval`` by default: 50 ms / 1 MiB group commit); the
senders wait for the ACK of their last message, so the time includes making everything durable.
Extra lines: the agent with ``--fsync always`` and ``--fsync off`` (same reference).

Each measurement is repeated (default 3 times, interleaved) and the median is reported.

    .venv/bin/python bench/bench_ingest.py            # ~1 min
    .venv/bin/python bench/bench_ingest.py --quick    # ~10 s
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import select
import selectors
import shutil
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from _harness import Agent, CpuMeter, machine_line, protocol

TARGET_SPANS_PER_S = 200_000
TARGET_RATIO = 0.8
DISTINCT_MESSAGES = 16  # per sender, cycled; the seq field is patched before each send
SEQ_OFFSET = 16  # of the header's seq field (protocol.HEADER)
SEQ_FIELD = struct.Struct("<Q")
RESULT_TIMEOUT_S = 120.0

METHODS = ("GET", "GET", "GET", "POST", "PUT", "DELETE")
ROUTES = ("/api/items/{id}", "/api/users/{id}/orders", "/api/search", "/healthz", "/api/cart/{id}/checkout")


# ------------------------------------------------------------------------------------------ messages
def _attribute(key: str, value: object) -> str:
    kind = "intValue" if isinstance(value, int) else "stringValue"
    encoded = value if isinstance(value, int) else f'"{value}"'
    return f'{{"key":"{key}","value":{{"{kind}":{encoded}}}}}'


def span_line(rng: random.Random, trace_id: int, parent_id: int, start_ns: int) -> bytes:
    """One OTLP-shaped span as the client writes it (compact JSON, same key order, ~420 bytes)."""
    method, route = rng.choice(METHODS), rng.choice(ROUTES)
    status = rng.choice((200, 200, 200, 201, 404, 500))
    attributes = ",".join(
        [_attribute("http.method", method), _attribute("http.route", route), _attribute("http.status_code", status)]
    )
    parent = f"{parent_id:016x}" if parent_id else ""
    end_ns = start_ns + rng.randrange(50_000, 50_000_000)
    text = (
        f'{{"traceId":"{trace_id:032x}","spanId":"{rng.getrandbits(64):016x}","parentSpanId":"{parent}",'
        f'"name":"{method} {route}","kind":{2 if not parent_id else 1},"startTimeUnixNano":{start_ns},'
        f'"endTimeUnixNano":{end_ns},"attributes":[{attributes}],'
        f'"status":{{"code":{2 if status >= 500 else 0},"message":""}},"events":[]}}\n'
    )
    return text.encode()


def resource_line(sender: int) -> bytes:
    attributes = ",".join(
        _attribute(k, v)
        for k, v in (
            ("service.name", "bench-service"),
            ("project.name", "bench-service"),
            ("project.version", "1.4.2"),
            ("deployment.environment", "production"),
            ("host.name", "bench-host"),
            ("os.type", "linux"),
            ("os.version", "6.1.0-27-amd64"),
            ("process.pid", 40_000 + sender),
            ("process.runtime.name", "cpython"),
            ("process.runtime.version", "3.11.2"),
            ("telemetry.sdk.name", "automagik-telemetry"),
            ("telemetry.sdk.version", "0.1.0"),
        )
    )
    return f'{{"attributes":[{attributes}]}}\n'.encode()


def build_message(rng: random.Random, resource: bytes) -> tuple[bytearray, int]:
    """A RECORDS message filled with spans up to the 64 KiB limit, as the client batches them."""
    lines: list[bytes] = []
    size = protocol.HEADER_SIZE + len(resource)
    trace_id, parent_id, now = rng.getrandbits(128), 0, time.time_ns()
    while True:
        if rng.random() < 0.2:  # a new trace every ~5 spans, the others children of its root
            trace_id, parent_id = rng.getrandbits(128), 0
        line = span_line(rng, trace_id, parent_id, now + len(lines) * 1000)
        if size + len(line) > protocol.MAX_MESSAGE_SIZE:
            break
        parent_id = parent_id or rng.getrandbits(64)
        lines.append(line)
        size += len(line)
    return bytearray(protocol.encode_records(resource, lines, seq=0)), len(lines)


def build_sender_messages(sender: int) -> list[tuple[bytearray, int]]:
    rng = random.Random(1000 + sender)
    resource = resource_line(sender)
    return [build_message(rng, resource) for _ in range(DISTINCT_MESSAGES)]


# ------------------------------------------------------------------------------------------ sender
def _read_replies(sock: socket.socket, state: dict) -> None:
    """Drain ACK/REJECT replies without blocking; ACKs are cumulative."""
    while True:
        try:
            reply = sock.recv(protocol.MAX_MESSAGE_SIZE)
        except BlockingIOError:
            return
        if not reply:
            raise ConnectionError("the receiver closed the connection")
        header = protocol.decode_header(reply)
        if header.type == protocol.MessageType.ACK:
            state["acked"] = max(state["acked"], header.seq)
        elif header.type == protocol.MessageType.REJECT:
            state["rejected"] += 1


def _send_all(sock: socket.socket, messages: list[tuple[bytearray, int]], n_messages: int, state: dict) -> None:
    poller = select.poll()
    poller.register(sock, select.POLLOUT | select.POLLIN)
    for seq in range(1, n_messages + 1):
        message = messages[seq % len(messages)][0]
        SEQ_FIELD.pack_into(message, SEQ_OFFSET, seq)
        while True:
            try:
                sock.send(message)
                break
            except BlockingIOError:  # the receiver is behind: wait for room (and read its replies)
                for _fd, events in poller.poll(1000):
                    if events & select.POLLIN:
                        _read_replies(sock, state)
        state["sent"] = seq


def _wait_final_ack(sock: socket.socket, last_seq: int, state: dict) -> None:
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    deadline = time.monotonic() + RESULT_TIMEOUT_S
    while state["acked"] < last_seq and state["rejected"] == 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no ACK for seq {last_seq} (last ACK {state['acked']})")
        if poller.poll(100):
            _read_replies(sock, state)


def sender_main(
    path: str, messages: list[tuple[bytearray, int]], n_messages: int, wait_ack: bool, go: object, pipe: object
) -> None:
    """Connect, say ready, wait for go, send ``n_messages`` non-blocking, optionally await the last ACK."""
    state = {"sent": 0, "acked": 0, "rejected": 0, "end": 0.0, "error": ""}
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.connect(path)
        sock.setblocking(False)
        pipe.send("ready")
        go.wait()
        _send_all(sock, messages, n_messages, state)
        if wait_ack:
            _wait_final_ack(sock, n_messages, state)
        state["end"] = time.monotonic()
        sock.close()
    except Exception as exc:
        state["error"] = repr(exc)
    pipe.send(state)


# ------------------------------------------------------------------------------------------ reference
def bare_receiver_main(path: str, n_conns: int, expected_bytes: int, pipe: object) -> None:
    """The reference: accept, then recv_into on every connection until all bytes arrived."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(64)
    pipe.send("ready")
    selector = selectors.DefaultSelector()
    for _ in range(n_conns):
        conn, _ = listener.accept()
        conn.setblocking(False)
        selector.register(conn, selectors.EVENT_READ)
    buf = bytearray(protocol.MAX_MESSAGE_SIZE + 1)
    received = messages = 0
    cpu_start = time.process_time()
    while received < expected_bytes:
        for key, _mask in selector.select(1.0):
            while True:
                try:
                    n = key.fileobj.recv_into(buf, len(buf))
                except BlockingIOError:
                    break
                if n == 0:
                    selector.unregister(key.fileobj)
                    break
                received += n
                messages += 1
    end = time.monotonic()
    pipe.send({"end": end, "bytes": received, "messages": messages, "cpu": time.process_time() - cpu_start})


# ------------------------------------------------------------------------------------------ runs
@dataclass
class Workload:
    senders: int
    messages_per_sender: int
    per_sender: list[list[tuple[bytearray, int]]] = field(default_factory=list)

    def spans(self) -> int:
        return sum(self._count(msgs, lambda m: m[1]) for msgs in self.per_sender)

    def nbytes(self) -> int:
        return sum(self._count(msgs, lambda m: len(m[0])) for msgs in self.per_sender)

    def _count(self, messages: list[tuple[bytearray, int]], measure: Callable[[tuple[bytearray, int]], int]) -> int:
        return sum(measure(messages[seq % len(messages)]) for seq in range(1, self.messages_per_sender + 1))


@dataclass
class Run:
    seconds: float
    spans: int
    nbytes: int
    cpu_s: float  # CPU time of the receiving process (all threads) during the run
    fsyncs: int | None = None

    @property
    def spans_per_s(self) -> float:
        return self.spans / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / self.seconds / 1e6

    @property
    def spans_per_cpu_s(self) -> float:
        return self.spans / max(self.cpu_s, 1e-3)


def _start_senders(
    ctx: mp.context.BaseContext, workload: Workload, path: str, wait_ack: bool, go: object
) -> tuple[list, list]:
    procs, pipes = [], []
    for messages in workload.per_sender:
        parent_end, child_end = ctx.Pipe()
        proc = ctx.Process(
            target=sender_main,
            daemon=True,
            args=(path, messages, workload.messages_per_sender, wait_ack, go, child_end),
        )
        proc.start()
        procs.append(proc)
        pipes.append(parent_end)
    for pipe in pipes:
        _expect(pipe, "ready")
    return procs, pipes


def _expect(pipe: object, what: str) -> object:
    if not pipe.poll(RESULT_TIMEOUT_S):
        raise TimeoutError(f"no {what!r} from a benchmark process")
    value = pipe.recv()
    if what == "ready" and value != "ready":
        raise RuntimeError(f"a sender failed to start: {value}")
    return value


def _collect(pipes: list, procs: list) -> list[dict]:
    results = [_expect(pipe, "result") for pipe in pipes]
    for proc in procs:
        proc.join(10)
    errors = [r["error"] for r in results if r["error"]]
    if errors:
        raise RuntimeError(f"sender error: {errors[0]}")
    return results


def run_reference(workload: Workload) -> Run:
    ctx = mp.get_context("fork")
    workdir = tempfile.mkdtemp(prefix="bench-ingest-ref-")
    path = os.path.join(workdir, "bare.sock")
    try:
        parent_end, child_end = ctx.Pipe()
        receiver = ctx.Process(
            target=bare_receiver_main, daemon=True, args=(path, workload.senders, workload.nbytes(), child_end)
        )
        receiver.start()
        _expect(parent_end, "ready")
        go = ctx.Event()
        procs, pipes = _start_senders(ctx, workload, path, wait_ack=False, go=go)
        start = time.monotonic()
        go.set()
        done = _expect(parent_end, "result")
        _collect(pipes, procs)
        receiver.join(10)
        return Run(done["end"] - start, workload.spans(), done["bytes"], done["cpu"])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_agent(workload: Workload, fsync: str, profile_to: str | None = None) -> Run:
    ctx = mp.get_context("fork")
    workdir = tempfile.mkdtemp(prefix=f"bench-ingest-{fsync}-")
    try:
        with Agent(workdir, fsync=fsync, profile_to=profile_to) as agent:
            go = ctx.Event()
            procs, pipes = _start_senders(ctx, workload, agent.socket_path, wait_ack=True, go=go)
            cpu_start = agent.cpu_seconds()
            start = time.monotonic()
            go.set()
            results = _collect(pipes, procs)
            end = max(r["end"] for r in results)
            cpu = agent.cpu_seconds() - cpu_start
            stats = agent.stats()
        _check_agent_run(workload, results, stats, agent)
        return Run(end - start, stats["items_received"], stats["bytes_received"], cpu, stats["wal"]["fsyncs"])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _check_agent_run(workload: Workload, results: list[dict], stats: dict, agent: Agent) -> None:
    """Every span arrived, nothing was rejected, every message was acknowledged, the agent exited 0."""
    problems = []
    if stats["items_received"] != workload.spans():
        problems.append(f"agent received {stats['items_received']} spans, sent {workload.spans()}")
    if stats["rejected_messages"]:
        problems.append(f"rejections: {stats['rejected_messages']}")
    if any(r["acked"] != workload.messages_per_sender or r["rejected"] for r in results):
        problems.append(f"sender results: {results}")
    if agent.returncode != 0:
        problems.append(f"agent exit code {agent.returncode}: {agent.log_text()[-2000:]}")
    if problems:
        raise RuntimeError("; ".join(problems))


# ------------------------------------------------------------------------------------------ report
def measure(workload: Workload, modes: list[str], repeats: int) -> dict[str, list[Run]]:
    """Interleave the variants (reference, then each fsync mode) in every repetition."""
    runs: dict[str, list[Run]] = {"reference": [], **{mode: [] for mode in modes}}
    for rep in range(1, repeats + 1):
        runs["reference"].append(run_reference(workload))
        for mode in modes:
            runs[mode].append(run_agent(workload, mode))
        summary = ", ".join(f"{name} {r[-1].spans_per_s / 1e3:,.0f}k" for name, r in runs.items())
        print(f"  repetition {rep}/{repeats}: {summary} spans/s", file=sys.stderr, flush=True)
    return runs


def _median_run(runs: list[Run]) -> Run:
    """The run with the median time (its own fsync count goes with it)."""
    ordered = sorted(runs, key=lambda r: r.seconds)
    return ordered[len(ordered) // 2]


def report(workload: Workload, runs: dict[str, list[Run]]) -> None:
    reference = _median_run(runs["reference"])
    per_message = workload.spans() / (workload.senders * workload.messages_per_sender)
    print(machine_line())
    print(
        f"workload: {workload.senders} sender processes x {workload.messages_per_sender} messages, "
        f"{workload.spans():,} spans, {workload.nbytes() / 1e6:,.1f} MB per run "
        f"({per_message:.0f} spans/message, {workload.nbytes() / workload.spans():.0f} bytes/span "
        "on the wire)"
    )
    print(f"median of {len(runs['reference'])} runs each (the run with the median time)\n")
    print(
        f"{'variant':<32}{'spans/s':>11}{'MB/s':>8}{'x bare':>8}{'seconds':>9}{'CPU s':>7}"
        f"{'spans/CPU-s':>13}{'x bare':>8}{'fsyncs':>8}"
    )
    for name, variant_runs in runs.items():
        run = _median_run(variant_runs)
        label = "reference: bare recv_into loop" if name == "reference" else f"agent --fsync {name}"
        fsyncs = "-" if run.fsyncs is None else str(run.fsyncs)
        print(
            f"{label:<32}{run.spans_per_s:>11,.0f}{run.mb_per_s:>8.1f}"
            f"{run.spans_per_s / reference.spans_per_s:>8.2f}{run.seconds:>9.3f}{run.cpu_s:>7.2f}"
            f"{run.spans_per_cpu_s:>13,.0f}{run.spans_per_cpu_s / reference.spans_per_cpu_s:>8.2f}"
            f"{fsyncs:>8}"
        )
    for name, variant_runs in runs.items():
        each = ", ".join(f"{r.spans_per_s / 1e3:,.0f}k" for r in variant_runs)
        print(f"  {name} runs: {each} spans/s")
    print(
        "(CPU s: CPU time of the receiving process during the run, all threads; spans/CPU-s is what one "
        "core would do without other load)"
    )
    if "interval" in runs:
        subject = _median_run(runs["interval"])
        ratio = subject.spans_per_s / reference.spans_per_s
        print(
            f"\ntargets (agent, default --fsync interval): >= {TARGET_SPANS_PER_S:,} spans/s -> "
            f"{subject.spans_per_s:,.0f} {_verdict(subject.spans_per_s >= TARGET_SPANS_PER_S)}; "
            f">= {TARGET_RATIO}x the bare loop -> {ratio:.2f}x {_verdict(ratio >= TARGET_RATIO)}"
        )


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--senders", type=int, default=2, help="sender processes (default 2)")
    parser.add_argument(
        "--messages",
        type=int,
        default=9000,
        help="messages per run, split over the senders (default 9000: ~1.3M spans)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="repetitions; the median is reported")
    parser.add_argument("--modes", default="interval,always,off", help="agent fsync modes, comma-separated")
    parser.add_argument("--quick", action="store_true", help="a ~10 s version (fewer messages)")
    args = parser.parse_args(argv)
    if args.quick:
        args.messages = min(args.messages, 1200)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workload = Workload(
        args.senders,
        max(1, args.messages // args.senders),
        [build_sender_messages(sender) for sender in range(args.senders)],
    )
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    meter = CpuMeter()
    runs = measure(workload, modes, args.repeats)
    report(workload, runs)
    print(meter.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
