"""Client cost per call of the log and metric signals in the application thread, against references.

CPU time of the calling thread per call (``time.thread_time_ns`` around each burst of calls, divided
by the calls): what the application pays, not counting the library's background thread (its cost is
shown apart, as the process's CPU time per call over the whole run, background and catch-up pauses
included).

Logs: ``logger.info("request %s done", i)`` on a logger (``propagate=False``, level INFO) with one handler:

* the stdlib ``logging.FileHandler`` to a temporary file, default formatter (``%(message)s``; it writes
  and flushes every record: one ``write`` per call);
* the OpenTelemetry SDK's ``opentelemetry.sdk._logs.LoggingHandler`` on a ``LoggerProvider`` with a
  ``BatchLogRecordProcessor`` over an exporter whose ``export`` only counts (no in-memory list that grows);
* ours: ``automagik_telemetry.LoggingHandler(client)``; and ``client.track_log(...)`` without ``logging``.

A ``logging.NullHandler`` on the same kind of logger is the floor: what ``logging`` itself costs
(``Logger._log``, ``findCaller``, ``makeRecord``), paid by every handler row.

Metrics: ``counter.add(1, {"route": "/x"})`` and ``histogram.record(v, {"route": "/x"})`` (the same
pre-built dict every call) of ours and of the OpenTelemetry metrics SDK (``MeterProvider`` with an
``InMemoryMetricReader``: nothing collects during the run); also ``track_metric`` (one data point queued
per call).

Our client sends to a real agent started in a temporary directory (``--sink none``). Calls are made in
bursts (default 1000) and, between bursts, untimed, the background thread is let to catch up (ours:
everything queued serialized and sent; OTel logs: ``force_flush``), so no queue ever fills: a full queue
would make a call a cheap drop. Every measurement is repeated (default 5, variants interleaved); the
best repetition is reported, with the median next to it.

    .venv/bin/python bench/bench_signals.py            # ~25 s
    .venv/bin/python bench/bench_signals.py --quick    # ~5 s
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from _harness import Agent, CpuMeter, machine_line

ATTRIBUTES = {"route": "/x"}
VALUES = [0.5, 3.0, 7.0, 12.0, 40.0, 60.0, 90.0, 180.0, 300.0, 620.0, 900.0, 1800.0, 4000.0, 6000.0, 9000.0, 20000.0]
CATCH_UP_TIMEOUT_S = 30.0
TARGET_LOG_RATIO = 1.0  # ours no dearer than the FileHandler
TARGET_COUNTER_RATIO = 5.0  # ours >= 5x cheaper than OTel's counter

FLOOR_LOOP = "empty loop (timer floor)"
FLOOR_LOGGING = "logger.info -> logging.NullHandler"
FILE_HANDLER = "logger.info -> stdlib FileHandler"
OTEL_HANDLER = "logger.info -> OTel SDK LoggingHandler"
OURS_HANDLER = "logger.info -> ours LoggingHandler"
OURS_TRACK_LOG = "ours client.track_log"
OTEL_COUNTER = "OTel SDK counter.add"
OURS_COUNTER = "ours counter.add"
OTEL_HISTOGRAM = "OTel SDK histogram.record"
OURS_HISTOGRAM = "ours histogram.record"
OURS_TRACK_METRIC = "ours client.track_metric"


# ------------------------------------------------------------------------------------------ loops
# Every loop makes ``k`` calls; the loop itself costs what the empty loop does (not subtracted).
def empty_loop(k: int) -> None:
    for _ in range(k):
        pass


def log_loop(logger: logging.Logger) -> Callable[[int], None]:
    info = logger.info

    def run(k: int) -> None:
        for i in range(k):
            info("request %s done", i)

    return run


def track_log_loop(track_log: Callable[..., None]) -> Callable[[int], None]:
    attributes = ATTRIBUTES

    def run(k: int) -> None:
        for _ in range(k):
            track_log("request done", "INFO", attributes)

    return run


def add_loop(add: Callable[..., None]) -> Callable[[int], None]:
    attributes = ATTRIBUTES

    def run(k: int) -> None:
        for _ in range(k):
            add(1, attributes)

    return run


def record_loop(record: Callable[..., None]) -> Callable[[int], None]:
    attributes, values = ATTRIBUTES, VALUES

    def run(k: int) -> None:
        for i in range(k):
            record(values[i & 15], attributes)

    return run


def track_metric_loop(track_metric: Callable[..., None]) -> Callable[[int], None]:
    attributes = ATTRIBUTES

    def run(k: int) -> None:
        for _ in range(k):
            track_metric("jobs.done", 1, "counter", attributes)

    return run


def _nothing() -> None:
    return None


@dataclass
class Variant:
    label: str
    loop: Callable[[int], None]
    catch_up: Callable[[], None] = _nothing
    app_ns: list[float] = field(default_factory=list)  # per repetition: app-thread CPU ns per call
    process_ns: list[float] = field(default_factory=list)  # per repetition: process CPU ns per call (all threads)

    def run(self, calls: int, burst: int) -> None:
        thread_clock, process_clock = time.thread_time_ns, time.process_time_ns
        timed = 0
        process_start = process_clock()
        for done in range(0, calls, burst):
            start = thread_clock()
            self.loop(min(burst, calls - done))
            timed += thread_clock() - start
            self.catch_up()
        self.process_ns.append((process_clock() - process_start) / calls)
        self.app_ns.append(timed / calls)


# ------------------------------------------------------------------------------------------ subjects
def _logger(name: str, handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"bench.signals.{name}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


class Ours:
    """Our client, enabled, connected to a real agent; its LoggingHandler and instruments."""

    def __init__(self, socket_path: str) -> None:
        from automagik_telemetry import AutomagikTelemetry, LoggingHandler, TelemetryConfig

        self.client = AutomagikTelemetry(
            config=TelemetryConfig(project_name="bench-signals", version="1.0.0", socket_path=socket_path)
        )
        self.logger = _logger("ours", LoggingHandler(self.client))
        self.counter = self.client.counter("requests")
        self.histogram = self.client.histogram("latency", unit="ms")

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


class OTelLogs:
    """OpenTelemetry SDK logs: LoggerProvider + BatchLogRecordProcessor + a counting exporter."""

    def __init__(self) -> None:
        import warnings

        from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
        from opentelemetry.sdk._logs.export import (
            BatchLogRecordProcessor,
            LogRecordExporter,
            LogRecordExportResult,
        )

        class CountingExporter(LogRecordExporter):
            exported = 0

            def export(self, batch: object) -> LogRecordExportResult:
                CountingExporter.exported += len(batch)  # type: ignore[arg-type]
                return LogRecordExportResult.SUCCESS

            def shutdown(self) -> None:
                pass

            def force_flush(self, timeout_millis: int = 30_000) -> bool:
                return True

        self.exporter = CountingExporter
        self.provider = LoggerProvider()
        self.provider.add_log_record_processor(BatchLogRecordProcessor(CountingExporter()))
        with warnings.catch_warnings():  # 1.4x: "deprecated, use opentelemetry-instrumentation-logging"
            warnings.simplefilter("ignore", DeprecationWarning)
            self.logger = _logger("otel", LoggingHandler(logger_provider=self.provider))

    def catch_up(self) -> None:
        self.provider.force_flush()


class OTelMetrics:
    """OpenTelemetry metrics SDK: MeterProvider with an InMemoryMetricReader (collected only at the end)."""

    def __init__(self) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])
        meter = self.provider.get_meter("bench")
        self.counter = meter.create_counter("requests")
        self.histogram = meter.create_histogram("latency", unit="ms")

    def totals(self) -> dict[str, float]:
        """name -> the counter's sum or the histogram's count (to show every call was counted)."""
        data = self.reader.get_metrics_data()
        found: dict[str, float] = {}
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        found[metric.name] = getattr(point, "value", None) or getattr(point, "count", 0)
        return found


def variants(ours: Ours, otel_logs: OTelLogs, otel_metrics: OTelMetrics, log_file: str) -> list[Variant]:
    file_handler = logging.FileHandler(log_file)  # no setFormatter: logging's default "%(message)s"
    return [
        Variant(FLOOR_LOOP, empty_loop),
        Variant(FLOOR_LOGGING, log_loop(_logger("null", logging.NullHandler()))),
        Variant(FILE_HANDLER, log_loop(_logger("file", file_handler))),
        Variant(OTEL_HANDLER, log_loop(otel_logs.logger), otel_logs.catch_up),
        Variant(OURS_HANDLER, log_loop(ours.logger), ours.catch_up),
        Variant(OURS_TRACK_LOG, track_log_loop(ours.client.track_log), ours.catch_up),
        Variant(OTEL_COUNTER, add_loop(otel_metrics.counter.add)),
        Variant(OURS_COUNTER, add_loop(ours.counter.add)),
        Variant(OTEL_HISTOGRAM, record_loop(otel_metrics.histogram.record)),
        Variant(OURS_HISTOGRAM, record_loop(ours.histogram.record)),
        Variant(OURS_TRACK_METRIC, track_metric_loop(ours.client.track_metric), ours.catch_up),
    ]


# ------------------------------------------------------------------------------------------ report
REFERENCES = {  # row -> (reference rows its ratios are against)
    OURS_HANDLER: (FILE_HANDLER, OTEL_HANDLER),
    OURS_TRACK_LOG: (FILE_HANDLER, OTEL_HANDLER),
    OTEL_HANDLER: (FILE_HANDLER, OTEL_HANDLER),
    FILE_HANDLER: (FILE_HANDLER, OTEL_HANDLER),
    OURS_COUNTER: (None, OTEL_COUNTER),
    OTEL_COUNTER: (None, OTEL_COUNTER),
    OURS_HISTOGRAM: (None, OTEL_HISTOGRAM),
    OTEL_HISTOGRAM: (None, OTEL_HISTOGRAM),
    OURS_TRACK_METRIC: (None, OTEL_COUNTER),
}


def report(results: list[Variant], args: argparse.Namespace) -> None:
    best = {v.label: min(v.app_ns) / 1e3 for v in results}
    print(f"{machine_line()}, opentelemetry-sdk {_otel_version()}")
    print(
        f"workload: {args.calls:,} calls per measurement in bursts of {args.burst} (background catch-up "
        f"between bursts, untimed), {args.warmup:,} warm-up calls; best of {args.repeats} repetitions\n"
    )
    header = f"{'variant':<42}{'best us':>9}{'median us':>11}{'process us':>12}{'FileH/x':>9}{'OTel/x':>8}"
    print(header)
    for v in results:
        file_ref, otel_ref = REFERENCES.get(v.label, (None, None))
        ratios = [f"{best[ref] / best[v.label]:.2f}" if ref else "-" for ref in (file_ref, otel_ref)]
        print(
            f"{v.label:<42}{best[v.label]:>9.3f}{statistics.median(v.app_ns) / 1e3:>11.3f}"
            f"{min(v.process_ns) / 1e3:>12.3f}{ratios[0]:>9}{ratios[1]:>8}"
        )
    print(
        "(best/median us: CPU time of the calling thread per call; process us: CPU time of the whole process\n"
        " per call over the run, background threads and catch-up pauses included; FileH/x, OTel/x: that\n"
        " reference's best over this row's best, > 1 = this row is cheaper; track_metric is put against the\n"
        " OTel counter.)"
    )
    log_ratio = best[FILE_HANDLER] / best[OURS_HANDLER]
    counter_ratio = best[OTEL_COUNTER] / best[OURS_COUNTER]
    print(
        f"\ntargets: LoggingHandler no dearer than the FileHandler -> {best[OURS_HANDLER]:.2f} vs "
        f"{best[FILE_HANDLER]:.2f} us ({log_ratio:.2f}x) {_verdict(log_ratio >= TARGET_LOG_RATIO)}; "
        f"counter.add >= {TARGET_COUNTER_RATIO:.0f}x cheaper than OTel -> {counter_ratio:.1f}x "
        f"{_verdict(counter_ratio >= TARGET_COUNTER_RATIO)}"
    )


def report_delivery(ours: Ours, otel_logs: OTelLogs, otel_metrics: OTelMetrics, agent: Agent, calls: int) -> None:
    flushed = ours.client.flush(10.0)
    stats = ours.client.stats()
    agent_stats = agent.stats()
    print(
        f"\nour client: enqueued {stats['enqueued_records']:,} records (log records, track_metric points, "
        f"instrument points), sent {stats['sent_records']:,}, acked {stats['acked_records']:,}, dropped (queue "
        f"full) {stats['dropped_queue_full']:,}, rejected {stats['rejected_records']:,}, internal errors "
        f"{stats['internal_errors']}, metric errors {stats['metric_errors']}, final flush "
        f"{'ok' if flushed else 'FAILED'}; agent items_received {agent_stats['items_received']:,}"
    )
    print(
        f"instruments: ours counter {ours.counter._sums.get((('route', '/x'),), 0):,.0f}, "
        f"histogram count {sum(b.count for b in ours.histogram._series.values()):,}; OTel {otel_metrics.totals()}; "
        f"OTel logs exported {otel_logs.exporter.exported:,} of {calls:,}"
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
def running_agent() -> Iterator[Agent]:
    with tempfile.TemporaryDirectory(prefix="bench-signals-") as workdir, Agent(workdir) as agent:
        yield agent
    if agent.returncode != 0:
        print(f"warning: the agent exited with {agent.returncode}: {agent.log_text()[-2000:]}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=50_000, help="timed calls per measurement")
    parser.add_argument("--warmup", type=int, default=5_000, help="untimed calls per variant first")
    parser.add_argument("--burst", type=int, default=1000, help="calls per burst between catch-up pauses")
    parser.add_argument("--repeats", type=int, default=5, help="repetitions; the best is reported")
    parser.add_argument("--quick", action="store_true", help="a ~5 s version (fewer calls)")
    args = parser.parse_args(argv)
    if args.quick:
        args.calls, args.warmup, args.repeats = min(args.calls, 10_000), min(args.warmup, 2_000), min(args.repeats, 3)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    meter, load_before = CpuMeter(), os.getloadavg()
    with running_agent() as agent, tempfile.TemporaryDirectory(prefix="bench-signals-log-") as logs:
        ours, otel_logs, otel_metrics = Ours(agent.socket_path), OTelLogs(), OTelMetrics()
        results = variants(ours, otel_logs, otel_metrics, os.path.join(logs, "app.log"))
        for v in results:
            v.run(args.warmup, args.burst)
            v.app_ns.clear()
            v.process_ns.clear()
        for rep in range(1, args.repeats + 1):
            for v in results:
                v.run(args.calls, args.burst)
            line = ", ".join(f"{v.label.split(' -> ')[-1]} {v.app_ns[-1] / 1e3:.2f}" for v in results)
            print(f"  repetition {rep}/{args.repeats}, us/call: {line}", file=sys.stderr, flush=True)
        report(results, args)
        report_delivery(ours, otel_logs, otel_metrics, agent, args.warmup + args.calls * args.repeats)
        ours.client.shutdown()
        otel_logs.provider.shutdown()
        otel_metrics.provider.shutdown()
        logging.getLogger("bench.signals.file").handlers[0].close()
    # after the agent exited: its CPU time is then counted as this benchmark's (a reaped child)
    load_after = os.getloadavg()
    print(meter.summary())
    print(f"load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
