"""Recording API: span shape on the wire, parenting, exceptions, events, decorator, disabled mode."""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import re
import threading
from collections.abc import Callable
from typing import Any

import pytest
from fake_agent import FakeAgent
from hypothesis import given
from hypothesis import strategies as st

from automagik_telemetry import AutomagikTelemetry, Span, SpanKind, StatusCode, TelemetryConfig
from automagik_telemetry.span import NOOP_SPAN, current_span

HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")
MakeClient = Callable[..., AutomagikTelemetry]


def by_name(spans: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {span["name"]: span for span in spans}


def attrs(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {item["key"]: next(iter(item["value"].values())) for item in items}


def deliver(client: AutomagikTelemetry, agent: FakeAgent, count: int) -> list[dict[str, Any]]:
    assert client.flush(5.0)
    spans = agent.wait_for_spans(count)
    assert len(spans) == count
    return spans


def test_span_arrives_with_otlp_shape(sock_path: str, make_client: MakeClient) -> None:
    with FakeAgent(sock_path) as agent:
        client = make_client(resource_attributes={"team": "core"})
        with client.span("db.query", attributes={"db.system": "pg"}, kind=SpanKind.CLIENT) as span:
            span.set_attribute("rows", 3)
            span.set_attributes({"ok": True, "ratio": 0.5})
            span.set_status(StatusCode.OK, "fine")
        (record,) = deliver(client, agent, 1)
        assert set(record) == {
            "traceId",
            "spanId",
            "parentSpanId",
            "name",
            "kind",
            "startTimeUnixNano",
            "endTimeUnixNano",
            "attributes",
            "status",
            "events",
        }
        assert HEX32.match(record["traceId"]) and HEX16.match(record["spanId"])
        assert record["traceId"] != "0" * 32 and record["spanId"] != "0" * 16
        assert record["parentSpanId"] == ""
        assert record["name"] == "db.query" and record["kind"] == 3
        assert isinstance(record["startTimeUnixNano"], int)
        assert record["startTimeUnixNano"] <= record["endTimeUnixNano"]
        assert attrs(record["attributes"]) == {"db.system": "pg", "rows": 3, "ok": True, "ratio": 0.5}
        assert record["status"] == {"code": 1, "message": "fine"}
        assert record["events"] == []
        assert (record["traceId"], record["spanId"]) == (span.trace_id, span.span_id)
        resource = attrs(agent.messages[0].resource["attributes"])
        assert resource["service.name"] == "test-app"
        assert resource["project.name"] == "test-app" and resource["project.version"] == "1.2.3"
        assert resource["deployment.environment"] == "development"
        assert resource["process.pid"] == os.getpid()
        assert resource["telemetry.sdk.name"] == "automagik-telemetry"
        assert resource["telemetry.sdk.version"] == "0.2.0"
        assert resource["team"] == "core"
        for key in ("host.name", "os.type", "os.version", "process.runtime.name", "process.runtime.version"):
            assert resource[key]


def test_nested_spans_share_trace_and_link_parents(sock_path: str, make_client: MakeClient) -> None:
    with FakeAgent(sock_path) as agent:
        client = make_client()
        with client.span("root") as root:
            assert current_span() is root
            with client.span("child") as child:
                with client.span("grandchild"):
                    pass
                client.track_event("event-in-child")
            with client.span("sibling"):
                pass
        assert current_span() is None
        with client.span("other-root"):
            pass
        spans = by_name(deliver(client, agent, 6))
        trace = spans["root"]["traceId"]
        assert root.trace_id == trace and child.trace_id == trace
        assert spans["root"]["parentSpanId"] == ""
        assert spans["child"]["parentSpanId"] == spans["root"]["spanId"]
        assert spans["grandchild"]["parentSpanId"] == spans["child"]["spanId"]
        assert spans["event-in-child"]["parentSpanId"] == spans["child"]["spanId"]
        assert spans["sibling"]["parentSpanId"] == spans["root"]["spanId"]
        assert all(spans[n]["traceId"] == trace for n in ("child", "grandchild", "sibling", "event-in-child"))
        assert spans["other-root"]["traceId"] != trace and spans["other-root"]["parentSpanId"] == ""
        assert len({span["spanId"] for span in spans.values()}) == 6


def test_threads_start_new_traces_unless_the_context_is_copied(sock_path: str, make_client: MakeClient) -> None:
    with FakeAgent(sock_path) as agent:
        client = make_client()

        def work(name: str) -> None:
            with client.span(name):
                pass

        with client.span("parent"):
            plain = threading.Thread(target=work, args=("plain-thread",))
            context = contextvars.copy_context()
            copied = threading.Thread(target=context.run, args=(work, "copied-context-thread"))
            plain.start(), copied.start()
            plain.join(), copied.join()
        spans = by_name(deliver(client, agent, 3))
        assert spans["plain-thread"]["parentSpanId"] == ""
        assert spans["plain-thread"]["traceId"] != spans["parent"]["traceId"]
        assert spans["copied-context-thread"]["parentSpanId"] == spans["parent"]["spanId"]
        assert spans["copied-context-thread"]["traceId"] == spans["parent"]["traceId"]


def test_asyncio_tasks_inherit_the_parent_and_do_not_leak_into_each_other(
    sock_path: str, make_client: MakeClient
) -> None:
    with FakeAgent(sock_path) as agent:
        client = make_client()

        async def task(name: str) -> None:
            with client.span(name):
                await asyncio.sleep(0.01)  # interleave with the sibling task
                with client.span(name + ".inner"):
                    await asyncio.sleep(0)

        async def main() -> None:
            with client.span("request"):
                await asyncio.gather(task("a"), task("b"))

        asyncio.run(main())
        spans = by_name(deliver(client, agent, 5))
        request = spans["request"]
        for name in ("a", "b"):
            assert spans[name]["parentSpanId"] == request["spanId"]
            assert spans[name + ".inner"]["parentSpanId"] == spans[name]["spanId"]
            assert spans[name + ".inner"]["traceId"] == request["traceId"]


def test_exception_in_span_is_recorded_and_reraised(sock_path: str, make_client: MakeClient) -> None:
    with FakeAgent(sock_path) as agent:
        client = make_client()
        with pytest.raises(KeyError, match="missing"), client.span("failing"):
            raise KeyError("missing")
        assert current_span() is None
        (record,) = deliver(client, agent, 1)
        assert record["status"]["code"] == 2 and "missing" in record["status"]["message"]
        (event,) = record["events"]
        assert event["name"] == "exception"
        assert record["startTimeUnixNano"] <= event["timeUnixNano"] <= record["endTimeUnixNano"]
        details = attrs(event["attributes"])
        assert details["exception.type"] == "KeyError"
        assert details["exception.message"] == "'missing'"
        assert details["exception.stacktrace"].startswith("Traceback")
        assert "KeyError" in details["exception.stacktrace"]


def test_track_event_is_a_zero_duration_span(sock_path: str, make_client: MakeClient) -> None:
    with FakeAgent(sock_path) as agent:
        client = make_client()
        client.track_event("user.login", {"user_id": "123"})
        (record,) = deliver(client, agent, 1)
        assert record["name"] == "user.login"
        assert record["startTimeUnixNano"] == record["endTimeUnixNano"]
        assert attrs(record["attributes"]) == {"user_id": "123"}
        assert record["status"]["code"] == 0 and record["events"] == []


class CheckoutError(Exception):
    pass


def test_track_error_is_an_error_span_with_an_exception_event(sock_path: str, make_client: MakeClient) -> None:
    with FakeAgent(sock_path) as agent:
        client = make_client()
        try:
            raise CheckoutError("card declined")
        except CheckoutError as exc:
            client.track_error(exc, {"where": "checkout"})
        (record,) = deliver(client, agent, 1)
        assert record["name"] == "automagik.error"  # 0.1.4's name
        assert record["status"] == {"code": 2, "message": "card declined"}
        assert attrs(record["attributes"]) == {
            "where": "checkout",
            "error_type": "CheckoutError",  # 0.1.4's attributes
            "error_message": "card declined",
        }
        (event,) = record["events"]
        details = attrs(event["attributes"])
        assert details["exception.type"] == f"{__name__}.CheckoutError"
        assert details["exception.message"] == "card declined"
        assert "raise CheckoutError" in details["exception.stacktrace"]


def test_long_stacktrace_keeps_its_tail(sock_path: str, make_client: MakeClient) -> None:
    with FakeAgent(sock_path) as agent:
        client = make_client(max_attribute_length=200)

        def recurse(n: int) -> None:
            if n == 0:
                raise ValueError("deep")
            recurse(n - 1)

        try:
            recurse(30)
        except ValueError as exc:
            client.track_error(exc)
        (record,) = deliver(client, agent, 1)
        stacktrace = attrs(record["events"][0]["attributes"])["exception.stacktrace"]
        assert len(stacktrace) == 200 and stacktrace.endswith("ValueError: deep\n")


def test_trace_decorator_sync_and_async(sock_path: str, make_client: MakeClient) -> None:
    with FakeAgent(sock_path) as agent:
        client = make_client()

        @client.trace
        def plain(x: int) -> int:
            return x * 2

        @client.trace("named", attributes={"a": 1})
        def named() -> str:
            return "ok"

        @client.trace(name="keyword", kind=SpanKind.SERVER)
        def keyword() -> None:
            raise ValueError("bad")

        @client.trace
        async def coroutine() -> int:
            with client.span("inside-coroutine"):
                await asyncio.sleep(0)
            return 7

        assert plain(21) == 42 and plain.__name__ == "plain"
        assert named() == "ok"
        with pytest.raises(ValueError):
            keyword()
        assert asyncio.run(coroutine()) == 7
        spans = by_name(deliver(client, agent, 5))
        assert spans["test_trace_decorator_sync_and_async.<locals>.plain"]["status"]["code"] == 0
        assert attrs(spans["named"]["attributes"]) == {"a": 1}
        assert spans["keyword"]["kind"] == 2 and spans["keyword"]["status"]["code"] == 2
        outer = spans["test_trace_decorator_sync_and_async.<locals>.coroutine"]
        assert spans["inside-coroutine"]["parentSpanId"] == outer["spanId"]
        assert outer["endTimeUnixNano"] >= spans["inside-coroutine"]["endTimeUnixNano"]


def test_manual_end_and_calls_after_end_are_ignored(sock_path: str, make_client: MakeClient) -> None:
    with FakeAgent(sock_path) as agent:
        client = make_client()
        span = client.span("manual")
        assert isinstance(span, Span) and span.is_recording()
        span.add_event("checkpoint", {"n": 1})
        span.end()
        span.end()
        span.set_attribute("late", 1)
        span.set_status(StatusCode.ERROR)
        assert not span.is_recording()
        (record,) = deliver(client, agent, 1)
        assert record["attributes"] == [] and record["status"]["code"] == 0
        assert [event["name"] for event in record["events"]] == ["checkpoint"]


def test_recording_calls_never_raise_on_hostile_input(sock_path: str, make_client: MakeClient) -> None:
    class Hostile:
        def __str__(self) -> str:
            raise RuntimeError("boom")

        def __hash__(self) -> int:
            raise RuntimeError("unhashable")

        def __eq__(self, other: object) -> bool:
            raise RuntimeError("uncomparable")

    class BadError(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no message")

    with FakeAgent(sock_path) as agent:
        client = make_client()
        with client.span(Hostile(), attributes={"h": Hostile()}) as span:  # type: ignore[arg-type]
            span.set_attribute(Hostile(), 1)  # type: ignore[arg-type]
            span.set_attributes(Hostile())  # type: ignore[arg-type]
            span.set_status(Hostile())  # type: ignore[arg-type]
            span.add_event(Hostile(), Hostile())  # type: ignore[arg-type]
        client.span("bad-attributes", attributes=Hostile())  # type: ignore[arg-type]
        client.track_event("e", Hostile())  # type: ignore[arg-type]
        client.track_error(BadError())
        client.track_error("not an exception")  # type: ignore[arg-type]
        with pytest.raises(BadError), client.span("raising"):
            raise BadError()
        assert client.stats()["internal_errors"] > 0
        spans = by_name(deliver(client, agent, 4))
        assert spans["<unrepresentable>"]["attributes"] == [{"key": "h", "value": {"stringValue": "<unrepresentable>"}}]
        assert spans["raising"]["status"]["message"] == "<unrepresentable>"
        assert all(span["name"] in {"<unrepresentable>", "automagik.error", "raising"} for span in spans.values())


def test_disabled_client_is_a_no_op_without_thread_or_socket(sock_path: str, make_client: MakeClient) -> None:
    threads_before = threading.active_count()
    with FakeAgent(sock_path) as agent:
        client = make_client(enabled=False)
        assert client.span("x") is NOOP_SPAN
        with client.span("x") as span:
            span.set_attribute("a", 1)
            span.set_status(StatusCode.ERROR)
        client.track_event("e")
        client.track_error(ValueError("v"))

        def f() -> int:
            return 1

        assert client.trace(f) is f and client.trace("name")(f) is f
        assert client.flush(1.0) is True
        client.shutdown()
        assert client.stats()["enabled"] is False and client.stats()["enqueued_records"] == 0
        assert client._transport._thread is None and client._transport.connection.sock is None
        assert threading.active_count() <= threads_before + 1  # at most the fake agent's own thread
        assert agent.connections == 0


def test_enabled_env_false_disables(monkeypatch: pytest.MonkeyPatch, sock_path: str) -> None:
    monkeypatch.setenv("AUTOMAGIK_TELEMETRY_ENABLED", "off")
    client = AutomagikTelemetry(config=TelemetryConfig(project_name="p", version="1", socket_path=sock_path))
    assert not client.enabled and client.span("x") is NOOP_SPAN


def test_positional_construction_and_bad_construction() -> None:
    client = AutomagikTelemetry("p", "1")
    assert client.config.project_name == "p"
    client.shutdown(0)
    with pytest.raises(ValueError):
        AutomagikTelemetry()
    with pytest.raises(ValueError):
        AutomagikTelemetry(config={"project_name": "p"})  # type: ignore[arg-type]


def test_span_lines_are_single_valid_json_lines() -> None:
    client = AutomagikTelemetry(config=TelemetryConfig(project_name="p", version="1", enabled=False))
    span = Span(client, 'name\nwith\r\nbreaks \u2028 "q" \ud800', {"k\n": "v\n"})
    span.add_event("ev\n", {"x": [1, {"y": b"\n"}]})
    span.end()
    line = span.to_line(4096)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    record = json.loads(line)
    assert record["name"].startswith('name\nwith\r\nbreaks \u2028 "q" ')
    assert record["attributes"] == [{"key": "k\n", "value": {"stringValue": "v\n"}}]


@given(
    name=st.text(),
    message=st.text(),
    attributes=st.dictionaries(
        st.text(max_size=8),
        st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
        max_size=5,
    ),
)
def test_any_span_serializes_to_exactly_one_json_line(name: str, message: str, attributes: dict[str, Any]) -> None:
    client = AutomagikTelemetry(config=TelemetryConfig(project_name="p", version="1", enabled=False))
    span = Span(client, name, attributes)
    span.set_status(StatusCode.ERROR, message)
    span.add_event(name, attributes)
    span.end()
    line = span.to_line(64)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    record = json.loads(line)
    assert record["name"] == name[:64].encode("utf-8", "replace").decode()
    assert record["status"] == {"code": 2, "message": message[:64].encode("utf-8", "replace").decode()}
    assert len(record["attributes"]) == sum(v is not None for v in attributes.values())
