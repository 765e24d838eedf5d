"""The embedded sink with the real agent: `query` with the agent running and stopped, kill -9 of the
shipper while it ships, and the one-line answer when chDB is not installed."""

from __future__ import annotations

import os
import random
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from agent_process import AgentProcess, RawClient, agent_env, run_cli, wait_until

from automagik_telemetry_agent.clickhouse.chdb import lock_holder
from automagik_telemetry_agent.clickhouse.query_server import SOCKET_NAME
from automagik_telemetry_agent.wal.cursor import read_cursor

from .conftest import ask, shipper_pid, span_id, span_line, wait_count, wait_gone

pytestmark = pytest.mark.chdb

BASE_NS = 1_700_000_000_000_000_000
RESOURCE = b'{"attributes":[{"key":"service.name","value":{"stringValue":"embedded-test"}}]}'


def send_spans(agent: AgentProcess, first: int, count: int, per_message: int = 100, errors_every: int = 0) -> None:
    """Spans ``first`` .. ``first + count - 1``, acknowledged (durable) before returning."""
    with RawClient(agent.socket_path) as client:
        seq = 0
        for start in range(first, first + count, per_message):
            seq += 1
            lines = [
                span_line(i, error=bool(errors_every) and i % errors_every == 0)
                for i in range(start, min(start + per_message, first + count))
            ]
            client.send_records(lines, seq, resource=RESOURCE)
        assert client.wait_ack(seq, timeout=30)


def test_query_answers_through_the_running_agent_and_directly_once_it_stopped(
    embedded_agent: Callable[..., AgentProcess], store_dir: Path
) -> None:
    agent = embedded_agent(store_dir)
    send_spans(agent, 0, 500, errors_every=50)
    wait_count(store_dir, 500)
    holder = shipper_pid(agent.pid)
    assert holder is not None and lock_holder(str(store_dir)) == holder  # the shipper holds the store ...
    sql = "SELECT count(), uniqExact(span_id), countIf(status_code = 'ERROR') FROM telemetry.traces"
    running = run_cli("query", "--embedded", str(store_dir), sql)
    # ... so this answer came through its socket: opening the store directly is impossible meanwhile.
    assert (running.returncode, running.stdout, running.stderr) == (0, "500\t500\t10\n", "")
    pretty = run_cli(
        "query",
        "--embedded",
        str(store_dir),
        "--format",
        "JSONEachRow",
        "SELECT span_name, count() AS n FROM telemetry.traces GROUP BY span_name ORDER BY span_name",
    )
    assert pretty.stdout.splitlines()[0] == '{"span_name":"op-0","n":100}', pretty.stderr

    assert agent.terminate() == 0
    wait_gone(store_dir / SOCKET_NAME)
    stopped = run_cli("query", "--embedded", str(store_dir), sql)
    assert (stopped.returncode, stopped.stdout, stopped.stderr) == (0, "500\t500\t10\n", "")

    # And the agent takes its store back afterwards: what it ships next is queryable again.
    agent = embedded_agent(store_dir)
    send_spans(agent, 500, 100)
    wait_count(store_dir, 600)


def test_query_is_read_only_and_says_so_in_one_line(
    embedded_agent: Callable[..., AgentProcess], store_dir: Path
) -> None:
    agent = embedded_agent(store_dir)
    send_spans(agent, 0, 50)
    wait_count(store_dir, 50)
    for statement in (
        "DROP TABLE telemetry.traces",
        "INSERT INTO telemetry.traces (span_id) VALUES ('x')",
        "SELECT * FROM file('/etc/passwd', 'LineAsString')",
    ):
        refused = run_cli("query", "--embedded", str(store_dir), statement)
        assert refused.returncode == 2, refused
        assert refused.stderr.startswith("automagik-telemetry: `automagik-telemetry query` is read-only")
        assert refused.stderr.count("\n") == 1 and refused.stdout == ""
    assert ask(store_dir, "SELECT count() FROM telemetry.traces") == "50\n"
    agent.terminate()
    refused = run_cli("query", "--embedded", str(store_dir), "DROP TABLE telemetry.traces")  # directly, too
    assert refused.returncode == 2 and "read-only" in refused.stderr
    assert run_cli("query", "--embedded", str(store_dir), "SELECT count() FROM telemetry.traces").stdout == "50\n"


