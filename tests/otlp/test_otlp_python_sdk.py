"""The real OpenTelemetry Python SDK's OTLP/HTTP protobuf exporters -> the agent's receiver -> ClickHouse:
the 18.16 server (legacy tables) and chDB (modern tables), values compared column by column."""

from __future__ import annotations

import base64
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from agent_process import wait_until
from embedded.conftest import ask
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from shipper.shipper_helpers import apply_schema

from .conftest import OtlpAgent, post

SPANS, LOGS = 20, 10


@dataclass
class Store:
    """Where the agent shipped to, and how to ask it (TabSeparated rows)."""

    query: Callable[[str], str]
    legacy: bool

    def attr(self, key: str, column: str = "attributes") -> str:
        if self.legacy:
            prefix = "attribute" if column == "attributes" else "resource"
            return f"{prefix}_values[indexOf({prefix}_keys, '{key}')]"
        return f"{column}['{key}']"

    def rows(self, sql: str) -> list[list[str]]:
        return [line.split("\t") for line in self.query(sql).splitlines()]


@pytest.fixture(params=["server-18.16", "chdb"])
def shipped_to(
    request: pytest.FixtureRequest, otlp_agent: Callable[..., OtlpAgent], tmp_path: Path
) -> Iterator[tuple[OtlpAgent, Store]]:
    common = {"batch_wait": "100ms", "retry_base": "100ms"}
    if request.param == "chdb":
        pytest.importorskip("chdb")
        store_dir = Path(tempfile.mkdtemp(prefix="at-otlp-", dir="/tmp"))
        agent = otlp_agent(tmp_path / "agent", sink="embedded", embedded=str(store_dir), **common)
        yield agent, Store(lambda sql: ask(store_dir, sql.replace("{db}", "telemetry")) or "", legacy=False)
        shutil.rmtree(store_dir, ignore_errors=True)
        return
    clickhouse = request.getfixturevalue("clickhouse")
    database = request.getfixturevalue("clickhouse_db")
    apply_schema(clickhouse, database)
    agent = otlp_agent(
        tmp_path / "agent", sink="clickhouse", clickhouse_endpoint=clickhouse.url, database=database, **common
    )
    yield agent, Store(lambda sql: clickhouse.query(sql.replace("{db}", database)), legacy=True)


def _send_with_the_sdk(url: str) -> tuple[list[ReadableSpan], list[Any]]:
    resource = Resource.create({"service.name": "py-sdk", "deployment.environment": "test", "team": "core"})
    tracer_provider = TracerProvider(resource=resource)
    exporter = OTLPSpanExporter(endpoint=f"{url}/v1/traces")
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = tracer_provider.get_tracer("sdk.test.scope", "2.0.1")
    finished: list[ReadableSpan] = []
    with tracer.start_as_current_span("root", kind=SpanKind.SERVER) as root:
        for i in range(SPANS - 1):
            with tracer.start_as_current_span(f"child-{i:02d}", kind=SpanKind.CLIENT, attributes={"i": i}) as span:
                span.set_attribute("f", i + 0.25)
                span.set_attribute("tags", ["a", "b"])
                span.add_event("step", {"n": i})
                if i % 4 == 0:
                    span.set_status(Status(StatusCode.ERROR, f"bad {i}"))
            finished.append(span)  # type: ignore[arg-type]
    finished.append(root)  # type: ignore[arg-type]

    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=f"{url}/v1/logs")))
    handler = LoggingHandler(logger_provider=logger_provider)
    logger = logging.getLogger("otlp.sdk.test")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    with tracer.start_as_current_span("logging") as logging_span:
        for i in range(LOGS):
            logger.warning("log line %d", i, extra={"order": i})
    logger.removeHandler(handler)

    reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=f"{url}/v1/metrics"), 3_600_000)
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    meter = meter_provider.get_meter("sdk.test.meter", "3.1")
    meter.create_counter("jobs", unit="1").add(7, {"queue": "a"})
    meter.create_histogram("latency", unit="ms").record(12.5)
    meter.create_up_down_counter("in_flight").add(-3)
    assert meter_provider.force_flush(10_000)
    for provider in (tracer_provider, logger_provider, meter_provider):
        provider.shutdown()
    return finished, [logging_span]


