"""Logs and metrics on the same durable path as spans, end to end against the real ClickHouse 18.16 server:
the real client (track_log, the logging handler, instruments, track_metric) through a supervised agent
into the logs and metrics tables, values compared column by column; and a problem with one signal's
table never stops the others."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from agent_process import AgentProcess, RawClient, wait_until
from shipper.shipper_helpers import BASE_NS, RESOURCE, apply_schema, count, select_rows, span

from automagik_telemetry import AutomagikTelemetry, LoggingHandler, LogSeverity, TelemetryConfig

pytestmark = pytest.mark.clickhouse

LOG, METRIC = 2, 3


def _settings(clickhouse: Any, database: str, **more: Any) -> dict[str, Any]:
    return {
        "sink": "clickhouse",
        "clickhouse_endpoint": clickhouse.url,
        "database": database,
        "batch_wait": "100ms",
        "retry_base": "100ms",
        "retry_max": "300ms",
        "config_retry": "300ms",
        **more,
    }


def _kv(keys: list[str], values: list[str]) -> dict[str, str]:
    return dict(zip(keys, values, strict=True))


def test_logs_and_metrics_of_the_real_client_land_column_by_column(
    supervised: Callable[..., AgentProcess], clickhouse: Any, clickhouse_db: str
) -> None:
    apply_schema(clickhouse, clickhouse_db)
    agent = supervised(**_settings(clickhouse, clickhouse_db)).start()
    client = AutomagikTelemetry(
        config=TelemetryConfig(project_name="shop", version="2.0", socket_path=agent.socket_path, flush_interval=0.05)
    )
    logger = logging.getLogger("shop.checkout")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = LoggingHandler(client)
    logger.addHandler(handler)
    try:
        with client.span("checkout") as checkout:
            client.track_log("card declined", LogSeverity.WARN, {"order": 7})
            try:
                raise KeyError("sku-9")
            except KeyError:
                logger.exception("no stock for %s", "sku-9", extra={"customer": "c-1"})
        requests = client.counter("http.requests", unit="1")

        def work() -> None:
            for _ in range(10_000):
                requests.add(1, {"route": "/pay"})

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        latency = client.histogram("latency", unit="ms", boundaries=[10, 100])
        for value in (5, 50, 500):
            latency.record(value)
        client.track_metric("cpu.usage", 75.5, "gauge", {"core": "0"})
        assert client.flush(10)
    finally:
        logger.removeHandler(handler)
        client.shutdown(1.0)

    wait_until(lambda: count(clickhouse, clickhouse_db, "logs") == 2, 30, message="2 log rows")
    wait_until(lambda: count(clickhouse, clickhouse_db, "metrics") >= 3, 30, message="3 metric rows")
    declined, failed = select_rows(clickhouse, clickhouse_db, "logs")
    assert (declined["severity_number"], declined["severity_text"], declined["body"]) == (13, "WARN", "card declined")
    assert declined["trace_id"] == checkout.trace_id and declined["span_id"] == checkout.span_id
    assert _kv(declined["attribute_keys"], declined["attribute_values"]) == {"order": "7"}
    assert declined["service_name"] == "shop" and declined["project_version"] == "2.0"
    second = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(declined["timestamp_ns"] // 1_000_000_000))
    assert declined["timestamp"] == second and declined["observed_timestamp_ns"] >= declined["timestamp_ns"]
    assert (failed["severity_number"], failed["body"], failed["is_exception"]) == (17, "no stock for sku-9", 1)
    assert failed["exception_type"] == "KeyError" and failed["exception_message"] == "'sku-9'"
    assert "raise KeyError" in failed["exception_stacktrace"] and failed["source_file"].endswith("test_signals.py")
    assert failed["source_function"] == "test_logs_and_metrics_of_the_real_client_land_column_by_column"
    attributes = _kv(failed["attribute_keys"], failed["attribute_values"])
    assert attributes["customer"] == "c-1" and attributes["logger.name"] == "shop.checkout"
    assert not any(k.startswith(("exception.", "code.")) for k in attributes)  # lifted into columns

    metrics = {row["metric_name"]: row for row in select_rows(clickhouse, clickhouse_db, "metrics")}
    total = metrics["http.requests"]
    assert (total["metric_type"], total["value_int"], total["value_double"]) == ("SUM", 40_000, 40_000.0)
    assert (total["is_monotonic"], total["aggregation_temporality"], total["metric_unit"]) == (1, "CUMULATIVE", "1")
    assert _kv(total["attribute_keys"], total["attribute_values"]) == {"route": "/pay"}
    h = metrics["latency"]
    assert (h["metric_type"], h["histogram_count"], h["histogram_sum"]) == ("HISTOGRAM", 3, 555.0)
    assert (h["histogram_min"], h["histogram_max"]) == (5.0, 500.0)
    assert h["histogram_bucket_counts"] == [1, 1, 1] and h["histogram_explicit_bounds"] == [10.0, 100.0]
    cpu = metrics["cpu.usage"]
    assert (cpu["metric_type"], cpu["value_double"], cpu["value_int"]) == ("GAUGE", 75.5, 0)


def _log(i: int) -> bytes:
    return orjson.dumps({"timeUnixNano": BASE_NS + i, "severityNumber": 9, "body": {"stringValue": f"log {i}"}})


def _metric(i: int) -> bytes:
    point = {"timeUnixNano": BASE_NS + i, "asInt": i}
    return orjson.dumps(
        {"name": "jobs", "sum": {"dataPoints": [point], "aggregationTemporality": 2, "isMonotonic": True}}
    )


def test_a_missing_logs_table_holds_up_only_the_logs_and_they_all_arrive_once_it_exists(
    supervised: Callable[..., AgentProcess], clickhouse: Any, clickhouse_db: str
) -> None:
    apply_schema(clickhouse, clickhouse_db)
    clickhouse.query(f"DROP TABLE {clickhouse_db}.logs")
    agent = supervised(**_settings(clickhouse, clickhouse_db)).start()
    with RawClient(agent.socket_path) as client:
        seq = 0
        for i in range(300):
            seq += 1
            kind, line = ((1, span(i)), (LOG, _log(i)), (METRIC, _metric(i)))[i % 3]
            client.send_records([line], seq=seq, resource=RESOURCE, kind=kind)
        assert client.wait_ack(seq, timeout=20)
    wait_until(lambda: count(clickhouse, clickhouse_db) == 100, 30, message="every span")
    wait_until(lambda: count(clickhouse, clickhouse_db, "metrics") == 100, 30, message="every data point")
    wait_until(lambda: "schema apply" in agent.stderr_text and ".logs" in agent.stderr_text, 10, message="the fix")
    apply_schema(clickhouse, clickhouse_db)  # the fix: `schema apply` creates the missing table
    wait_until(lambda: count(clickhouse, clickhouse_db, "logs") == 100, 30, message="every log record, once")
    bodies = [row["body"] for row in select_rows(clickhouse, clickhouse_db, "logs")]
    assert sorted(bodies) == sorted(f"log {i}" for i in range(300) if i % 3 == 1)  # exactly once each
    assert count(clickhouse, clickhouse_db) == 100 and count(clickhouse, clickhouse_db, "metrics") == 100


def test_the_logs_table_dropped_while_three_signals_flow_holds_up_only_the_logs_until_schema_apply(
    supervised: Callable[..., AgentProcess], clickhouse: Any, clickhouse_db: str
) -> None:
    """The table goes away under a running shipper (its insert fails with 60, not at start-up): spans and
    metrics sent afterwards keep arriving, the logs wait in the WAL, and after ``schema apply`` every log
    sent after the drop arrives exactly once (the ones before it went with the dropped table)."""
    apply_schema(clickhouse, clickhouse_db)
    agent = supervised(**_settings(clickhouse, clickhouse_db)).start()
    lines = ((1, span), (LOG, _log), (METRIC, _metric))
    with RawClient(agent.socket_path) as client:
        seq = 0

        def send(first: int, last: int) -> None:
            nonlocal seq
            for i in range(first, last):
                seq += 1
                kind, make = lines[i % 3]
                client.send_records([make(i)], seq=seq, resource=RESOURCE, kind=kind)
            assert client.wait_ack(seq, timeout=20)

        send(0, 300)
        wait_until(lambda: count(clickhouse, clickhouse_db, "logs") == 100, 30, message="the first logs")
        clickhouse.query(f"DROP TABLE {clickhouse_db}.logs")
        for chunk in range(300, 900, 60):  # still flowing: 20 of each signal per chunk
            send(chunk, chunk + 60)
            time.sleep(0.1)
        wait_until(lambda: count(clickhouse, clickhouse_db) == 300, 30, message="every span, logs table gone")
        wait_until(lambda: count(clickhouse, clickhouse_db, "metrics") == 300, 30, message="every data point")
        wait_until(lambda: "schema apply" in agent.stderr_text and ".logs" in agent.stderr_text, 10, message="fix")
        apply_schema(clickhouse, clickhouse_db)
        send(900, 960)  # and the flow goes on after the fix
        wait_until(lambda: count(clickhouse, clickhouse_db, "logs") == 220, 30, message="the held-up logs")
        time.sleep(1.0)  # a duplicate would show up now
    bodies = [row["body"] for row in select_rows(clickhouse, clickhouse_db, "logs")]
    assert sorted(bodies) == sorted(f"log {i}" for i in range(300, 960) if i % 3 == 1)  # exactly once each
    assert count(clickhouse, clickhouse_db) == 320 and count(clickhouse, clickhouse_db, "metrics") == 320