def stored_rows(store: Path) -> int:
    """Rows of telemetry.traces committed to disk, read from the MergeTree parts (count.txt of every part
    no other part covers; a part being written is a ``tmp_insert_*`` directory until its commit renames
    it), so it works while the holder is frozen."""
    table = store / "data" / "telemetry" / "traces"
    parts = []
    for name in os.listdir(table):
        m = re.fullmatch(r"([0-9A-Za-z]+)_(\d+)_(\d+)_(\d+)(?:_\d+)?", name)  # not tmp_insert_..., detached
        if m and (table / name / "count.txt").exists():
            parts.append((name, m.group(1), int(m.group(2)), int(m.group(3))))
    return sum(
        int((table / name / "count.txt").read_text())
        for name, part, lo, hi in parts
        if not any(o != name and op == part and olo <= lo and hi <= ohi for o, op, olo, ohi in parts)
    )


def test_kill9_of_the_shipper_while_it_ships_loses_and_duplicates_nothing(
    embedded_agent: Callable[..., AgentProcess], store_dir: Path
) -> None:
    total, per_batch = 6000, 40
    # One WAL record per batch, many small batches, paced: the shipper is mid-stream for a few seconds.
    agent = embedded_agent(store_dir, batch_size=per_batch, max_rows_per_second=2500, retry_base="50ms")
    send_spans(agent, 0, total, per_message=per_batch)

    def shipped() -> int:
        return int(ask(store_dir, "SELECT count() FROM telemetry.traces") or 0)

    # 1. At a random moment while it ships.
    wait_until(lambda: shipped() >= total * 0.25, 30, interval=0.01, message="a quarter shipped")
    first = shipper_pid(agent.pid)
    assert first is not None
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: shipper_pid(agent.pid) not in (None, first) and shipped(), 30, message="a new shipper")

    # 2. In the window the dedup token exists for: the store has the batch, the cursor has not moved.
    # Freeze the shipper at random moments and look at the disk until that is the case, then kill it.
    rng = random.Random(7)
    caught = None
    for _ in range(3000):
        pid = shipper_pid(agent.pid)
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        committed = read_cursor(agent.wal_dir).seq * per_batch
        stored = stored_rows(store_dir)
        if stored > committed:
            os.kill(pid, signal.SIGKILL)
            caught = (stored, committed)
            break
        os.kill(pid, signal.SIGCONT)
        assert committed < total, "shipping ended before the window was caught"
        time.sleep(rng.uniform(0, 0.004))
    assert caught is not None and caught[0] - caught[1] == per_batch, caught  # one stored, uncommitted batch
    # No SIGCONT after it: SIGKILL ends a stopped process too, and the supervisor may have reaped it already.

    wait_until(
        lambda: shipped() >= total and read_cursor(agent.wal_dir).seq == total // per_batch,
        60,
        message="everything shipped and committed",
    )
    # Exactly the spans sent: none missing, none twice.
    assert ask(store_dir, "SELECT count(), uniqExact(span_id) FROM telemetry.traces") == f"{total}\t{total}\n"
    ids = set((ask(store_dir, "SELECT span_id FROM telemetry.traces") or "").split())
    assert ids == {span_id(i) for i in range(total)}
    assert "resending the batch" in agent.stderr_text  # the stored batch was sent again, and dropped by token
    assert agent.terminate() == 0