def test_python_sdk_traces_logs_and_metrics_land_column_by_column(shipped_to: tuple[OtlpAgent, Store]) -> None:
    agent, store = shipped_to
    spans, (logging_span,) = _send_with_the_sdk(agent.otlp_url)

    def count(table: str) -> int:
        out = store.query(f"SELECT count() FROM {{db}}.{table}").strip()
        return int(out or 0)

    wait_until(
        lambda: count("traces") == SPANS + 1 and count("logs") == LOGS and count("metrics") >= 3,
        30,
        message="every span, log record and metric point shipped",
    )

    # ---- traces: each span as the SDK saw it
    got = {
        r[0]: r[1:]
        for r in store.rows(
            "SELECT span_name, trace_id, span_id, parent_span_id, span_kind, toString(duration_ns), status_code, "
            f"status_message, service_name, environment, {store.attr('i')}, {store.attr('f')}, {store.attr('tags')}, "
            f"{store.attr('otel.scope.name')}, {store.attr('otel.scope.version')}, "
            f"{store.attr('team', 'resource_attributes')}, events FROM {{db}}.traces"
        )
    }
    for span in spans:
        ctx = span.get_span_context()
        parent = f"{span.parent.span_id:016x}" if span.parent is not None else ""
        assert span.end_time is not None and span.start_time is not None
        i = span.attributes.get("i") if span.attributes else None
        expected = [
            f"{ctx.trace_id:032x}",
            f"{ctx.span_id:016x}",
            parent,
            "SERVER" if span.name == "root" else "CLIENT",
            str(span.end_time - span.start_time),
            "ERROR" if i is not None and i % 4 == 0 else "UNSET",
            f"bad {i}" if i is not None and i % 4 == 0 else "",
            "py-sdk",
            "test",
            "" if i is None else str(i),
            "" if i is None else f"{i + 0.25:g}",
            "" if i is None else '["a","b"]',
            "sdk.test.scope",
            "2.0.1",
            "core",
        ]
        assert got[span.name][:-1] == expected, span.name
        if i is not None:
            assert '"name":"step"' in got[span.name][-1] and f'"n":"{i}"' in got[span.name][-1].replace(" ", "")

    # ---- logs: body, severity, the span they were written in, scope, attributes
    trace_id = f"{logging_span.get_span_context().trace_id:032x}"
    span_id = f"{logging_span.get_span_context().span_id:016x}"
    logs = store.rows(
        "SELECT body, severity_number, severity_text, trace_id, span_id, scope_name, service_name, "
        f"{store.attr('order')} FROM {{db}}.logs ORDER BY timestamp_ns"
    )
    assert logs == [
        [f"log line {i}", "13", "WARN", trace_id, span_id, "otlp.sdk.test", "py-sdk", str(i)] for i in range(LOGS)
    ]

    # ---- metrics: one row per data point, the right type, value and scope
    metrics = {
        r[0]: r[1:]
        for r in store.rows(
            "SELECT metric_name, metric_type, aggregation_temporality, toString(is_monotonic), toString(value_double), "
            "toString(histogram_count), toString(histogram_sum), scope_name, scope_version, "
            f"{store.attr('queue')} FROM {{db}}.metrics"
        )
    }
    assert metrics["jobs"] == ["SUM", "CUMULATIVE", "1", "7", "0", "0", "sdk.test.meter", "3.1", "a"]
    assert metrics["in_flight"][:4] == ["SUM", "CUMULATIVE", "0", "-3"]
    assert metrics["latency"][:1] == ["HISTOGRAM"] and metrics["latency"][4:6] == ["1", "12.5"]
    assert agent.running


def test_a_json_body_of_the_same_export_lands_as_the_protobuf_one(shipped_to: tuple[OtlpAgent, Store]) -> None:
    """OTLP/JSON with hex ids, as the spec writes it (protobuf's own JSON mapping would give base64 ids)."""
    agent, store = shipped_to
    provider = TracerProvider(resource=Resource.create({"service.name": "json-path"}))
    kept = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(kept))
    tracer = provider.get_tracer("json.scope")
    for i in range(5):
        with tracer.start_as_current_span(f"json-{i}", attributes={"i": i}):
            pass
    provider.shutdown()
    memory = list(kept.get_finished_spans())
    request = encode_spans(memory)
    as_json = json_format.MessageToDict(request)
    for rs in as_json["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
    status, _, body = post(agent.otlp_port, "/v1/traces", orjson.dumps(as_json), "application/json", gzipped=True)
    assert (status, body) == (200, b"{}")
    status, _, body = post(agent.otlp_port, "/v1/traces", request.SerializeToString(), "application/x-protobuf")
    assert status == 200
    wait_until(lambda: store.query("SELECT count() FROM {db}.traces").strip() == "10", 30, message="10 rows")
    rows = store.rows("SELECT span_id, span_name, trace_id FROM {db}.traces ORDER BY span_name, span_id")
    # Each span twice (the two encodings are two different requests, so both are stored), with the same ids.
    assert [r[:2] for r in rows[::2]] == [r[:2] for r in rows[1::2]]
    assert {r[0] for r in rows} == {f"{s.get_span_context().span_id:016x}" for s in memory}
