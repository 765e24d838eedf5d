"""`make demo`: the main job end to end on this machine, with no ClickHouse server to install.

1. Starts an agent in a temporary directory with the embedded sink (chDB: ClickHouse in process, data
   in ``<tmp>/embedded``), or, when ``AUTOMAGIK_TELEMETRY_CLICKHOUSE_ENDPOINT`` is set, with the
   ClickHouse sink to that server (after ``schema apply``; credentials and the rest from the other
   ``AUTOMAGIK_TELEMETRY_CLICKHOUSE_*`` variables).
2. Runs examples/multiprocess_worker.py: several processes recording a few thousand spans through
   the client, all tagged with this run's ``deployment.environment`` (``demo-<id>``).
3. Waits until every span is in the table (``automagik-telemetry query``'s code path: through the
   agent that holds the embedded store, or over HTTP), prints a summary query (spans by name, p95
   duration, errors), checks it against what the workers sent, and stops the agent (exit code 0).

Prints ``demo: OK`` and exits 0 when everything matched; ``demo: MISMATCH`` and exits 1 otherwise.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
WORKERS, JOBS = 4, 500
SHIP_TIMEOUT_S = 60.0


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "automagik_telemetry_agent", *args]


def start_agent(argv: list[str], log: list[str]) -> subprocess.Popen[bytes]:
    """Start the agent, wait for ``ready``; its stderr keeps being read into ``log`` (shown on failure)."""
    agent = subprocess.Popen(argv, stderr=subprocess.PIPE)
    ready = threading.Event()

    def drain() -> None:
        assert agent.stderr is not None
        for raw in agent.stderr:
            line = raw.decode(errors="replace")
            log.append(line)
            if line.strip() == "ready":
                ready.set()
        ready.set()  # EOF: the agent exited

    threading.Thread(target=drain, daemon=True).start()
    ready.wait(60)
    if agent.poll() is not None or not any(line.strip() == "ready" for line in log):
        sys.stderr.write("".join(log))
        raise SystemExit(f"demo: the agent did not start (exit code {agent.poll()})")
    return agent


def main() -> int:
    from automagik_telemetry_agent.clickhouse.query import QueryError, run_query
    from automagik_telemetry_agent.config import load_config

    endpoint = os.environ.get("AUTOMAGIK_TELEMETRY_CLICKHOUSE_ENDPOINT", "")
    environment = f"demo-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="automagik-demo-", dir="/tmp") as tmp:
        state = Path(tmp)
        config_file = state / "agent.toml"  # empty: no /etc/automagik-telemetry/agent.toml leaking in
        config_file.write_text("")
        flags: dict[str, Any] = {"sink": "clickhouse"} if endpoint else {"embedded.dir": str(state / "embedded")}
        config = load_config(str(config_file), flags)
        sink_argv = ["--sink", "clickhouse"] if endpoint else ["--embedded", str(state / "embedded")]
        where = f"ClickHouse at {endpoint}" if endpoint else f"the embedded store {state / 'embedded'}"
        if endpoint:
            applied = subprocess.run(
                cli("schema", "apply", "--config", str(config_file)), text=True, capture_output=True
            )
            if applied.returncode != 0:
                print(applied.stderr.strip(), file=sys.stderr)
                return 1
            print(applied.stdout.strip())
        log: list[str] = []
        agent = start_agent(
            cli(
                "agent",
                "--config",
                str(config_file),
                "--socket",
                str(state / "agent.sock"),
                "--wal-dir",
                str(state / "wal"),
                "--wal-min-free",
                "0",
                "--metrics-listen",
                "",
                "--batch-wait",
                "200ms",
                *sink_argv,
            ),
            log,
        )
        print(f"demo: agent {agent.pid} running, shipping to {where}")
        try:
            env = {
                **os.environ,
                "AUTOMAGIK_TELEMETRY_SOCKET": str(state / "agent.sock"),
                "AUTOMAGIK_TELEMETRY_ENVIRONMENT": environment,
            }
            example = subprocess.run(
                [
                    sys.executable,
                    str(REPO / "examples" / "multiprocess_worker.py"),
                    "--workers",
                    str(WORKERS),
                    "--jobs",
                    str(JOBS),
                ],
                env=env,
                capture_output=True,
                text=True,
                check=True,
                timeout=300,
            )
            sent = json.loads(example.stdout.strip().splitlines()[-1])
            print(
                f"demo: {WORKERS} worker processes sent {sent['spans']} spans "
                f"({'all durable in the WAL' if sent['all_durable'] else 'NOT all durable'})"
            )
            table = f"{config['clickhouse.database']}.{config['clickhouse.table']}"
            where_env = f"environment = '{environment}'"
            started = time.monotonic()
            shipped, problem = 0, ""
            while time.monotonic() - started < SHIP_TIMEOUT_S and shipped < sent["spans"]:
                time.sleep(0.2)
                try:  # through the agent only: the shipper may still be starting (and creating the table)
                    count = run_query(config, f"SELECT count() FROM {table} WHERE {where_env}", direct=False)
                except QueryError as exc:
                    problem = str(exc)
                    continue
                shipped, problem = int(count.strip() or 0), ""
            if problem:
                print(f"demo: {problem}", file=sys.stderr)
            print(f"demo: {shipped} spans in {table} after {time.monotonic() - started:.1f} s")
            out = run_query(
                config,
                f"SELECT span_name, count(), quantile(0.95)(duration_ms), "
                f"countIf(status_code = 'ERROR') FROM {table} WHERE {where_env} "
                "GROUP BY span_name ORDER BY span_name",
                direct=False,
            )
            unique = int(
                run_query(config, f"SELECT uniqExact(span_id) FROM {table} WHERE {where_env}", direct=False).strip()
            )
        except QueryError as exc:
            print(f"demo: {exc}\n--- agent log ---\n{''.join(log)}", file=sys.stderr)
            return 1
        finally:
            agent.send_signal(signal.SIGTERM)
            code = agent.wait(timeout=60)
        rows = [line.split("\t") for line in out.splitlines() if line]
        print(f"\n{'span name':<20}{'spans':>8}{'p95 ms':>10}{'errors':>8}")
        for name, count, p95, errors in rows:
            print(f"{name:<20}{count:>8}{float(p95):>10.3f}{errors:>8}")
        got_by_name = {name: int(count) for name, count, _, _ in rows}
        got_errors = sum(int(errors) for *_, errors in rows)
        got_spans = sum(got_by_name.values())
        print(
            f"\nspans sent {sent['spans']}, stored {got_spans} ({unique} distinct span ids), errors {got_errors} "
            f"(sent {sent['errors']}); agent exited {code}"
        )
        ok = (
            code == 0
            and sent["all_durable"]
            and sent["dropped"] == 0
            and got_by_name == sent["by_name"]
            and got_spans == unique == sent["spans"]
            and got_errors == sent["errors"]
        )
        if not ok:
            print(f"--- agent log ---\n{''.join(log)}", file=sys.stderr)
        print("demo: OK" if ok else "demo: MISMATCH (see above)")
        return 0 if ok else 1


if __name__ == "__main__":
    started = time.monotonic()
    status = main()
    print(f"({time.monotonic() - started:.1f} s)")
    sys.exit(status)