def _without_chdb(tmp_path: Path) -> dict[str, str]:
    """An environment in which `import chdb` fails, as when the embedded extra is not installed."""
    site = tmp_path / "no-chdb"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['chdb'] = None  # `import chdb` fails\n")
    env = agent_env()
    env["PYTHONPATH"] = f"{site}{os.pathsep}{env['PYTHONPATH']}"
    return env


def test_without_the_embedded_extra_every_entry_point_says_what_to_install(tmp_path: Path) -> None:
    env = _without_chdb(tmp_path)
    store = tmp_path / "store"
    common = [
        "--config",
        "/dev/null",
        "--wal-dir",
        str(tmp_path / "wal"),
        "--socket",
        str(tmp_path / "a.sock"),
        "--wal-min-free",
        "0",
        "--metrics-listen",
        "",
        "--embedded",
        str(store),
    ]
    expected = (
        "automagik-telemetry: the embedded sink needs chDB, which is not installed: install "
        "'automagik-telemetry[embedded]' (pip install chdb-core), or use --sink clickhouse / --sink none\n"
    )
    for command in (["agent", *common], ["shipper", *common]):
        result = run_cli(*command, env=env, timeout=30)
        assert (result.returncode, result.stderr) == (69, expected), command
    store.mkdir()
    query = run_cli("query", "--embedded", str(store), "SELECT 1", env=env, timeout=30)
    assert (query.returncode, query.stderr) == (69, expected)


def test_embedded_flag_alone_selects_the_embedded_sink(tmp_path: Path) -> None:
    from automagik_telemetry_agent.config import load_config

    config = load_config("/dev/null", {"embedded.dir": str(tmp_path)}, env={})
    assert (config["sink"], config.sources["sink"]) == ("embedded", "flag (--embedded)")
    explicit: dict[str, Any] = {"embedded.dir": str(tmp_path), "sink": "none"}
    assert load_config("/dev/null", explicit, env={})["sink"] == "none"
    from_env = load_config("/dev/null", {}, env={"AUTOMAGIK_TELEMETRY_EMBEDDED_DIR": str(tmp_path)})
    assert from_env["sink"] == "clickhouse"  # only the flag implies it; the env var just names the directory


def test_a_direct_query_by_another_user_than_the_owner_is_refused(store_dir: Path) -> None:
    """chDB writes into the store it opens: root querying the stopped agent's store could leave files the
    agent's user cannot touch, so the direct path insists on the owner."""
    store_dir.mkdir()
    try:
        os.chown(store_dir, 65534, 65534)  # nobody
    except PermissionError:
        pytest.skip("needs root to give the directory another owner")
    result = run_cli("query", "--embedded", str(store_dir), "SELECT 1")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"automagik-telemetry: the embedded store {store_dir} belongs to user ")
    assert "run the query as that user" in result.stderr and result.stderr.count("\n") == 1
    assert sorted(os.listdir(store_dir)) == []  # nothing was opened or created


