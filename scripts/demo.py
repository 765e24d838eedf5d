"""`make demo`: the main job end to end on this machine, with no ClickHouse server to install.

1. Starts an agent in a temporary directory with the embedded sink (chDB: ClickHouse in process, data
   in ``<tmp>/embedded``), or, when ``AUTOMAGIK_TELEMETRY_CLICKHOUSE_ENDPOINT`` is set, with the
   ClickHouse sink to that server (after ``schema apply``; credentials and the rest from the other
   ``AUTOMAGIK_TELEMETRY_CLICKHOUSE_*`` variables).
2. Runs examples/multiprocess_worker.py: several processes recording a few thousand spans, a few
   hundred log records (``logging`` through ``LoggingHandler``, and ``track_log``) and two metrics
   (a counter and a histogram, through instruments) with the client, all tagged with this run's
   ``deployment.environment`` (``demo-<id>``).
3. Waits until everything is in the tables (``automagik-telemetry query``'s code path: through the
   agent that holds the embedded store, or over HTTP), prints summary queries (spans by name, p95
   duration, errors; log records by severity, how many carry the ids of a stored span; the metrics'
   latest point per series), checks them against what the workers sent, and stops the agent (exit
   code 0). Counters and histograms are cumulative and exported at every flush and at exit, so a
   series has several points: the summary takes the latest of each (``argMax(..., timestamp_ns)``).

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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

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


class Tables(NamedTuple):
    traces: str
    logs: str
    metrics: str


@dataclass
class Arrived:
    """What the tables hold so far (the wait loop's condition)."""

    spans: int = 0
    logs: int = 0
    points: int = 0
    jobs_counted: int = 0  # jobs.processed: the latest point of every series, summed
    durations_counted: int = 0  # job.duration: the latest count of every series, summed
    modern: bool = True

    def complete(self, sent: dict[str, Any]) -> bool:
        metrics = sent["metrics"]
        return (
            self.spans >= sent["spans"]
            and self.logs >= sent["logs"]
            and self.jobs_counted >= sum(metrics["jobs.processed"].values())
            and self.durations_counted >= metrics["job.duration"]
        )


def is_modern(config: Mapping[str, Any], database: str, metrics_table: str) -> bool | None:
    """Whether the metrics table has the modern profile's maps (else LEGACY's key/value arrays); None
    while it does not exist yet."""
    from automagik_telemetry_agent.clickhouse.query import run_query

    name = metrics_table.split(".", 1)[1]
    found = run_query(
        config,
        f"SELECT name FROM system.columns WHERE database = '{database}' AND table = '{name}' "
        "AND name IN ('resource_attributes', 'resource_keys')",
        direct=False,
    ).split()
    return None if not found else "resource_attributes" in found


def attribute(modern: bool, key: str, resource: bool = False) -> str:
    """SQL for one attribute's value (modern: a map; legacy: parallel arrays, '' when missing)."""
    if modern:
        return f"{'resource_attributes' if resource else 'attributes'}['{key}']"
    keys, values = ("resource_keys", "resource_values") if resource else ("attribute_keys", "attribute_values")
    return f"{values}[indexOf({keys}, '{key}')]"


def metrics_sql(table: str, where_env: str, modern: bool) -> str:
    """Per metric and outcome: series, points, and the sums of every series' latest value, histogram count
    and histogram sum. A series is a process (``process.pid``) and an attribute set; its points are
    cumulative, so its latest point is its total (``argMax(..., timestamp_ns)``)."""
    attributes = "mapKeys(attributes), mapValues(attributes)" if modern else "attribute_keys, attribute_values"
    latest = (
        f"SELECT metric_name, any(metric_type) AS m_type, any({attribute(modern, 'outcome')}) AS m_outcome, "
        "count() AS m_points, argMax(value_int, timestamp_ns) AS m_value, "
        "argMax(histogram_count, timestamp_ns) AS m_count, argMax(histogram_sum, timestamp_ns) AS m_sum "
        f"FROM {table} WHERE {where_env} "
        f"GROUP BY metric_name, {attribute(modern, 'process.pid', resource=True)}, {attributes}"
    )
    return (
        "SELECT metric_name, any(m_type), m_outcome, count(), sum(m_points), sum(m_value), sum(m_count), "
        f"sum(m_sum) FROM ({latest}) GROUP BY metric_name, m_outcome ORDER BY metric_name, m_outcome"
    )


def logs_sql(tables: Tables, where_env: str) -> str:
    """Per severity: records, those with a span id, those whose (trace id, span id) is a stored span of
    this run, and those carrying an exception."""
    return (
        "SELECT severity_text, any(severity_number), count(), countIf(span_id != ''), "
        f"countIf((trace_id, span_id) IN (SELECT trace_id, span_id FROM {tables.traces} WHERE {where_env})), "
        f"countIf(is_exception = 1) FROM {tables.logs} WHERE {where_env} "
        "GROUP BY severity_text ORDER BY severity_text"
    )


def arrived(config: Mapping[str, Any], tables: Tables, where_env: str, database: str) -> Arrived:
    from automagik_telemetry_agent.clickhouse.query import run_query

    def count(table: str) -> int:
        return int(run_query(config, f"SELECT count() FROM {table} WHERE {where_env}", direct=False).strip() or 0)

    got = Arrived(spans=count(tables.traces), logs=count(tables.logs))
    modern = is_modern(config, database, tables.metrics)
    if modern is None:
        return got
    got.modern = modern
    for row in tab_rows(run_query(config, metrics_sql(tables.metrics, where_env, modern), direct=False)):
        name, _, _, _, points, value, hcount, _ = row
        got.points += int(points)
        if name == "jobs.processed":
            got.jobs_counted += int(value)
        elif name == "job.duration":
            got.durations_counted += int(hcount)
    return got


def tab_rows(out: str) -> list[list[str]]:
    return [line.split("\t") for line in out.splitlines() if line]


class Checked(NamedTuple):
    ok: bool
    line: str


def report_logs(out: str, sent: dict[str, Any]) -> Checked:
    """The log table of the summary, and its totals line checked against what the workers sent."""
    rows = tab_rows(out)
    print(f"\n{'log severity':<20}{'number':>8}{'records':>9}{'in a span':>11}{'span found':>12}{'exception':>11}")
    for text, number, records, in_span, found, exceptions in rows:
        print(f"{text:<20}{number:>8}{records:>9}{in_span:>11}{found:>12}{exceptions:>11}")
    by_severity = {text: int(records) for text, _, records, *_ in rows}
    in_span = sum(int(r[3]) for r in rows)
    found = sum(int(r[4]) for r in rows)
    exceptions = sum(int(r[5]) for r in rows)
    stored = sum(by_severity.values())
    expected_exceptions = sent["logs_by_severity"].get("ERROR", 0)
    line = (
        f"logs sent {sent['logs']}, stored {stored} ({_counts(by_severity)}; "
        f"sent {_counts(sent['logs_by_severity'])}), "
        f"in a span {in_span} (sent {sent['logs_in_span']}, {found} with a stored span's ids), "
        f"exceptions {exceptions} (sent {expected_exceptions})"
    )
    ok = (
        stored == sent["logs"]
        and by_severity == sent["logs_by_severity"]
        and in_span == found == sent["logs_in_span"]
        and exceptions == expected_exceptions
    )
    return Checked(ok, line)


def report_metrics(out: str, sent: dict[str, Any]) -> Checked:
    """The metric table of the summary (latest point per series), checked against what the workers sent."""
    rows = tab_rows(out)
    print(f"\n{'metric (latest per series)':<34}{'type':>10}{'series':>8}{'points':>8}{'total':>8}")
    outcomes: dict[str, int] = {}
    durations, duration_sum = 0, 0.0
    for name, kind, outcome, series, points, value, hcount, hsum in rows:
        if kind == "HISTOGRAM":
            label, total = name, int(hcount)  # a histogram's total: its count
            durations, duration_sum = durations + total, duration_sum + float(hsum)
        else:
            label, total = f"{name}{{outcome={outcome}}}", int(value)
            if name == "jobs.processed":
                outcomes[outcome] = outcomes.get(outcome, 0) + total
        print(f"{label:<34}{kind:>10}{series:>8}{points:>8}{total:>8}")
    sent_metrics = sent["metrics"]
    mean = duration_sum / durations if durations else 0.0
    line = (
        f"metrics: jobs.processed {_counts(outcomes)} (sent {_counts(sent_metrics['jobs.processed'])}), "
        f"job.duration count {durations} (sent {sent_metrics['job.duration']}), mean {mean:.3f} ms"
    )
    ok = outcomes == sent_metrics["jobs.processed"] and durations == sent_metrics["job.duration"] and duration_sum > 0
    return Checked(ok, line)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{key} {value}" for key, value in sorted(counts.items())) or "none"


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
                "--otlp-listen",
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
            jobs = sent["metrics"]["job.duration"]
            print(
                f"demo: {WORKERS} worker processes sent {sent['spans']} spans, {sent['logs']} log records and "
                f"metrics over {jobs} jobs ({'all durable in the WAL' if sent['all_durable'] else 'NOT all durable'})"
            )
            database = config["clickhouse.database"]
            table = f"{database}.{config['clickhouse.table']}"
            tables = Tables(
                table,
                f"{database}.{config['clickhouse.logs_table']}",
                f"{database}.{config['clickhouse.metrics_table']}",
            )
            where_env = f"environment = '{environment}'"
            started = time.monotonic()
            got, problem = Arrived(), ""
            while time.monotonic() - started < SHIP_TIMEOUT_S and not got.complete(sent):
                time.sleep(0.2)
                try:  # through the agent only: the shipper may still be starting (and creating the tables)
                    got = arrived(config, tables, where_env, database)
                except QueryError as exc:
                    problem = str(exc)
                    continue
                problem = ""
            if problem:
                print(f"demo: {problem}", file=sys.stderr)
            print(
                f"demo: {got.spans} spans, {got.logs} log records and {got.points} metric points in {database} "
                f"after {time.monotonic() - started:.1f} s"
            )
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
            logs_out = run_query(config, logs_sql(tables, where_env), direct=False)
            metrics_out = run_query(config, metrics_sql(tables.metrics, where_env, got.modern), direct=False)
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
        logs_ok = report_logs(logs_out, sent)
        metrics_ok = report_metrics(metrics_out, sent)
        print(
            f"\nspans sent {sent['spans']}, stored {got_spans} ({unique} distinct span ids), errors {got_errors} "
            f"(sent {sent['errors']}); agent exited {code}"
        )
        print(logs_ok.line)
        print(metrics_ok.line)
        ok = (
            code == 0
            and sent["all_durable"]
            and sent["dropped"] == 0
            and got_by_name == sent["by_name"]
            and got_spans == unique == sent["spans"]
            and got_errors == sent["errors"]
            and logs_ok.ok
            and metrics_ok.ok
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
