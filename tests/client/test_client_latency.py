"""The recording hot path never blocks: span latency stays tiny whatever state the agent is in.

Each test times 50 000 ``with client.span("x"): pass`` calls and bounds their p99.9. A hot path that
touched the socket would hang (never-reading or SIGSTOPped agent: full socket buffer) or pay a
syscall per span; the timeout marker turns a hang into a failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable

import pytest
from fake_agent import wait_until

from automagik_telemetry import AutomagikTelemetry

MakeClient = Callable[..., AutomagikTelemetry]
CALLS = 50_000
P999_BOUND_NS = 5_000_000  # 5 ms: generous; the typical call is ~1-2 µs
MEDIAN_BOUND_NS = 100_000


def span_latencies(client: AutomagikTelemetry, calls: int = CALLS) -> list[int]:
    clock = time.perf_counter_ns
    span = client.span
    samples = []
    for _ in range(calls):
        start = clock()
        with span("x"):
            pass
        samples.append(clock() - start)
    samples.sort()
    return samples


def check(samples: list[int]) -> None:
    median, p99, p999 = (samples[int(len(samples) * q)] for q in (0.5, 0.99, 0.999))
    print(f"median {median / 1000:.1f} us, p99 {p99 / 1000:.1f} us, p99.9 {p999 / 1000:.1f} us")
    assert median < MEDIAN_BOUND_NS
    assert p999 < P999_BOUND_NS, f"p99.9 {p999 / 1e6:.2f} ms"


@pytest.mark.timeout(60)
def test_span_latency_with_no_agent(make_client: MakeClient) -> None:
    client = make_client()
    check(span_latencies(client))
    stats = client.stats()
    assert stats["dropped_queue_full"] == CALLS - client.config.max_queue_size and not stats["connected"]


@pytest.mark.timeout(60)
def test_span_latency_with_an_agent_that_never_reads(
    make_client: MakeClient, agent_process: Callable[[str], subprocess.Popen[str]]
) -> None:
    agent_process("no_read")
    client = make_client()
    with client.span("connect"):
        pass
    assert wait_until(lambda: client.stats()["connected"])
    check(span_latencies(client))
    stats = client.stats()
    assert stats["dropped_queue_full"] > 0  # the socket buffer filled, then the queue
    assert stats["acked_records"] == 0


@pytest.mark.timeout(60)
def test_span_latency_with_the_agent_sigstopped(
    make_client: MakeClient, agent_process: Callable[[str], subprocess.Popen[str]]
) -> None:
    agent = agent_process("ack")
    client = make_client()
    with client.span("connect"):
        pass
    assert client.flush(5.0)
    os.kill(agent.pid, signal.SIGSTOP)
    try:
        check(span_latencies(client))
        stats = client.stats()
        assert stats["dropped_queue_full"] > 0 and stats["connected"]
    finally:
        os.kill(agent.pid, signal.SIGCONT)
