"""End to end: the real `automagik-telemetry agent` (supervisor + children), real traffic, a real scrape.

The port is found the way an operator finds it: `automagik-telemetry status --json` (metrics.metrics_port).
"""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path
from typing import Any

import pytest
from agent_process import SOURCE_PATHS, AgentProcess, AgentStartError, run_cli, wait_until
from shipper.shipper_helpers import apply_schema, count

from .test_metrics_ingest import check_ingest_counters
from .traffic import Samples, scrape, send_known_traffic, value

pytest.importorskip("automagik_telemetry_agent.supervisor", reason="the supervisor (contracts 1-4) is not built yet")


def status(agent: AgentProcess) -> dict[str, Any]:
    done = run_cli("status", "--json", "--config", agent.config_path, "--socket", agent.socket_path, timeout=30)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def metrics_port(agent: AgentProcess) -> int:
    return wait_until(
        lambda: (status(agent).get("metrics") or {}).get("metrics_port"),
        15,
        message="status --json to show the metrics port",
    )


def scrape_when(port: int, ready: Any, what: str, timeout: float = 20.0) -> Samples:
    """Scrape until ``ready(samples)`` holds (children report about once a second)."""

    def attempt() -> Samples | None:
        samples = scrape(port)
        try:
            return samples if ready(samples) else None
        except KeyError:
            return None

    return wait_until(attempt, timeout, interval=0.2, message=what)


def test_scrape_of_a_running_agent_matches_the_traffic_across_an_ingest_restart(tmp_path: Path) -> None:
    with AgentProcess(tmp_path, metrics_listen="127.0.0.1:0").start() as agent:
        port = metrics_port(agent)
        first = send_known_traffic(agent.socket_path, valid=30)
        samples = scrape_when(
            port,
            lambda s: value(s, "ingest_records_received_total") == first.records,
            "the first traffic in the scrape",
        )
        check_ingest_counters(samples, first)
        assert value(samples, "wal_unshipped_records") == first.records
        assert value(samples, "child_up", child="ingest") == 1
        assert value(samples, "up") == 1
        assert any(n == "automagik_telemetry_build_info" for n, _ in samples)

        ingest_pid = status(agent)["children"]["ingest"]["pid"]
        os.kill(ingest_pid, signal.SIGKILL)
        wait_until(
            lambda: status(agent)["children"]["ingest"].get("pid") not in (None, ingest_pid),
            20,
            message="a new ingest child",
        )
        second = send_known_traffic(agent.socket_path, valid=12, first_span=1000)  # the supervisor kept the socket
        records = first.records + second.records
        samples = scrape_when(
            port, lambda s: value(s, "ingest_records_received_total") == records, "both runs' traffic in the scrape"
        )
        assert value(samples, "ingest_messages_received_total") == first.messages + second.messages
        assert value(samples, "ingest_received_bytes_total") == first.bytes + second.bytes
        assert value(samples, "ingest_rejected_messages_total", reason="bad_magic") == 2
        assert value(samples, "client_dropped_spans_total", reason="queue_full") == 7  # re-reported, not doubled
        assert value(samples, "child_restarts_total", child="ingest") == 1
        assert value(samples, "wal_unshipped_records") == records
        summary = status(agent)["metrics"]
        assert summary["records_received"] == records and summary["metrics_port"] == port


