"""Example: a pool of worker processes, each recording spans, log records and metrics with the client.

Run it against a running agent (AUTOMAGIK_TELEMETRY_SOCKET=/path/to/agent.sock). Each worker handles
"jobs": a parent span per job with a child span for the database call; about 1 job in 20 fails and
is recorded as an error. All three signals:

* spans: ``job.process`` with a child ``db.query`` per job, one ``worker.finished`` event per worker;
* log records: the standard ``logging`` module through ``automagik_telemetry.LoggingHandler`` (a WARNING
  for a large query result and an ERROR with the exception for a failed job, both logged inside the
  job's span, so they carry its trace and span ids; an INFO progress line every 100 jobs, outside any
  span), plus ``client.track_log`` (one INFO record when the worker finishes);
* metrics, through instruments: a counter ``jobs.processed`` (attributes ``job.kind`` and ``outcome``)
  and a histogram ``job.duration`` in ms (attribute ``job.kind``). They aggregate in the process and
  are exported as cumulative points at ``flush()`` and at exit (and every ``metrics_interval``).

It prints one JSON line with what it sent (spans in all, per span name, errors; log records per
severity and how many were logged inside a span; the counter's total per outcome and the histogram's
count), so a caller can check delivery.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import random
import time
from collections import Counter

from automagik_telemetry import AutomagikTelemetry, LoggingHandler, TelemetryConfig

PROGRESS_EVERY = 100
LARGE_RESULT = 45  # db.rows above this logs a WARNING


class Worker:
    """One worker process's client, logger and instruments, and what it sent."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.client = AutomagikTelemetry(config=TelemetryConfig(project_name="demo-worker", version="1.0.0"))
        self.log = logging.getLogger("demo.worker")
        self.log.setLevel(logging.INFO)
        self.log.propagate = False
        self.log.handlers[:] = [LoggingHandler(self.client)]
        self.jobs = self.client.counter("jobs.processed", description="jobs handled, by kind and outcome")
        self.duration = self.client.histogram(
            "job.duration", unit="ms", boundaries=[0.1, 0.25, 0.5, 1, 2.5, 5, 10], description="time per job"
        )
        self.rng = random.Random(index)
        self.logs: Counter[str] = Counter()  # severity text as stored (logging's level name) -> records sent
        self.logs_in_span = 0
        self.outcomes: Counter[str] = Counter()  # outcome -> jobs.processed increments

    def handle_job(self, job: int) -> bool:
        """One job: returns False when it failed (the failure is recorded, not raised)."""
        rng, kind = self.rng, self.rng.choice(["resize", "encode"])
        started = time.perf_counter()
        try:
            with self.client.span("job.process", attributes={"job.id": job, "job.kind": kind}):
                rows = rng.randint(0, 50)
                with self.client.span("db.query", attributes={"db.system": "postgresql", "db.rows": rows}):
                    time.sleep(rng.uniform(0, 0.0004))
                if rows > LARGE_RESULT:
                    self.log.warning("job %d: large result, %d rows", job, rows, extra={"job.id": job})
                    self.logs["WARNING"] += 1
                    self.logs_in_span += 1
                try:
                    if rng.random() < 0.05:
                        raise ValueError(f"job {job}: corrupt input")
                except ValueError:
                    self.log.exception("job %d failed", job, extra={"job.id": job})  # with exception.* attributes
                    self.logs["ERROR"] += 1
                    self.logs_in_span += 1
                    raise
            ok = True
        except ValueError:
            ok = False
        outcome = "ok" if ok else "error"
        self.jobs.add(1, {"job.kind": kind, "outcome": outcome})
        self.outcomes[outcome] += 1
        self.duration.record((time.perf_counter() - started) * 1000, {"job.kind": kind})
        if (job + 1) % PROGRESS_EVERY == 0:
            self.log.info("worker %d: %d jobs done", self.index, job + 1)
            self.logs["INFO"] += 1
        return ok


def worker(index: int, jobs: int, queue: multiprocessing.Queue) -> None:
    w = Worker(index)
    client = w.client
    failed = sum(not w.handle_job(job) for job in range(jobs))
    client.track_event("worker.finished", {"worker": index, "jobs": jobs})
    client.track_log(f"worker {index} finished: {jobs} jobs, {failed} failed", "INFO", {"worker": index})
    w.logs["INFO"] += 1
    durable = client.flush(timeout=10)  # exports the instruments' points first, then waits for every ACK
    stats = client.stats()
    client.shutdown()  # exports the (unchanged, cumulative) points once more
    queue.put(
        {
            "worker": index,
            "spans": jobs * 2 + 1,
            "errors": failed,
            "durable": durable,
            "by_name": {"job.process": jobs, "db.query": jobs, "worker.finished": 1},
            "logs_by_severity": dict(w.logs),
            "logs_in_span": w.logs_in_span,
            "jobs_by_outcome": dict(w.outcomes),
            "durations_recorded": jobs,
            "acked": stats["acked_records"],  # records of all three signals
            "dropped": stats["dropped_queue_full"],
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=500, help="jobs per worker (2 spans each)")
    args = parser.parse_args()
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(i, args.jobs, queue)) for i in range(args.workers)]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join()
    by_name: Counter[str] = Counter()
    logs: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    for r in results:
        by_name.update(r["by_name"])
        logs.update(r["logs_by_severity"])
        outcomes.update(r["jobs_by_outcome"])
    print(
        json.dumps(
            {
                "spans": sum(r["spans"] for r in results),
                "errors": sum(r["errors"] for r in results),
                "by_name": dict(sorted(by_name.items())),
                "logs": sum(logs.values()),
                "logs_by_severity": dict(sorted(logs.items())),
                "logs_in_span": sum(r["logs_in_span"] for r in results),
                "metrics": {
                    "jobs.processed": dict(sorted(outcomes.items())),
                    "job.duration": sum(r["durations_recorded"] for r in results),
                },
                "acked": sum(r["acked"] for r in results),
                "dropped": sum(r["dropped"] for r in results),
                "all_durable": all(r["durable"] for r in results),
            }
        )
    )


if __name__ == "__main__":
    main()
