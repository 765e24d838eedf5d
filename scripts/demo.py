"""`make demo`: the main job end to end on this machine, with nothing else to install or configure.

Starts an agent in a temporary state directory, runs examples/multiprocess_worker.py (several processes
recording spans through the client), waits until every worker's flush says its spans are durable, then
prints a summary (spans by name, p95 duration, error count) read back from the agent's write-ahead log,
checks it against what the workers sent, and stops the agent cleanly.

It runs ingest only (``--sink none``): no ClickHouse is needed, and the summary is read from the WAL.
Once the embedded ClickHouse sink lands, the demo ships into it and the summary becomes a SQL query.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def start_agent(state: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "automagik_telemetry_agent", "agent", "--socket", str(state / "agent.sock"),
           "--wal-dir", str(state / "wal"), "--wal-min-free", "0", "--sink", "none"]
    agent = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    assert agent.stderr is not None
    for line in agent.stderr:
        if line.strip() == b"ready":
            return agent
    raise SystemExit(f"the agent did not start (exit code {agent.wait()})")


def summarize(wal_dir: Path) -> dict:
    from automagik_telemetry_agent.wal.inspect import dump

    durations: dict[str, list[float]] = defaultdict(list)
    errors = 0
    for _seq, _kind, payload in dump(str(wal_dir)):
        for line in payload.rstrip(b"\n").split(b"\n")[1:]:
            span = json.loads(line)
            durations[span["name"]].append((span["endTimeUnixNano"] - span["startTimeUnixNano"]) / 1e6)
            errors += span.get("status", {}).get("code") == 2
    return {"by_name": durations, "errors": errors, "spans": sum(len(v) for v in durations.values())}


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) > 1 else values[0]


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="automagik-demo-") as tmp:
        state = Path(tmp)
        agent = start_agent(state)
        try:
            env = {**os.environ, "AUTOMAGIK_TELEMETRY_SOCKET": str(state / "agent.sock")}
            example = subprocess.run([sys.executable, str(REPO / "examples" / "multiprocess_worker.py"),
                                      "--workers", "4", "--jobs", "500"], env=env, capture_output=True, text=True,
                                     check=True, timeout=300)
            sent = json.loads(example.stdout.strip().splitlines()[-1])
        finally:
            agent.send_signal(signal.SIGTERM)
            code = agent.wait(timeout=30)
        summary = summarize(state / "wal")
        print(f"\n{'span name':<20}{'count':>8}{'p95 ms':>10}")
        for name, values in sorted(summary["by_name"].items()):
            print(f"{name:<20}{len(values):>8}{p95(values):>10.3f}")
        print(f"\nspans sent {sent['spans']}, durable in the WAL {summary['spans']}, errors {summary['errors']} "
              f"(sent {sent['errors']}); agent exited {code}")
        ok = (code == 0 and sent["all_durable"] and sent["dropped"] == 0 and summary["spans"] == sent["spans"]
              and summary["errors"] == sent["errors"])
        print("demo: OK" if ok else "demo: MISMATCH (see above)")
        return 0 if ok else 1


if __name__ == "__main__":
    started = time.monotonic()
    status = main()
    print(f"({time.monotonic() - started:.1f} s)")
    sys.exit(status)
