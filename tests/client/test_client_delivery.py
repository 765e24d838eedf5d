"""Delivery through a real SOCK_SEQPACKET fake agent: ACK/flush, drops, rejects, reconnects, backpressure."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

import pytest
from fake_agent import FakeAgent, wait_until

import automagik_telemetry.transport as transport_module
from automagik_telemetry import AutomagikTelemetry
from automagik_telemetry.protocol import MAX_MESSAGE_SIZE

MakeClient = Callable[..., AutomagikTelemetry]
STATS_KEYS = {
    "enqueued_records",
    "sent_records",
    "sent_messages",
    "acked_records",
    "dropped_queue_full",
    "dropped_oversized",
    "rejected_records",
    "unconfirmed_records",
    "reconnects",
    "send_errors",
    "internal_errors",
    "queue_depth",
    "connected",
}


def record(client: AutomagikTelemetry, count: int, prefix: str = "s", **attributes: object) -> None:
    for i in range(count):
        with client.span(f"{prefix}{i}", attributes=attributes or None):
            pass


def record_until_the_sender_is_stuck(
    client: AutomagikTelemetry, queue_size: int, payload: str, timeout: float = 10.0
) -> int:
    """Record spans until the queue is full and stays full (the sender is blocked), then 10 more that
    must be dropped; return how many were recorded.

    Recording a fixed number is racy: if the sender drains the queue after the producer stops, the
    queue never looks full. Recording on until it stays full makes the state deterministic.
    """
    produced = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        start = time.monotonic()
        record(client, 200, payload=payload)
        assert time.monotonic() - start < 1.0, "recording 200 spans blocked the caller"
        produced += 200
        if client.stats()["queue_depth"] == queue_size:
            time.sleep(0.3)
            if client.stats()["queue_depth"] == queue_size:
                record(client, 10, payload=payload)  # the queue is full and stuck: these must be dropped
                return produced + 10
    raise AssertionError("the sender never blocked: the test's premise does not hold")


def timed_flush(client: AutomagikTelemetry, timeout: float) -> tuple[bool, float]:
    start = time.monotonic()
    result = client.flush(timeout)
    return result, time.monotonic() - start


def test_flush_true_once_the_agent_acked_everything(sock_path: str, make_client: MakeClient) -> None:
    with FakeAgent(sock_path) as agent:
        client = make_client(flush_interval=10.0)  # only flush() can make the sender send this early
        record(client, 10)
        ok, elapsed = timed_flush(client, 5.0)
        assert ok and elapsed < 1.0
        assert len(agent.spans()) == 10  # already on "disk" when flush returned
        stats = client.stats()
        assert set(stats) >= STATS_KEYS
        assert stats["enqueued_records"] == stats["sent_records"] == stats["acked_records"] == 10
        assert stats["connected"] is True and stats["queue_depth"] == 0
        assert agent.errors == []


def test_flush_without_records_returns_true_at_once_even_without_agent(make_client: MakeClient) -> None:
    client = make_client()
    ok, elapsed = timed_flush(client, 5.0)
    assert ok and elapsed < 0.5  # nowhere near the 5 s timeout (slack for a loaded CI machine)


def test_flush_false_at_the_timeout_when_the_agent_is_absent(make_client: MakeClient) -> None:
    client = make_client()
    record(client, 5)
    ok, elapsed = timed_flush(client, 0.3)
    assert not ok and 0.3 <= elapsed < 1.0  # at the timeout, not later (slack for a loaded CI machine)
    assert client.stats()["queue_depth"] == 5 and client.stats()["connected"] is False


def test_flush_false_at_the_timeout_when_the_agent_never_acks(sock_path: str, make_client: MakeClient) -> None:
    with FakeAgent(sock_path, mode="silent") as agent:
        client = make_client()
        record(client, 5)
        ok, elapsed = timed_flush(client, 0.3)
        assert not ok and 0.3 <= elapsed < 1.0  # at the timeout, not later (slack for a loaded machine)
        assert len(agent.spans()) == 5 and client.stats()["acked_records"] == 0


def test_queue_full_drops_new_spans_and_counts_them_exactly(make_client: MakeClient) -> None:
    client = make_client(max_queue_size=100)  # no agent: nothing leaves the queue
    record(client, 250)
    stats = client.stats()
    assert stats["dropped_queue_full"] == 150
    assert stats["queue_depth"] == 100 and stats["enqueued_records"] == 100


def test_spans_queued_while_the_agent_is_absent_are_sent_when_it_appears(
    sock_path: str, make_client: MakeClient
) -> None:
    client = make_client()
    record(client, 20, prefix="early")
    assert not client.flush(0.1)
    with FakeAgent(sock_path) as agent:
        assert client.flush(5.0)  # the connect backoff is still short here
        assert sorted(span["name"] for span in agent.spans()) == sorted(f"early{i}" for i in range(20))


def test_reconnects_after_the_agent_restarts_at_the_same_path(sock_path: str, make_client: MakeClient) -> None:
    first = FakeAgent(sock_path)
    client = make_client()
    record(client, 5, prefix="first")
    assert client.flush(5.0)
    first.close()
    assert wait_until(lambda: not client.stats()["connected"], 2.0)  # noticed the close (EOF)
    record(client, 7, prefix="between")
    assert not client.flush(0.2)
    with FakeAgent(sock_path) as second:
        ok, elapsed = timed_flush(client, 5.0)
        assert ok and elapsed < 3.0  # bounded by the 2 s backoff cap
        assert sorted(span["name"] for span in second.spans()) == sorted(f"between{i}" for i in range(7))
        stats = client.stats()
        assert stats["reconnects"] == 1 and stats["unconfirmed_records"] == 0
        assert stats["acked_records"] == 12
        assert second.messages[0].seq == 2  # seq restarts on the new connection (1: the STATS_REQUEST on connecting)
    assert len(first.spans()) == 5


def test_sent_but_unacked_spans_become_unconfirmed_and_are_never_resent(
    sock_path: str, make_client: MakeClient
) -> None:
    silent = FakeAgent(sock_path, mode="silent")
    client = make_client()
    record(client, 8, prefix="lost")
    assert wait_until(lambda: len(silent.spans()) == 8)
    silent.close()
    assert wait_until(lambda: client.stats()["unconfirmed_records"] == 8)
    with FakeAgent(sock_path) as agent:
        record(client, 3, prefix="after")
        assert client.flush(5.0)
        assert sorted(span["name"] for span in agent.spans()) == ["after0", "after1", "after2"]


def test_rejected_messages_are_counted_with_their_reason_and_fail_flush_promptly(
    sock_path: str, make_client: MakeClient
) -> None:
    with FakeAgent(sock_path, mode="reject", reject_reason="disk_full"):
        client = make_client()
        record(client, 6)
        ok, elapsed = timed_flush(client, 5.0)
        assert not ok and elapsed < 1.0
        stats = client.stats()
        assert stats["rejected_records"] == 6 and stats["reject_reasons"] == {"disk_full": 6}
        assert stats["acked_records"] == 0


def test_a_span_too_large_for_one_message_is_dropped_and_counted(sock_path: str, make_client: MakeClient) -> None:
    with FakeAgent(sock_path) as agent:
        client = make_client(max_attribute_length=200_000)
        with client.span("small-before"):
            pass
        with client.span("huge", attributes={"blob": "x" * MAX_MESSAGE_SIZE}):
            pass
        with client.span("small-after"):
            pass
        assert not client.flush(5.0)  # one of the records will never be acked
        assert agent.wait_for_spans(2)
        assert sorted(span["name"] for span in agent.spans()) == ["small-after", "small-before"]
        assert client.stats()["dropped_oversized"] == 1
        with client.span("later"):
            pass
        assert client.flush(5.0)  # an old failure does not fail later flushes


def test_emsgsize_drops_the_message_and_counts_it(sock_path: str, make_client: MakeClient) -> None:
    with FakeAgent(sock_path) as agent:
        client = make_client(flush_interval=10.0)
        record(client, 1, prefix="first")
        assert client.flush(5.0)
        sock = client._transport.connection.sock
        assert sock is not None
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # messages above ~4 KiB: EMSGSIZE
        record(client, 100, prefix="big", payload="y" * 300)
        assert not client.flush(5.0)
        stats = client.stats()
        assert stats["dropped_oversized"] == 100 and stats["connected"]
        assert len(agent.spans()) == 1


def test_many_spans_are_split_into_valid_messages_with_consecutive_seqs(
    sock_path: str, make_client: MakeClient
) -> None:
    with FakeAgent(sock_path) as agent:
        client = make_client(max_queue_size=100_000)
        record(client, 3000, payload="z" * 200)
        assert client.flush(10.0)
        assert len(agent.spans()) == 3000 and agent.errors == []
        assert len(agent.messages) > 3  # 3000 * ~450 bytes do not fit in one 64 KiB message
        assert all(len(m.records) >= 1 for m in agent.messages)
        # Consecutive from 2: seq 1 is the STATS_REQUEST the client sends on connecting (line formats).
        assert [m.seq for m in agent.messages] == list(range(2, len(agent.messages) + 2))
        assert client.stats()["sent_messages"] == len(agent.messages)


def test_backpressure_queues_then_drops_and_delivers_after_the_agent_resumes(
    sock_path: str, make_client: MakeClient
) -> None:
    with FakeAgent(sock_path) as agent:
        client = make_client(max_queue_size=1000)
        record(client, 1, prefix="warmup")
        assert client.flush(5.0)
        agent.pause()
        produced = record_until_the_sender_is_stuck(client, 1000, "p" * 500)  # the socket is full: EAGAIN
        stats = client.stats()
        assert stats["dropped_queue_full"] > 0 and stats["connected"]
        assert not client.flush(0.2)
        agent.resume()
        assert client.flush(10.0)
        stats = client.stats()
        assert stats["acked_records"] == stats["enqueued_records"] == len(agent.spans())
        assert stats["enqueued_records"] + stats["dropped_queue_full"] == produced + 1
        assert stats["unconfirmed_records"] == 0


def test_client_stats_are_sent_periodically_and_at_shutdown(
    sock_path: str, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport_module, "STATS_INTERVAL", 0.1)
    with FakeAgent(sock_path) as agent:
        client = make_client()
        record(client, 4)
        assert client.flush(5.0)
        assert agent.wait_for(lambda: len(agent.client_stats) >= 1, 3.0)
        client.shutdown()
        client.shutdown()  # idempotent
        assert agent.wait_for(lambda: agent.client_stats[-1].get("acked_records") == 4, 3.0)
        final = agent.client_stats[-1]
        assert set(final) >= STATS_KEYS - {"connected", "queue_depth"}  # cumulative counters only
        assert final["enqueued_records"] == 4
        assert final["instance"].startswith(f"{os.getpid()}-") and len(final["instance"]) <= 64
        counters = {k: v for k, v in final.items() if k != "instance"}
        assert all(isinstance(v, int) and not isinstance(v, bool) for v in counters.values())


def test_after_shutdown_spans_are_counted_not_queued(make_client: MakeClient) -> None:
    client = make_client()
    client.shutdown()
    record(client, 3)
    stats = client.stats()
    assert stats["dropped_after_shutdown"] == 3 and stats["queue_depth"] == 0
    assert client.flush(0.1) is True


def test_sender_idles_without_spinning_after_a_flush_that_waited_for_acks(
    sock_path: str, make_client: MakeClient
) -> None:
    with FakeAgent(sock_path) as agent:
        client = make_client(flush_interval=1.0)
        record(client, 1)
        assert wait_until(lambda: client.stats()["sent_records"] == 1)  # sent, ACK not read yet
        assert client.flush(5.0)
        start = time.process_time()  # CPU of every thread of this process
        time.sleep(0.5)
        assert time.process_time() - start < 0.1
        assert len(agent.spans()) == 1


def test_sender_idles_without_spinning_while_the_agent_is_absent(make_client: MakeClient) -> None:
    client = make_client()
    record(client, 600)  # above the wake threshold
    assert not client.flush(0.1)
    start = time.process_time()
    time.sleep(0.5)
    assert time.process_time() - start < 0.1


def test_an_agent_that_reads_but_never_acks_gets_backpressure_after_the_window(
    sock_path: str, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport_module, "MAX_UNACKED_MESSAGES", 3)
    with FakeAgent(sock_path, mode="silent") as agent:
        client = make_client(max_queue_size=500)
        record_until_the_sender_is_stuck(client, 500, "w" * 500)  # the unacked window is full
        stats = client.stats()
        assert stats["sent_messages"] == 3 and len(agent.messages) == 3  # memory stays bounded
        assert stats["dropped_queue_full"] > 0 and stats["connected"]
