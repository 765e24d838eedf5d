"""Client cost per span in the calling thread: ``with client.span(...)`` vs the OpenTelemetry SDK.

Reference: the OpenTelemetry Python SDK with a ``TracerProvider`` + ``BatchSpanProcessor`` + a no-op
exporter (``export`` returns SUCCESS), ``with tracer.start_as_current_span(name, attributes=...)``.
Subject: ``with client.span(name, attributes=...)`` of our client, sending to a real agent process
started in a temporary directory (``--fsync interval``).

Same span shape for both: flat spans (no parent), a name and 3 attributes (pre-built dicts, so
neither pays for building them). Each ``with`` block is timed alone with ``time.perf_counter_ns``.
Spans are made in bursts (default 1000) and the background thread of each library is allowed to
catch up between bursts, untimed (ours: everything serialized and sent; OTel: ``force_flush``); within
a burst the background thread runs concurrently, so its GIL contention is in the numbers.
``--burst 0`` makes one continuous run instead (it overruns the queues; the drops are reported).

Also measured: ``track_event``, the disabled client (AUTOMAGIK_TELEMETRY_ENABLED=false) and an empty
``with`` block (the timer's own cost). Every measurement is repeated (default 3) and the median of
each statistic is reported.

    .venv/bin/python bench/bench_client.py            # ~1 min
    .venv/bin/python bench/bench_client.py --quick    # ~10 s
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from _harness import HTTP_SPAN_SHAPES, Agent, CpuMeter, free_port, machine_line, percentile

TARGET_MEDIAN_US = 2.0
TARGET_SPEEDUP = 10.0
TARGET_PROCESS_RATIO = 15.0  # issue 15: the whole process <= 1/15 of OTel's with its OTLP/HTTP exporter
SPAN_NAME = "GET /api/items/{id}"
ATTRIBUTES = [
    {"http.method": method, "http.route": route, "http.status_code": status}
    for method, route, status in HTTP_SPAN_SHAPES
]
CATCH_UP_TIMEOUT_S = 30.0
FLOOR = "empty with-block (timer floor)"


# ------------------------------------------------------------------------------------------ timed loops
def span_loop(span: Callable, n: int) -> list[int]:
    """``n`` spans made with ``span(name, attributes=...)``; the ns each ``with`` block took."""
    clock = time.perf_counter_ns
    attribute_sets = ATTRIBUTES
    samples = [0] * n
    for i in range(n):
        attributes = attribute_sets[i % 5]
        start = clock()
        with span(SPAN_NAME, attributes=attributes):
            pass
        samples[i] = clock() - start
    return samples


def event_loop(track_event: Callable, n: int) -> list[int]:
    clock = time.perf_counter_ns
    attribute_sets = ATTRIBUTES
    samples = [0] * n
    for i in range(n):
        attributes = attribute_sets[i % 5]
        start = clock()
        track_event(SPAN_NAME, attributes)
        samples[i] = clock() - start
    return samples


def empty_loop(n: int) -> list[int]:
    """The floor: an empty ``with`` block of a trivial context manager, timed the same way."""
    clock = time.perf_counter_ns
    null = contextlib.nullcontext()
    samples = [0] * n
    for i in range(n):
        start = clock()
        with null:
            pass
        samples[i] = clock() - start
    return samples


def in_bursts(loop: Callable[[int], list[int]], n: int, burst: int, catch_up: Callable[[], None]) -> list[int]:
    """Run ``loop`` for ``n`` iterations in bursts; the background thread catches up between them."""
    if burst <= 0:
        samples = loop(n)
        catch_up()
        return samples
    samples: list[int] = []
    for done in range(0, n, burst):
        samples += loop(min(burst, n - done))
        catch_up()
    return samples


# ------------------------------------------------------------------------------------------ subjects
class Ours:
    """Our client, enabled, connected to a real agent."""

    def __init__(self, socket_path: str) -> None:
        from automagik_telemetry import AutomagikTelemetry, TelemetryConfig

        self.client = AutomagikTelemetry(
            config=TelemetryConfig(project_name="bench-client", version="1.0.0", socket_path=socket_path)
        )

    def catch_up(self) -> None:
        """Wait (untimed) until the sender thread has serialized and sent everything queued."""
        deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
        while time.monotonic() < deadline:
            stats = self.client.stats()
            handled = stats["sent_records"] + stats["dropped_oversized"] + stats["internal_errors"]
            if stats["queue_depth"] == 0 and handled >= stats["enqueued_records"]:
                return
            time.sleep(0.0005)
        raise TimeoutError(f"the sender thread did not catch up: {self.client.stats()}")


class Disabled:
    """Our client with AUTOMAGIK_TELEMETRY_ENABLED=false (what an opted-out application pays)."""

    def __init__(self) -> None:
        from automagik_telemetry import AutomagikTelemetry, TelemetryConfig

        previous = os.environ.get("AUTOMAGIK_TELEMETRY_ENABLED")
        os.environ["AUTOMAGIK_TELEMETRY_ENABLED"] = "false"
        try:
            self.client = AutomagikTelemetry(config=TelemetryConfig(project_name="bench-off", version="1"))
        finally:
            if previous is None:
                del os.environ["AUTOMAGIK_TELEMETRY_ENABLED"]
            else:
                os.environ["AUTOMAGIK_TELEMETRY_ENABLED"] = previous
        assert not self.client.enabled


class OTel:
    """The reference: OpenTelemetry SDK, BatchSpanProcessor, an exporter that drops everything."""

    def __init__(self) -> None:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

        class NoOpExporter(SpanExporter):
            exported = 0

            def export(self, spans: object) -> SpanExportResult:
                NoOpExporter.exported += len(spans)  # type: ignore[arg-type]
                return SpanExportResult.SUCCESS

        self.exporter = NoOpExporter
        self.provider = TracerProvider()
        self.provider.add_span_processor(BatchSpanProcessor(NoOpExporter()))
        self.tracer = self.provider.get_tracer("bench")

    def catch_up(self) -> None:
        self.provider.force_flush()


# ------------------------------------------------------------------------------------------ measuring
@dataclass
class Summary:
    median_us: float
    p99_us: float
    p999_us: float
    mean_us: float
    sustained_per_s: float  # spans / wall time of the whole run, catch-up pauses included

    @classmethod
    def of(cls, samples: list[int], wall_s: float) -> Summary:
        ordered = sorted(samples)
        return cls(
            percentile(ordered, 0.5) / 1e3,
            percentile(ordered, 0.99) / 1e3,
            percentile(ordered, 0.999) / 1e3,
            statistics.fmean(ordered) / 1e3,
            len(samples) / wall_s,
        )

    @classmethod
    def median_of(cls, summaries: list[Summary]) -> Summary:
        return cls(
            *(
                statistics.median(getattr(s, f) for s in summaries)
                for f in ("median_us", "p99_us", "p999_us", "mean_us", "sustained_per_s")
            )
        )


def variants(ours: Ours, otel: OTel, disabled: Disabled, burst: int) -> dict[str, Callable[[int], list[int]]]:
    """label -> run(n): the timed samples of n spans (catching up between bursts, untimed)."""

    def nothing() -> None:
        return None

    return {
        FLOOR: lambda n: empty_loop(n),
        "OpenTelemetry SDK span (reference)": lambda n: in_bursts(
            lambda k: span_loop(otel.tracer.start_as_current_span, k), n, burst, otel.catch_up
        ),
        "ours: client.span": lambda n: in_bursts(lambda k: span_loop(ours.client.span, k), n, burst, ours.catch_up),
        "ours: client.track_event": lambda n: in_bursts(
            lambda k: event_loop(ours.client.track_event, k), n, burst, ours.catch_up
        ),
        "ours: disabled client.span": lambda n: in_bursts(
            lambda k: span_loop(disabled.client.span, k), n, burst, nothing
        ),
    }


def measure(
    runs: dict[str, Callable[[int], list[int]]], spans: int, warmup: int, repeats: int
) -> dict[str, list[Summary]]:
    for run in runs.values():
        run(warmup)
    results: dict[str, list[Summary]] = {label: [] for label in runs}
    for rep in range(1, repeats + 1):
        for label, run in runs.items():
            started = time.perf_counter()
            samples = run(spans)
            results[label].append(Summary.of(samples, time.perf_counter() - started))
        line = ", ".join(f"{label.split(' (')[0]} {s[-1].median_us:.2f}" for label, s in results.items())
        print(f"  repetition {rep}/{repeats}, median us: {line}", file=sys.stderr, flush=True)
    return results


# ------------------------------------------------------------------------------------------ whole process
# CPU time of the whole application process (every thread: the hot path and the library's background
# thread), per span, each library in a fresh forked process; and bursts (a process recording spans as
# fast as it can, nothing waiting for the background thread): how many spans its queue dropped.
PROCESS_SPANS = 60_000
BURST_SPANS = 25_000
BURST_PROCESSES = 4


def _ours_process_cpu(socket_path: str, n: int, otlp_lines: bool = False) -> dict[str, Any]:
    if otlp_lines:  # as with an agent that predates compact span lines (this is a forked child: only it)
        import automagik_telemetry.transport as transport

        transport.line_formats = lambda _stats: []
    ours = Ours(socket_path)
    span_loop(ours.client.span, 2_000)  # warm-up (connect, first STATS reply, caches)
    assert ours.client.flush(30.0)
    cpu0 = time.process_time()
    in_bursts(lambda k: span_loop(ours.client.span, k), n, 1000, ours.catch_up)
    flushed = ours.client.flush(30.0)
    cpu = time.process_time() - cpu0
    stats = ours.client.stats()
    ours.client.shutdown()
    return {"cpu_s": cpu, "flushed": flushed, "dropped": stats["dropped_queue_full"], "acked": stats["acked_records"]}


def _otel_process_cpu(endpoint: str, n: int) -> dict[str, Any]:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    tracer = provider.get_tracer("bench")
    span_loop(tracer.start_as_current_span, 2_000)
    provider.force_flush()
    cpu0 = time.process_time()
    in_bursts(lambda k: span_loop(tracer.start_as_current_span, k), n, 1000, provider.force_flush)
    flushed = provider.force_flush()
    cpu = time.process_time() - cpu0
    provider.shutdown()
    return {"cpu_s": cpu, "flushed": flushed, "dropped": 0, "acked": 0}


def _burst(socket_path: str, n: int, go: Any) -> dict[str, Any]:
    ours = Ours(socket_path)
    span_loop(ours.client.span, 1_000)
    assert ours.client.flush(30.0)
    go.wait()
    start = time.perf_counter()
    span_loop(ours.client.span, n)  # as fast as it can: nothing waits for the sender thread
    elapsed = time.perf_counter() - start
    depth = ours.client.stats()["queue_depth"]
    flushed = ours.client.flush(60.0)
    stats = ours.client.stats()
    ours.client.shutdown()
    return {
        "rate": n / elapsed,
        "depth_after": depth,
        "dropped": stats["dropped_queue_full"],
        "acked": stats["acked_records"] - 1_000,
        "flushed": flushed,
    }


def _queue_bytes_per_span(n: int) -> dict[str, Any]:
    """Memory a queued span holds (tracemalloc): a client whose agent is absent keeps what it records."""
    import tracemalloc

    from automagik_telemetry import AutomagikTelemetry, TelemetryConfig

    with tempfile.TemporaryDirectory() as nowhere:
        client = AutomagikTelemetry(
            config=TelemetryConfig(project_name="q", version="1", socket_path=os.path.join(nowhere, "none.sock"))
        )
        span_loop(client.span, 10)
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        span_loop(client.span, n)
        held = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        queued = client.stats()["queue_depth"]
        limit = client.config.max_queue_size
        client.shutdown(timeout=0.1)
    return {"bytes_per_span": (held - n * 8) / max(1, queued), "queued": queued, "max_queue_size": limit}


def _in_child(target: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()

    def main() -> None:
        try:
            child.send(target(*args))
        except Exception as exc:
            child.send({"error": repr(exc)})

    proc = ctx.Process(target=main, daemon=True)
    proc.start()
    result = parent.recv() if parent.poll(300) else {"error": "timed out"}
    proc.join(10)
    if "error" in result:
        raise RuntimeError(f"{target.__name__}: {result['error']}")
    return result


def _bursts(socket_path: str, processes: int, n: int) -> list[dict[str, Any]]:
    ctx = multiprocessing.get_context("fork")
    go = ctx.Event()
    pipes, procs = [], []
    for _ in range(processes):
        parent, child = ctx.Pipe()

        def main(child: Any = child) -> None:
            try:
                child.send(_burst(socket_path, n, go))
            except Exception as exc:
                child.send({"error": repr(exc)})

        proc = ctx.Process(target=main, daemon=True)
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    time.sleep(1.0)  # every process connected and warmed up
    go.set()
    results = [p.recv() if p.poll(300) else {"error": "timed out"} for p in pipes]
    for proc in procs:
        proc.join(10)
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise RuntimeError(f"burst: {errors[0]}")
    return results


def measure_process(socket_path: str, otlp_endpoint: str, args: argparse.Namespace) -> list[str]:
    """The whole-process and burst measurements, as report lines."""
    out: list[str] = []
    n = args.process_spans
    ours, otlp_lines, otel = [], [], []
    for _ in range(args.repeats):  # interleaved, so a change in the machine's load hits all three
        ours.append(_in_child(_ours_process_cpu, socket_path, n))
        otlp_lines.append(_in_child(_ours_process_cpu, socket_path, n, True))
        otel.append(_in_child(_otel_process_cpu, otlp_endpoint, n))
    ours_us = statistics.median(1e6 * r["cpu_s"] / n for r in ours)
    otlp_lines_us = statistics.median(1e6 * r["cpu_s"] / n for r in otlp_lines)
    otel_us = statistics.median(1e6 * r["cpu_s"] / n for r in otel)
    out.append(
        f"\nwhole application process, CPU per span (all threads, {n:,} spans in bursts of 1000, each library "
        f"in a fresh process, median of {args.repeats}):"
    )
    out.append(f"  OpenTelemetry SDK + BatchSpanProcessor + OTLP/HTTP exporter (to the agent): {otel_us:.1f} us")
    out.append(
        f"  ours, OTLP/JSON span lines (an agent without compact lines): {otlp_lines_us:.1f} us  -> OTel/x "
        f"{otel_us / otlp_lines_us:.1f}x"
    )
    out.append(
        f"  ours: client.span to the agent's socket (compact span lines): {ours_us:.1f} us  -> OTel/ours "
        f"{otel_us / ours_us:.1f}x "
        f"(target >= {TARGET_PROCESS_RATIO:.0f}x: {_verdict(otel_us / ours_us >= TARGET_PROCESS_RATIO)}); "
        f"dropped {sum(r['dropped'] for r in ours)}, flush {'ok' if all(r['flushed'] for r in ours) else 'FAILED'}"
    )
    memory = _in_child(_queue_bytes_per_span, 5_000)
    out.append(
        f"queue memory: {memory['bytes_per_span']:.0f} bytes per queued span (tracemalloc), so a full queue of "
        f"max_queue_size={memory['max_queue_size']:,} holds about "
        f"{memory['bytes_per_span'] * memory['max_queue_size'] / 2**20:.0f} MiB"
    )
    for processes in (1, args.burst_processes):
        results = _bursts(socket_path, processes, args.burst_spans)
        dropped = sum(r["dropped"] for r in results)
        total = processes * args.burst_spans
        rates = ", ".join(f"{r['rate']:,.0f}" for r in results)
        out.append(
            f"burst: {processes} process(es) x {args.burst_spans:,} spans as fast as they can (spans/s each: "
            f"{rates}): dropped {dropped:,} of {total:,} ({100 * dropped / total:.1f}%), queue depth at the "
            f"end of the burst {max(r['depth_after'] for r in results):,}, acked {sum(r['acked'] for r in results):,}"
        )
    return out


# ------------------------------------------------------------------------------------------ report
def report(results: dict[str, list[Summary]], args: argparse.Namespace) -> None:
    medians = {label: Summary.median_of(s) for label, s in results.items()}
    reference = medians["OpenTelemetry SDK span (reference)"]
    ours = medians["ours: client.span"]
    print(f"{machine_line()}, opentelemetry-sdk {_otel_version()}")
    burst = f"bursts of {args.burst}" if args.burst > 0 else "one continuous run (no catch-up pauses)"
    print(
        f"workload: {args.spans:,} flat spans per measurement (name + 3 attributes), {burst}, "
        f"{args.warmup:,} warm-up spans; median of {args.repeats} runs of each statistic\n"
    )
    print(
        f"{'variant':<38}{'median us':>10}{'p99 us':>9}{'p99.9 us':>10}{'mean us':>9}{'OTel/x':>8}{'sustained/s':>13}"
    )
    for label, s in medians.items():
        ratio = reference.median_us / s.median_us if s.median_us else float("inf")
        sustained = "-" if label == FLOOR else f"{s.sustained_per_s:,.0f}"
        print(
            f"{label:<38}{s.median_us:>10.2f}{s.p99_us:>9.2f}{s.p999_us:>10.2f}{s.mean_us:>9.2f}{ratio:>8.1f}"
            f"{sustained:>13}"
        )
    print(
        "(OTel/x: the reference's median over this one's; sustained/s: spans per second of the whole "
        "run, background catch-up included)"
    )
    speedup = reference.median_us / ours.median_us
    print(
        f"\ntargets (client.span): median <= {TARGET_MEDIAN_US} us -> {ours.median_us:.2f} us "
        f"{_verdict(ours.median_us <= TARGET_MEDIAN_US)}; >= {TARGET_SPEEDUP:.0f}x cheaper than OTel "
        f"(median) -> {speedup:.1f}x {_verdict(speedup >= TARGET_SPEEDUP)}"
    )


def report_delivery(ours: Ours, otel: OTel, agent: Agent, otel_spans: int) -> None:
    """Nothing silently lost: what each library did with the spans it was given."""
    flushed = ours.client.flush(10.0)
    stats = ours.client.stats()
    agent_stats = agent.stats()
    print(
        f"\nour client: enqueued {stats['enqueued_records']:,}, sent {stats['sent_records']:,}, "
        f"acked {stats['acked_records']:,}, dropped (queue full) {stats['dropped_queue_full']:,}, "
        f"rejected {stats['rejected_records']:,}, internal errors {stats['internal_errors']}, "
        f"final flush {'ok' if flushed else 'FAILED'}; agent items_received "
        f"{agent_stats['items_received']:,}"
    )
    print(
        f"OpenTelemetry: {otel_spans:,} spans started, {otel.exporter.exported:,} exported "
        f"({otel_spans - otel.exporter.exported:,} dropped by its bounded queue)"
    )


def _otel_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("opentelemetry-sdk")
    except PackageNotFoundError:
        return "?"


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


# ------------------------------------------------------------------------------------------ main
@contextlib.contextmanager
def running_agent(otlp_port: int) -> Iterator[Agent]:
    with (
        tempfile.TemporaryDirectory(prefix="bench-client-") as workdir,
        Agent(workdir, extra_args=["--otlp-listen", f"127.0.0.1:{otlp_port}"]) as agent,
    ):
        yield agent
    if agent.returncode != 0:
        print(f"warning: the agent exited with {agent.returncode}: {agent.log_text()[-2000:]}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=150_000, help="timed spans per measurement")
    parser.add_argument("--warmup", type=int, default=20_000, help="untimed spans per variant first")
    parser.add_argument(
        "--burst", type=int, default=1000, help="spans per burst between catch-up pauses; 0 = one continuous run"
    )
    parser.add_argument("--repeats", type=int, default=3, help="repetitions; the median is reported")
    parser.add_argument("--process-spans", type=int, default=PROCESS_SPANS, help="spans per whole-process measurement")
    parser.add_argument("--burst-spans", type=int, default=BURST_SPANS, help="spans per process in a burst")
    parser.add_argument("--burst-processes", type=int, default=BURST_PROCESSES, help="processes bursting at once")
    parser.add_argument("--quick", action="store_true", help="a ~20 s version (fewer spans)")
    args = parser.parse_args(argv)
    if args.quick:
        args.spans, args.warmup = min(args.spans, 20_000), min(args.warmup, 3_000)
        args.process_spans = min(args.process_spans, 20_000)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    meter = CpuMeter()
    otlp_port = free_port()
    with running_agent(otlp_port) as agent:
        # The whole-process measurements fork: run them before this process starts threads of its own.
        process_lines = measure_process(agent.socket_path, f"http://127.0.0.1:{otlp_port}/v1/traces", args)
        ours, otel, disabled = Ours(agent.socket_path), OTel(), Disabled()
        runs = variants(ours, otel, disabled, args.burst)
        results = measure(runs, args.spans, args.warmup, args.repeats)
        report(results, args)
        report_delivery(ours, otel, agent, args.warmup + args.spans * args.repeats)
        print("\n".join(process_lines))
        ours.client.shutdown()
    print(meter.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
