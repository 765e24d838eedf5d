"""Log records and metric data points from the client: shape, trace correlation, the logging handler,
in-process aggregation (exact counts across threads, exact buckets), series caps, 0.1.4's one-point
track_metric, and the export cadence."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from fake_agent import FakeAgent

from automagik_telemetry import AutomagikTelemetry, LoggingHandler, LogSeverity, MetricType, logging_handler
from automagik_telemetry.logging_handler import severity_of_level
from automagik_telemetry.logs import LogRecord

LOG, METRIC = 2, 3
MakeClient = Callable[..., AutomagikTelemetry]


def attrs(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {kv["key"]: next(iter(kv["value"].values())) for kv in items}


def points(metrics: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    out = []
    for metric in metrics:
        if metric["name"] == name:
            data = metric.get("sum") or metric.get("gauge") or metric.get("histogram")
            out += data["dataPoints"]
    return out


def test_a_log_inside_a_span_carries_its_trace_and_span_ids(sock_path: str, make_client: MakeClient) -> None:
    with FakeAgent(sock_path) as agent:
        client = make_client()
        with client.span("checkout") as span:
            client.track_log("card declined", LogSeverity.WARN, {"order": 7})
        client.track_log("outside", "error")
        assert client.flush(5)
        logs = agent.wait_for_records(LOG, 2)
        inside, outside = logs
        assert inside["traceId"] == span.trace_id and inside["spanId"] == span.span_id
        assert inside["severityNumber"] == 13 and inside["severityText"] == "WARN"
        assert inside["body"] == {"stringValue": "card declined"} and attrs(inside["attributes"]) == {"order": 7}
        assert outside["traceId"] == "" and outside["spanId"] == ""
        assert outside["severityNumber"] == 17 and outside["severityText"] == "ERROR"
        assert inside["timeUnixNano"] <= outside["timeUnixNano"]


@pytest.mark.parametrize(
    ("given", "number", "text"),
    [("debug", 5, "DEBUG"), ("WARNING", 13, "WARN"), ("critical", 21, "FATAL"), ("nonsense", 9, "INFO")],
)
def test_severity_names_are_accepted_in_any_case_and_an_unknown_one_is_info(
    sock_path: str, make_client: MakeClient, given: str, number: int, text: str
) -> None:
    with FakeAgent(sock_path) as agent:
        client = make_client()
        client.track_log("x", given)
        assert client.flush(5)
        (log,) = agent.wait_for_records(LOG, 1)
        assert (log["severityNumber"], log["severityText"]) == (number, text)


def test_the_logging_handler_turns_records_into_correlated_log_records(sock_path: str, make_client: MakeClient) -> None:
    logger = logging.getLogger("shop.payments")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    with FakeAgent(sock_path) as agent:
        client = make_client()
        handler = LoggingHandler(client)
        logger.addHandler(handler)
        try:
            with client.span("pay") as span:
                try:
                    raise ValueError("no funds")
                except ValueError:
                    logger.exception("payment %s failed", "p-1", extra={"customer": "c-9", "amount": 12.5})
            logger.debug("quiet")
            logging.getLogger("automagik_telemetry.internal").warning("never captured (our own logger)")
        finally:
            logger.removeHandler(handler)
        assert client.flush(5)
        logs = agent.wait_for_records(LOG, 2)
        assert len(logs) == 2
        failed, quiet = logs
        a = attrs(failed["attributes"])
        assert failed["body"] == {"stringValue": "payment p-1 failed"}
        assert (failed["severityNumber"], failed["severityText"]) == (17, "ERROR")
        assert failed["traceId"] == span.trace_id and failed["spanId"] == span.span_id
        assert a["logger.name"] == "shop.payments" and a["code.function"] == (
            "test_the_logging_handler_turns_records_into_correlated_log_records"
        )
        assert a["code.filepath"].endswith("test_client_logs_metrics.py") and a["code.lineno"] > 0
        assert a["customer"] == "c-9" and a["amount"] == 12.5
        assert a["exception.type"] == "ValueError" and a["exception.message"] == "no funds"
        assert "raise ValueError" in a["exception.stacktrace"]
        assert (quiet["severityNumber"], quiet["severityText"]) == (5, "DEBUG") and quiet["traceId"] == ""


def test_the_logging_handler_never_loops_or_raises(sock_path: str, make_client: MakeClient) -> None:
    logger = logging.getLogger("shop.loop")
    logger.propagate = False
    with FakeAgent(sock_path) as agent:
        client = make_client()
        handler = LoggingHandler(client)

        class Hostile:
            def __str__(self) -> str:
                logger.error("logged while the handler is busy")  # re-entrant: not captured again
                raise RuntimeError("cannot render")

        logger.addHandler(handler)
        try:
            logger.error("%s %s", "only one arg")  # bad %-args: the raw message is kept
            logger.error(Hostile())  # str() raises: counted, never raised into the app
        finally:
            logger.removeHandler(handler)
        assert client.flush(5)
        logs = agent.wait_for_records(LOG, 1)
        assert [log["body"]["stringValue"] for log in logs] == ["%s %s"]
        assert client.stats()["internal_errors"] >= 1


def test_a_counter_added_by_four_threads_lands_as_the_exact_sum(sock_path: str, make_client: MakeClient) -> None:
    with FakeAgent(sock_path) as agent:
        client = make_client()
        requests = client.counter("http.requests", unit="1", description="requests served")

        def work() -> None:
            for _ in range(10_000):
                requests.add(1, {"route": "/cart"})

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert client.flush(5)
        metrics = agent.wait_for_records(METRIC, 1)
        (point,) = points(metrics, "http.requests")
        metric = next(m for m in metrics if m["name"] == "http.requests")
        assert point["asInt"] == 40_000 and attrs(point["attributes"]) == {"route": "/cart"}
        assert metric["sum"]["isMonotonic"] is True and metric["sum"]["aggregationTemporality"] == 2
        assert metric["unit"] == "1" and metric["description"] == "requests served"
        assert point["startTimeUnixNano"] <= point["timeUnixNano"]


def test_a_counter_is_cumulative_across_exports_and_ignores_negative_adds(
    sock_path: str, make_client: MakeClient
) -> None:
    with FakeAgent(sock_path) as agent:
        client = make_client()
        c = client.counter("jobs")
        c.add(2)
        assert client.flush(5)
        c.add(3)
        c.add(-10)  # a counter only goes up
        assert client.flush(5)
        agent.wait_for_records(METRIC, 2)
        assert [p["asInt"] for p in points(agent.records(METRIC), "jobs")] == [2, 5]
        assert client.stats()["metric_errors"] == 1


def test_histogram_buckets_count_sum_min_and_max_are_exact(sock_path: str, make_client: MakeClient) -> None:
    with FakeAgent(sock_path) as agent:
        client = make_client()
        latency = client.histogram("latency", unit="ms", boundaries=[10, 100])
        for value in (1, 10, 10.5, 99, 100, 101, 5000):
            latency.record(value, {"op": "get"})
        latency.record(float("nan"), {"op": "get"})  # counted as an error, not recorded
        up_down = client.up_down_counter("queue.depth")
        up_down.add(5)
        up_down.add(-7)
        gauge = client.gauge("temperature")
        gauge.set(20.5, {"room": "a"})
        gauge.set(21.0, {"room": "a"})
        assert client.flush(5)
        metrics = agent.wait_for_records(METRIC, 3)
        (h,) = points(metrics, "latency")
        assert h["bucketCounts"] == [2, 3, 2] and h["explicitBounds"] == [10.0, 100.0]
        assert h["count"] == 7 and h["sum"] == pytest.approx(5321.5) and (h["min"], h["max"]) == (1.0, 5000.0)
        assert [p["asInt"] for p in points(metrics, "queue.depth")] == [-2]
        assert next(m for m in metrics if m["name"] == "queue.depth")["sum"]["isMonotonic"] is False
        assert [p["asDouble"] for p in points(metrics, "temperature")] == [21.0]


def test_histogram_boundaries_must_increase() -> None:
    client = AutomagikTelemetry(
        config=__import__("automagik_telemetry").TelemetryConfig(project_name="p", version="1", enabled=False)
    )
    with pytest.raises(ValueError, match="strictly increasing"):
        client.histogram("h", boundaries=[5, 1])


def test_attribute_sets_beyond_the_cap_go_to_one_overflow_series_and_are_counted(
    sock_path: str, make_client: MakeClient
) -> None:
    with FakeAgent(sock_path) as agent:
        client = make_client(max_metric_series=3)
        c = client.counter("by.user")
        for user in range(10):
            c.add(1, {"user": user})
        assert client.flush(5)
        metrics = agent.wait_for_records(METRIC, 4)
        series = {tuple(sorted(attrs(p["attributes"]).items())): p["asInt"] for p in points(metrics, "by.user")}
        assert series == {(("user", 0),): 1, (("user", 1),): 1, (("user", 2),): 1, (("otel.metric.overflow", True),): 7}
        assert client.stats()["metric_series_overflow"] == 7


def test_track_metric_sends_one_data_point_per_call_with_0_1_4_meaning(sock_path: str, make_client: MakeClient) -> None:
    with FakeAgent(sock_path) as agent:
        client = make_client()
        client.track_metric("cpu.usage", 75.5, attributes={"core": "0"})
        client.track_metric("api.calls", 1, MetricType.COUNTER)
        client.track_metric("api.latency", 123.45, "histogram", {"endpoint": "/v1"})
        client.track_metric("api.calls", 1, "COUNTER")
        assert client.flush(5)
        metrics = agent.wait_for_records(METRIC, 4)
        assert [m["name"] for m in metrics] == ["cpu.usage", "api.calls", "api.latency", "api.calls"]
        assert metrics[0]["gauge"]["dataPoints"][0]["asDouble"] == 75.5
        assert [m["sum"]["dataPoints"][0]["asInt"] for m in metrics if "sum" in m] == [1, 1]
        h = metrics[2]["histogram"]["dataPoints"][0]
        assert (h["count"], h["sum"], h["min"], h["max"], h["bucketCounts"]) == (1, 123.45, 123.45, 123.45, [1])


def test_instruments_are_exported_every_metrics_interval_without_a_flush(
    sock_path: str, make_client: MakeClient
) -> None:
    with FakeAgent(sock_path) as agent:
        client = make_client(metrics_interval=0.2)
        client.counter("ticks").add(1)
        client.track_event("start")  # starts the sender thread
        deadline = time.monotonic() + 5
        while len(points(agent.records(METRIC), "ticks")) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(points(agent.records(METRIC), "ticks")) >= 2  # one export per interval


def test_spans_logs_and_metrics_travel_in_messages_of_one_kind_each(sock_path: str, make_client: MakeClient) -> None:
    with FakeAgent(sock_path) as agent:
        client = make_client()
        for i in range(5):
            client.track_event(f"e{i}")
            client.track_log(f"l{i}")
            client.track_metric("m", i)
        assert client.flush(5)
        agent.wait_for_records(METRIC, 5)
        shape = {1: "startTimeUnixNano", 2: "severityNumber", 3: "name"}
        for message in agent.messages:  # every record of a message is of the message's kind
            assert all(shape[message.kind] in record for record in message.records)
            assert message.kind != 1 or not any("severityNumber" in r or "sum" in r for r in message.records)
        assert [len(agent.records(kind)) for kind in (1, 2, 3)] == [5, 5, 5]
        assert [r["body"]["stringValue"] for r in agent.records(LOG)] == [f"l{i}" for i in range(5)]


def _reference_line(record: logging.LogRecord, max_length: int) -> bytes:
    """The line the handler's record must write: every attribute in one dict, rendered by ``key_values``."""
    ref = LogRecord(record.getMessage(), severity_of_level(record.levelno).value, record.levelname)
    ref.attributes = logging_handler._attributes(record, max_length)
    ref.time_ns = ref.observed_ns = int(record.created * 1_000_000_000)
    ref.trace_id = ref.span_id = 0
    return ref.to_line(max_length)


