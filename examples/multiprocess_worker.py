"""Example: a pool of worker processes, each recording spans with the automagik-telemetry client.

Run it against a running agent (AUTOMAGIK_TELEMETRY_SOCKET=/path/to/agent.sock). Each worker handles
"jobs": a parent span per job with a child span for the database call; about 1 job in 20 fails and
is recorded as an error. It prints one JSON line with what it sent (spans in all, per span name,
errors), so a caller can check delivery.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import time
from collections import Counter

from automagik_telemetry import AutomagikTelemetry, TelemetryConfig


def handle_job(client: AutomagikTelemetry, rng: random.Random, job: int) -> bool:
    """One job: returns False when it failed (the failure is recorded, not raised)."""
    try:
        with client.span("job.process", attributes={"job.id": job, "job.kind": rng.choice(["resize", "encode"])}):
            with client.span("db.query", attributes={"db.system": "postgresql", "db.rows": rng.randint(0, 50)}):
                time.sleep(rng.uniform(0, 0.0004))
            if rng.random() < 0.05:
                raise ValueError(f"job {job}: corrupt input")
        return True
    except ValueError:
        return False


def worker(index: int, jobs: int, queue: multiprocessing.Queue) -> None:
    client = AutomagikTelemetry(config=TelemetryConfig(project_name="demo-worker", version="1.0.0"))
    rng = random.Random(index)
    failed = sum(not handle_job(client, rng, job) for job in range(jobs))
    client.track_event("worker.finished", {"worker": index, "jobs": jobs})
    durable = client.flush(timeout=10)
    stats = client.stats()
    client.shutdown()
    queue.put(
        {
            "worker": index,
            "spans": jobs * 2 + 1,
            "errors": failed,
            "durable": durable,
            "by_name": {"job.process": jobs, "db.query": jobs, "worker.finished": 1},
            "acked": stats["acked_records"],
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
    for r in results:
        by_name.update(r["by_name"])
    print(
        json.dumps(
            {
                "spans": sum(r["spans"] for r in results),
                "errors": sum(r["errors"] for r in results),
                "by_name": dict(sorted(by_name.items())),
                "acked": sum(r["acked"] for r in results),
                "dropped": sum(r["dropped"] for r in results),
                "all_durable": all(r["durable"] for r in results),
            }
        )
    )


if __name__ == "__main__":
    main()
