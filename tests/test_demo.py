"""`make demo` (scripts/demo.py) runs end to end and its summary matches what the example sent.

The demo prints three tables read back with SQL queries from where the telemetry went (spans by name
with p95 and errors; log records by severity, with how many carry the ids of a stored span and an
exception; the metrics' latest point per series, summed), then one totals line per signal; these
tests parse them and compare them with the example's own counts: 4 workers x 500 jobs (a job.process
and a db.query span each, one jobs.processed increment and one job.duration value each) + one
worker.finished each; an INFO record every 100 jobs and one per worker at the end; a WARNING per large
query result and an ERROR (with the exception) per failed job, both logged inside the job's span.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
WORKERS, JOBS = 4, 500
EXPECTED_BY_NAME = {"db.query": WORKERS * JOBS, "job.process": WORKERS * JOBS, "worker.finished": WORKERS}
ROW = re.compile(r"^(\S+)\s+(\d+)\s+(\d+\.\d+)\s+(\d+)$", re.MULTILINE)
TOTALS = re.compile(
    r"spans sent (\d+), stored (\d+) \((\d+) distinct span ids\), errors (\d+) \(sent (\d+)\); "
    r"agent exited (-?\d+)"
)
EXPECTED_INFO_LOGS = WORKERS * (JOBS // 100) + WORKERS
LOG_ROW = re.compile(r"^(ERROR|INFO|WARNING)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$", re.MULTILINE)
LOG_TOTALS = re.compile(
    r"logs sent (\d+), stored (\d+) \((.*?); sent (.*?)\), in a span (\d+) \(sent (\d+), (\d+) with a stored "
    r"span's ids\), exceptions (\d+) \(sent (\d+)\)"
)
METRIC_ROW = re.compile(r"^(\S+)\s+(SUM|HISTOGRAM)\s+(\d+)\s+(\d+)\s+(\d+)$", re.MULTILINE)
METRIC_TOTALS = re.compile(
    r"metrics: jobs\.processed error (\d+), ok (\d+) \(sent error (\d+), ok (\d+)\), "
    r"job\.duration count (\d+) \(sent (\d+)\), mean (\d+\.\d+) ms"
)


def _run_demo(extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOMAGIK_TELEMETRY_")}
    env.update(extra_env)
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py")], capture_output=True, text=True, timeout=300, env=env
    )


def _check_summary(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {name: (int(count), float(p95), int(errors)) for name, count, p95, errors in ROW.findall(result.stdout)}
    assert {name: row[0] for name, row in rows.items()} == EXPECTED_BY_NAME, result.stdout
    totals = TOTALS.search(result.stdout)
    assert totals, result.stdout
    sent, stored, distinct, errors, errors_sent, agent_code = map(int, totals.groups())
    assert sent == stored == distinct == sum(EXPECTED_BY_NAME.values())
    assert errors == errors_sent == sum(row[2] for row in rows.values()) > 0  # only job.process fails
    assert rows["job.process"][2] == errors and rows["db.query"][2] == 0
    assert rows["job.process"][1] > 0  # a p95 was computed from real durations
    assert agent_code == 0
    _check_logs(result.stdout, span_errors=errors)
    _check_metrics(result.stdout, span_errors=errors)
    assert "demo: OK" in result.stdout


def _check_logs(stdout: str, span_errors: int) -> None:
    """Log records by severity: ERROR one per failed job (each with its exception), WARNING > 0, INFO fixed;
    every WARNING and ERROR inside a span that is in the traces table, no INFO in one."""
    rows = {text: tuple(map(int, rest)) for text, *rest in LOG_ROW.findall(stdout)}
    assert set(rows) == {"ERROR", "INFO", "WARNING"}, stdout
    numbers = {text: row[0] for text, row in rows.items()}
    assert numbers == {"ERROR": 17, "INFO": 9, "WARNING": 13}  # OTLP severity numbers
    _, records, in_span, found, exceptions = rows["ERROR"]
    assert records == in_span == found == exceptions == span_errors
    _, records, in_span, found, exceptions = rows["WARNING"]
    assert records == in_span == found > 0 and exceptions == 0
    assert rows["INFO"][1:] == (EXPECTED_INFO_LOGS, 0, 0, 0)
    totals = LOG_TOTALS.search(stdout)
    assert totals, stdout
    sent, stored, got_by_severity, sent_by_severity, in_span, in_span_sent, found, exceptions, exceptions_sent = (
        totals.groups()
    )
    assert int(sent) == int(stored) == sum(row[1] for row in rows.values())
    assert got_by_severity == sent_by_severity
    assert int(in_span) == int(in_span_sent) == int(found) == rows["ERROR"][1] + rows["WARNING"][1]
    assert int(exceptions) == int(exceptions_sent) == span_errors


def _check_metrics(stdout: str, span_errors: int) -> None:
    """The counter's latest point per series sums to the jobs (errors as the failed spans), the histogram
    counts every job; every series was exported more than once (cumulative points: flush and exit)."""
    rows = {
        label: (kind, int(series), int(points), int(total))
        for label, kind, series, points, total in METRIC_ROW.findall(stdout)
    }
    assert set(rows) == {"job.duration", "jobs.processed{outcome=error}", "jobs.processed{outcome=ok}"}, stdout
    assert rows["job.duration"][0] == "HISTOGRAM" and rows["jobs.processed{outcome=ok}"][0] == "SUM"
    assert rows["job.duration"][3] == WORKERS * JOBS
    assert rows["jobs.processed{outcome=error}"][3] == span_errors
    assert rows["jobs.processed{outcome=ok}"][3] == WORKERS * JOBS - span_errors
    for _, series, points, _ in rows.values():
        assert WORKERS <= series <= points  # a series per worker process and job kind (and outcome)
    totals = METRIC_TOTALS.search(stdout)
    assert totals, stdout
    error, ok, error_sent, ok_sent, durations, durations_sent, mean = totals.groups()
    assert (int(error), int(ok)) == (int(error_sent), int(ok_sent)) == (span_errors, WORKERS * JOBS - span_errors)
    assert int(durations) == int(durations_sent) == WORKERS * JOBS
    assert float(mean) > 0  # the histogram's sum came from real durations


@pytest.mark.chdb
def test_demo_embedded_summary_matches_what_the_example_sent() -> None:
    """No ClickHouse server: the demo ships into the embedded store and queries it through the agent."""
    pytest.importorskip("chdb", reason="the demo's default sink needs chdb-core (the embedded extra)")
    result = _run_demo({})
    assert "shipping to the embedded store" in result.stdout
    _check_summary(result)


@pytest.mark.clickhouse
def test_demo_against_a_server_when_the_endpoint_is_set(clickhouse: Any, clickhouse_db: str) -> None:
    """AUTOMAGIK_TELEMETRY_CLICKHOUSE_ENDPOINT set: the same demo against that server (schema apply first)."""
    result = _run_demo(
        {
            "AUTOMAGIK_TELEMETRY_CLICKHOUSE_ENDPOINT": clickhouse.url,
            "AUTOMAGIK_TELEMETRY_CLICKHOUSE_DATABASE": clickhouse_db,
        }
    )
    assert f"shipping to ClickHouse at {clickhouse.url}" in result.stdout, result.stdout + result.stderr
    _check_summary(result)
    assert int(clickhouse.query(f"SELECT count() FROM {clickhouse_db}.traces FORMAT TabSeparated").strip()) == sum(
        EXPECTED_BY_NAME.values()
    )
