"""The real client against the real agent: delivery, and never blocking when the agent is down or stopped."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from agent_process import AgentProcess

from automagik_telemetry import AutomagikTelemetry, TelemetryConfig
from automagik_telemetry_agent.wal import WalReader

P999_BOUND_S = 0.005  # generous: the hot path is ~2 µs; a blocking send would take seconds here


def _client(agent: AgentProcess, **overrides: object) -> AutomagikTelemetry:
    config = TelemetryConfig(project_name="blocktest", version="1.0", socket_path=agent.socket_path, **overrides)
    return AutomagikTelemetry(config=config)


def _timed_spans(client: AutomagikTelemetry, n: int, prefix: str) -> list[float]:
    times = []
    for i in range(n):
        start = time.perf_counter()
        with client.span(f"{prefix}.{i % 7}", attributes={"i": i}):
            pass
        times.append(time.perf_counter() - start)
    return times


def _p999(times: list[float]) -> float:
    return statistics.quantiles(times, n=1000)[-1]


def test_spans_from_the_real_client_are_durable_in_the_wal_when_flush_returns_true(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path).start()
    try:
        client = _client(agent)
        for i in range(3000):
            with client.span("work", attributes={"i": i}) as span:
                span.set_attribute("even", i % 2 == 0)
        assert client.flush(timeout=10) is True
        stats = client.stats()
        assert stats["acked_records"] == 3000 and stats["dropped_queue_full"] == 0
        client.shutdown()
        assert agent.stats()["items_received"] == 3000
    finally:
        agent.cleanup()
    items = agent.dump()
    assert sorted(
        int(a["value"]["intValue"]) for x in items for a in x["record"]["attributes"] if a["key"] == "i"
    ) == list(range(3000))


def test_client_never_blocks_when_the_agent_is_sigstopped_and_recovers_after_sigcont(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path).start()
    try:
        client = _client(agent, max_queue_size=2000)
        assert _timed_spans(client, 200, "warm") and client.flush(timeout=5)
        agent.stop()  # SIGSTOP: the socket buffer fills, then the client's bounded queue
        times = _timed_spans(client, 20_000, "stopped")
        assert _p999(times) < P999_BOUND_S, f"p99.9 {_p999(times) * 1e6:.0f} µs while the agent is stopped"
        start = time.monotonic()
        assert client.flush(timeout=0.5) is False  # bounded, and honest: nothing new is durable
        assert time.monotonic() - start < 1.5
        stats = client.stats()
        assert stats["dropped_queue_full"] > 0  # the agent is frozen: the bounded queue overflowed, counted
        agent.cont()
        assert client.flush(timeout=10) is True  # what was still queued is delivered after SIGCONT
        stats = client.stats()
        assert stats["enqueued_records"] + stats["dropped_queue_full"] == 20_200
        assert stats["acked_records"] == stats["enqueued_records"]
        client.shutdown()
        assert agent.stats()["items_received"] == stats["acked_records"]
    finally:
        agent.cont()
        agent.cleanup()


def test_client_never_blocks_when_the_agent_is_down_and_reconnects_when_it_returns(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path).start()
    client = _client(agent)
    try:
        assert _timed_spans(client, 100, "before") and client.flush(timeout=5)
        assert agent.terminate() == 0
        times = _timed_spans(client, 5000, "down")
        assert _p999(times) < P999_BOUND_S, f"p99.9 {_p999(times) * 1e6:.0f} µs while the agent is down"
        agent.start()  # same socket path: the client reconnects lazily
        assert client.flush(timeout=10) is True
        assert client.stats()["acked_records"] == 5100
    finally:
        client.shutdown()
        agent.cleanup()


def test_the_client_sends_compact_span_lines_once_the_agent_announces_them(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path).start()
    try:
        client = _client(agent)
        for round_ in range(3):  # the STATS reply arrives while the first round is sent
            for i in range(200):
                with client.span(f"r{round_}", attributes={"i": i, "ok": True, "ratio": 0.5}):
                    pass
            assert client.flush(timeout=10) is True
        client.shutdown()
    finally:
        agent.cleanup()
    reader = WalReader(agent.wal_dir)
    payloads = [entry.payload for entry in reader.read(max_records=10_000)]
    reader.close()
    compact = [p for p in payloads if p.startswith(b'{"lineFormat":"compact-1",')]
    assert compact, "the client never switched to compact span lines"
    assert all(line.startswith(b"[") for p in compact for line in p.split(b"\n")[1:-1])
    # wal dump shows every span in the OTLP/JSON spelling, whichever line format it travelled in.
    items = agent.dump()
    assert len(items) == 600
    assert sorted(
        int(a["value"]["intValue"]) for x in items for a in x["record"]["attributes"] if a["key"] == "i"
    ) == sorted(list(range(200)) * 3)