def test_logs_and_metrics_of_the_real_client_land_in_the_embedded_store(
    embedded_agent: Callable[..., AgentProcess], store_dir: Path
) -> None:
    from automagik_telemetry import AutomagikTelemetry, LogSeverity, TelemetryConfig

    agent = embedded_agent(store_dir)
    client = AutomagikTelemetry(
        config=TelemetryConfig(project_name="shop", version="2.0", socket_path=agent.socket_path, flush_interval=0.05)
    )
    try:
        with client.span("checkout") as checkout:
            client.track_log("card declined", LogSeverity.WARN, {"order": 7})
        client.counter("http.requests").add(40, {"route": "/pay"})
        h = client.histogram("latency", boundaries=[10, 100])
        for value in (5, 50, 500):
            h.record(value)
        assert client.flush(10)
    finally:
        client.shutdown(1.0)

    def logs() -> str | None:
        return ask(store_dir, "SELECT count() FROM telemetry.logs")

    wait_until(lambda: logs() == "1\n", 30, message="the log row")

    def series() -> str | None:  # cumulative points: one per series and export (flush, then shutdown)
        return ask(store_dir, "SELECT uniqExact(metric_name) FROM telemetry.metrics")

    wait_until(lambda: series() == "2\n", 30, message="both series")
    row = ask(
        store_dir,
        "SELECT severity_number, severity_text, body, trace_id, span_id, attributes['order'], service_name "
        "FROM telemetry.logs",
    )
    assert row == f"13\tWARN\tcard declined\t{checkout.trace_id}\t{checkout.span_id}\t7\tshop\n"
    metrics = ask(
        store_dir,
        "SELECT metric_name, argMax(metric_type, timestamp_ns), argMax(value_int, timestamp_ns), "
        "argMax(attributes['route'], timestamp_ns), argMax(histogram_count, timestamp_ns), "
        "argMax(histogram_sum, timestamp_ns), argMax(histogram_bucket_counts, timestamp_ns) "
        "FROM telemetry.metrics GROUP BY metric_name ORDER BY metric_name",
    )
    assert metrics == "http.requests\tSUM\t40\t/pay\t0\t0\t[]\nlatency\tHISTOGRAM\t0\t\t3\t555\t[1,1,1]\n"


def test_kill9_of_the_shipper_with_the_three_signals_mixed_loses_and_duplicates_nothing(
    embedded_agent: Callable[..., AgentProcess], store_dir: Path
) -> None:
    """Spans, log records and data points interleaved in the WAL, the shipper SIGKILLed at three random
    moments while its three consumers ship: every acknowledged item is in its table exactly once (the
    store deduplicates a re-sent batch by its token, per table)."""
    per_signal, per_message = 1500, 30
    agent = embedded_agent(store_dir, batch_size=per_message * 2, max_rows_per_second=3000, retry_base="50ms")
    with RawClient(agent.socket_path) as client:
        seq = 0
        for start in range(0, per_signal, per_message):
            numbers = range(start, start + per_message)
            for kind, lines in (
                (1, [span_line(i) for i in numbers]),
                (
                    2,
                    [orjson.dumps({"timeUnixNano": BASE_NS + i, "body": {"stringValue": f"log {i}"}}) for i in numbers],
                ),
                (
                    3,
                    [
                        orjson.dumps(
                            {"name": "n", "gauge": {"dataPoints": [{"timeUnixNano": BASE_NS + i, "asInt": i}]}}
                        )
                        for i in numbers
                    ],
                ),
            ):
                seq += 1
                client.send_records(lines, seq, resource=RESOURCE, kind=kind)
        assert client.wait_ack(seq, timeout=30)

    def counts() -> tuple[int, ...]:
        out = ask(
            store_dir,
            "SELECT (SELECT count() FROM telemetry.traces), (SELECT count() FROM telemetry.logs), "
            "(SELECT count() FROM telemetry.metrics)",
        )
        return tuple(int(x) for x in out.split()) if out else (0, 0, 0)

    rng = random.Random(11)
    for round_ in range(3):
        target = 3 * per_signal * (round_ + 1) / 5
        wait_until(lambda: sum(counts()) >= target, 60, interval=0.01, message="shipping")  # noqa: B023
        time.sleep(rng.uniform(0, 0.3))
        pid = shipper_pid(agent.pid)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: shipper_pid(agent.pid) not in (None, pid), 30, message="a new shipper")  # noqa: B023
    wait_until(lambda: counts() == (per_signal,) * 3, 90, message="every item of every signal, once")
    unique = ask(
        store_dir,
        "SELECT (SELECT uniqExact(span_id) FROM telemetry.traces), (SELECT uniqExact(body) FROM telemetry.logs), "
        "(SELECT uniqExact(value_int) FROM telemetry.metrics)",
    )
    assert unique == f"{per_signal}\t{per_signal}\t{per_signal}\n"
    assert agent.terminate() == 0