def test_the_handler_writes_the_same_line_with_or_without_its_call_site_cache() -> None:
    log = logging.getLogger("app.orders")
    try:
        raise ValueError("card declined")
    except ValueError:
        exc_info = sys.exc_info()
    records = [
        log.makeRecord("app.orders", logging.INFO, "/srv/orders.py", 42, "order %s paid", (7,), None, "pay"),
        log.makeRecord("app.orders", logging.INFO, "/srv/orders.py", 42, "order %s paid", (8,), None, "pay"),
        log.makeRecord("app.orders", logging.WARNING, "/srv/orders.py", 43, "slow", (), None, "pay", {"ms": 912}),
        log.makeRecord("app.orders", logging.ERROR, "/srv/orders.py", 44, "failed", (), exc_info, "pay"),
        log.makeRecord("app.x", logging.DEBUG, "/srv/x.py", 1, "x" * 300, (), None, "f", {"_private": 1}),
    ]
    records[1].threadName = "worker-2"  # another thread at the same site: its own cached text
    records[4].exc_text = "Traceback: formatted by another handler"
    for max_length in (4096, 16):
        for record in records:
            handled = logging_handler._HandledRecord(record, record.getMessage(), severity_of_level(record.levelno))
            handled.trace_id = handled.span_id = 0
            line = handled.to_line(max_length)
            assert line == _reference_line(record, max_length)
            assert handled.to_line(max_length) == line  # written again: the same line


def test_the_call_site_cache_is_bounded() -> None:
    log = logging.getLogger("app.many")
    for i in range(logging_handler._MAX_SITES + 10):
        record = log.makeRecord("app.many", logging.INFO, "/srv/many.py", i, "m", (), None, "f")
        logging_handler._HandledRecord(record, "m", LogSeverity.INFO).to_line(4096)
        assert len(logging_handler._SITES) <= logging_handler._MAX_SITES