@pytest.mark.clickhouse
def test_scrape_of_an_agent_shipping_to_clickhouse_matches_the_table(
    clickhouse: Any, clickhouse_db: str, tmp_path: Path
) -> None:
    apply_schema(clickhouse, clickhouse_db)
    with AgentProcess(
        tmp_path,
        metrics_listen="127.0.0.1:0",
        sink="clickhouse",
        clickhouse_endpoint=clickhouse.url,
        database=clickhouse_db,
        batch_wait="200ms",
        retry_base="100ms",
    ).start() as agent:
        port = metrics_port(agent)
        t = send_known_traffic(agent.socket_path, valid=50)
        wait_until(lambda: count(clickhouse, clickhouse_db) == t.spans, 30, message="every span in ClickHouse")
        # Each child reports on its own clock: wait for both to have reported the end state.
        samples = scrape_when(
            port,
            lambda s: (
                value(s, "shipper_rows_total") == t.spans
                and value(s, "ingest_records_received_total") == t.records
                and value(s, "wal_unshipped_records") == 0
            ),
            "the shipped rows in the scrape",
        )
        check_ingest_counters(samples, t)
        assert value(samples, "shipper_rows_total") == count(clickhouse, clickhouse_db)
        assert value(samples, "shipper_batches_total") >= 1
        assert value(samples, "shipper_insert_duration_seconds_count") >= value(samples, "shipper_batches_total")
        assert value(samples, "shipper_dead_lettered_rows_total", reason="transform") == 0
        assert value(samples, "wal_oldest_unshipped_age_seconds") == 0
        assert value(samples, "child_up", child="shipper") == 1
        assert value(samples, "shipper_last_success_timestamp_seconds") > 0


def test_agent_exits_2_with_one_line_when_the_metrics_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        listen = f"127.0.0.1:{busy.getsockname()[1]}"
        agent = AgentProcess(tmp_path, metrics_listen=listen)
        with pytest.raises(AgentStartError) as err:
            agent.start()
    assert "exited with code 2" in str(err.value)
    lines = [line for line in agent.stderr_text.splitlines() if "metrics" in line and not line.startswith("---")]
    assert lines == [
        f"automagik-telemetry: config error: cannot serve metrics on {listen}: Address already in use: "
        'choose another --metrics-listen (metrics.listen), or "" to turn the endpoint off'
    ]


def _env_without_prometheus_client(tmp_path: Path) -> dict[str, str]:
    """Extra environment in which `import prometheus_client` fails, as when the agent extra is incomplete."""
    site = tmp_path / "no-prometheus-client"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['prometheus_client'] = None  # import fails\n")
    return {"PYTHONPATH": os.pathsep.join([str(site), *SOURCE_PATHS])}


def test_without_prometheus_client_an_agent_asked_for_metrics_exits_69_saying_what_to_install(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path, metrics_listen="127.0.0.1:0", env=_env_without_prometheus_client(tmp_path))
    with pytest.raises(AgentStartError) as err:
        agent.start()
    assert "exited with code 69" in str(err.value)
    lines = [line for line in agent.stderr_text.splitlines() if "prometheus-client" in line]
    assert lines == [
        "automagik-telemetry: metrics.listen is '127.0.0.1:0' but prometheus-client is not installed: "
        "install 'automagik-telemetry[agent]', or set metrics.listen = \"\""
    ]
    assert "Traceback" not in agent.stderr_text


def test_without_prometheus_client_and_no_endpoint_the_agent_still_stores_and_reports_status(tmp_path: Path) -> None:
    with AgentProcess(tmp_path, metrics_listen="", env=_env_without_prometheus_client(tmp_path)).start() as agent:
        traffic = send_known_traffic(agent.socket_path, valid=10)  # every accepted message was ACKed (durable)
        assert traffic.records == 10
        report = status(agent)
        assert sorted(report["children"]) == ["ingest"]  # the `none` sink of the default settings: no shipper
        assert all(child["state"] == "running" for child in report["children"].values())
        assert not report.get("metrics")  # nothing to aggregate without prometheus-client, and no crash
        assert report["metrics_unavailable"] == (
            "prometheus-client is not installed (install 'automagik-telemetry[agent]')"
        )
        human = run_cli("status", "--config", agent.config_path, "--socket", agent.socket_path, timeout=30)
        assert human.returncode == 0, human.stderr
        assert (
            "\ncounters:  unavailable: prometheus-client is not installed (install 'automagik-telemetry[agent]')\n"
        ) in human.stdout
        assert agent.terminate() == 0
    dumped = run_cli("wal", "dump", agent.wal_dir, timeout=30)
    assert dumped.returncode == 0, dumped.stderr
    assert dumped.stdout.count("\n") >= traffic.records  # the records are in the WAL, not just ACKed
    assert "Traceback" not in agent.stderr_text
