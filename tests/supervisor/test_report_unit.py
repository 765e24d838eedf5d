"""The child -> supervisor channel (report.py): heartbeats that never hurt the child, liveness, validation."""

from __future__ import annotations

import json
import threading
import time

from agent_process import wait_until

from automagik_telemetry_agent.config import load_config
from automagik_telemetry_agent.lifecycle.channel import (
    ReportChannel,
    config_message,
    parse_config_message,
    parse_report,
)
from automagik_telemetry_agent.lifecycle.link import SupervisorLink
from automagik_telemetry_agent.lifecycle.liveness import Liveness


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_loop_age_grows_without_progress_and_resets_on_a_beat() -> None:
    clock = Clock()
    live = Liveness(clock)
    clock.now += 7
    assert live.age() == 7
    live.beat()
    assert live.age() == 0


def test_a_declared_wait_counts_as_progress_until_its_bound_and_not_after() -> None:
    clock = Clock()
    live = Liveness(clock)
    with live.waiting(60):  # e.g. an INSERT with connect + read timeout 60 s
        clock.now += 59
        assert live.age() == 0
        clock.now += 11
        assert live.age() == 10  # the request outlived its timeouts: that is a hang
    assert live.age() == 0  # it returned: progress
    with live.waiting(None):  # unbounded: declares nothing
        clock.now += 5
        assert live.age() == 5


def test_nested_and_concurrent_declared_waits_keep_the_longest_bound() -> None:
    clock = Clock()
    live = Liveness(clock)
    with live.waiting(30), live.waiting(5):
        clock.now += 20
        assert live.age() == 0


def test_declared_event_declares_its_timeout() -> None:
    live = Liveness()
    event = live.event()
    seen: list[float] = []

    def waiter() -> None:
        event.wait(30)

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.2)
    seen.append(live.age())
    event.set()
    t.join(2)
    assert seen == [0.0]


def test_watched_calls_declare_only_the_named_methods_and_pass_the_rest_through() -> None:
    clock = Clock()
    live = Liveness(clock)

    class Sink:
        profile = "legacy"

        def insert(self, body: bytes) -> float:
            clock.now += 50
            return live.age()

        def explain(self) -> float:
            clock.now += 50
            return live.age()

    sink = live.watch(Sink(), {"insert": 65})
    assert sink.insert(b"") == 0  # inside the declared 65 s
    assert sink.explain() == 50  # not declared
    assert sink.profile == "legacy"
    sink.profile = "modern"
    assert sink._target.profile == "modern"


def test_malformed_reports_are_ignored_never_trusted() -> None:
    good = {"v": 1, "child": "ingest", "pid": 5, "ready": True, "loop_age_s": 0.2, "metrics": {}}
    assert parse_report(json.dumps(good).encode()) == good
    for bad in (
        b"not json",
        b"[]",
        {**good, "v": 2},
        {**good, "pid": "5"},
        {**good, "ready": 1},
        {**good, "loop_age_s": -1},
        {**good, "loop_age_s": True},
        {**good, "child": None},
    ):
        data = bad if isinstance(bad, bytes) else json.dumps(bad).encode()
        assert parse_report(data) is None, bad
    assert parse_report(json.dumps({**good, "metrics": "x"}).encode())["metrics"] == {}


def test_configuration_travels_whole_with_its_sources() -> None:
    config = load_config(None, {"wal.dir": "/tmp/x", "shipper.batch_size": "7"}, env={})
    again = parse_config_message(config_message(config))
    assert again is not None
    assert dict(again.items()) == dict(config.items())
    assert again.sources["shipper.batch_size"] == "flag"


def test_reporter_never_blocks_when_the_supervisor_does_not_read_and_counts_what_it_dropped() -> None:
    channel = ReportChannel()
    child_end, channel._child = channel._child, None  # what the child process would own
    link = SupervisorLink(child_end, "ingest")
    big = {"info": {"pad": "x" * 20_000}}
    reporter = link.start_reporting(loop_age=lambda: 0.0, collect=lambda: big)
    started = time.monotonic()
    for _ in range(200):  # ~4 MB into a socket buffer of a few hundred KB, nobody reading
        reporter.send_report()
    assert time.monotonic() - started < 2.0
    assert reporter.dropped > 0
    reports = channel.receive()
    assert reports and reports[0]["child"] == "ingest"
    channel.close()  # the supervisor is gone
    wait_until(lambda: not reporter.is_alive(), 5, message="the reporter thread to end quietly")
    child_end.close()


def test_reporter_survives_a_metrics_collector_that_raises() -> None:
    channel = ReportChannel()
    child_end, channel._child = channel._child, None  # what the child process would own
    link = SupervisorLink(child_end, "shipper")

    def broken() -> dict:
        raise AttributeError("no such stat")

    reporter = link.start_reporting(loop_age=lambda: 1.5, collect=broken, is_ready=lambda: True)
    report = wait_until(lambda: next((r for r in channel.receive() if r["ready"]), None), 5, message="a ready report")
    assert report["metrics"] == {} and report["loop_age_s"] == 1.5
    channel.close()
    wait_until(lambda: not reporter.is_alive(), 5, message="the reporter thread to end")
    child_end.close()
