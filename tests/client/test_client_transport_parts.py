"""The transport's parts on their own: SpanQueue, AgentConnection, DeliveryLedger.

Only properties the end-to-end tests (test_client_delivery.py, test_client_process.py) do not pin
down: the queue's lazy consumer start and wake threshold, the connection's backoff schedule and
seq accounting, and the ledger's handling of a REJECT among messages an ACK covers.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Iterator

import pytest

from automagik_telemetry.connection import BACKOFF_CAP, BACKOFF_START, AgentConnection
from automagik_telemetry.ledger import DeliveryLedger
from automagik_telemetry.protocol import MessageType, encode
from automagik_telemetry.span_queue import SpanQueue


def never_forked(record: object) -> None:
    raise AssertionError("no fork happened")


def test_the_first_put_starts_the_consumer_and_later_puts_ask_again_only_until_it_runs() -> None:
    answers = [False, True]  # e.g. refused while the transport is stopping, then started
    calls: list[int] = []

    def start_consumer() -> bool:
        calls.append(1)
        return answers[len(calls) - 1]

    queue: SpanQueue[str] = SpanQueue(10, on_fork=never_forked, start_consumer=start_consumer)
    assert calls == []  # creating the queue starts nothing
    queue.put("a")
    queue.put("b")
    queue.put("c")
    assert len(calls) == 2 and len(queue) == 3


def test_the_queue_wakes_its_consumer_once_more_than_the_wake_threshold_is_queued() -> None:
    queue: SpanQueue[int] = SpanQueue(10, on_fork=never_forked, start_consumer=lambda: True)  # threshold 10 // 2
    for i in range(5):
        queue.put(i)
    assert not queue.wake.is_set()  # a small batch waits for the consumer's timer
    queue.put(5)
    assert queue.wake.is_set()


def test_take_returns_the_oldest_records_first_and_enqueued_counts_taken_plus_queued() -> None:
    queue: SpanQueue[int] = SpanQueue(10, on_fork=never_forked, start_consumer=lambda: True)
    for i in range(5):
        queue.put(i)
    assert queue.take(3) == [0, 1, 2]
    assert queue.take(10) == [3, 4]
    queue.put(5)
    counts = queue.counts()
    assert (counts.enqueued, counts.depth, queue.enqueued) == (6, 1, 6)


@pytest.fixture
def listener() -> Iterator[tuple[str, socket.socket]]:
    """A SOCK_SEQPACKET listener that never reads (the test accepts and drives it)."""
    with tempfile.TemporaryDirectory(prefix="at-", dir="/tmp") as directory:
        path = os.path.join(directory, "agent.sock")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        server.bind(path)
        server.listen(4)
        try:
            yield path, server
        finally:
            server.close()


def test_connect_failures_back_off_exponentially_up_to_the_cap_and_an_answer_from_the_agent_resets_it() -> None:
    connection = AgentConnection("/nonexistent/agent.sock")
    delays = []
    for _ in range(8):
        connection.next_attempt = 0.0  # as if the backoff had elapsed
        assert not connection.connect()
        delays.append(connection.next_attempt - time.monotonic())
    expected = [min(BACKOFF_START * 2**i, BACKOFF_CAP) for i in range(8)]
    assert all(want - 0.05 <= got <= want for got, want in zip(delays, expected, strict=True)), delays
    assert connection.connect_errors == 8
    assert not connection.connect()  # within the backoff: no attempt at all
    assert connection.connect_errors == 8
    connection.agent_is_healthy()
    connection.next_attempt = 0.0
    assert not connection.connect()
    assert BACKOFF_START - 0.05 <= connection.next_attempt - time.monotonic() <= BACKOFF_START


def test_a_message_the_kernel_refused_does_not_use_up_a_seq_and_a_new_connection_starts_at_seq_1(
    listener: tuple[str, socket.socket],
) -> None:
    path, server = listener
    connection = AgentConnection(path)
    assert connection.connect() and connection.next_seq == 1
    accepted, _ = server.accept()
    try:
        sent = 0
        with pytest.raises(BlockingIOError):  # the listener never reads: the socket buffer fills up
            while True:
                connection.send(encode(MessageType.CLIENT_STATS, b"x" * 60_000, seq=connection.next_seq))
                sent += 1
        assert sent > 0 and connection.next_seq == sent + 1
    finally:
        accepted.close()
    connection.close()
    assert not connection.connected
    connection.next_attempt = 0.0
    assert connection.connect()
    assert connection.next_seq == 1 and connection.reconnects == 1
    connection.close()


def sent_messages(ledger: DeliveryLedger, count: int) -> None:
    """``count`` one-record messages, built and sent as seq 1, 2, ..."""
    start = ledger.claim(count)
    for index in range(start, start + count):
        ledger.add_message(index, index + 1, [b"{}\n"])
    for seq in range(1, count + 1):
        message = ledger.next_unsent
        assert message is not None
        ledger.sent(message, seq)


def test_an_ack_settles_the_messages_up_to_its_seq_that_a_reject_did_not_already_settle() -> None:
    ledger = DeliveryLedger()
    sent_messages(ledger, 4)
    ledger.rejected(2, "disk_full")
    ledger.acked(3)  # a coalesced ACK of 1..3: 2 stays rejected, 4 stays unacknowledged
    assert (ledger.acked_records, ledger.rejected_records, ledger.reject_reasons) == (2, 1, {"disk_full": 1})
    assert ledger.unacked_messages == 1
    ledger.rejected(9, "bad_seq")  # no RECORDS message has this seq (e.g. a CLIENT_STATS)
    assert ledger.rejected_other_messages == 1 and ledger.rejected_records == 1


def test_a_flush_waits_for_the_oldest_unsettled_message_and_fails_when_one_of_its_records_failed() -> None:
    ledger = DeliveryLedger()
    sent_messages(ledger, 3)

    def settle_the_last_two() -> None:  # runs once the flush is registered, as the sender would
        ledger.acked(3)
        ledger.publish()

    ledger.rejected(1, "disk_full")  # not published yet: still ahead of the frontier, so the flush covers it
    started = time.monotonic()
    assert not ledger.wait_for(3, 5.0, before_waiting=settle_the_last_two)
    assert time.monotonic() - started < 1.0  # released by the publish, not by the timeout
    start = ledger.claim(1)
    ledger.add_message(start, start + 1, [b"{}\n"])
    ledger.publish()
    assert not ledger.wait_for(4, 0.05, before_waiting=ledger.publish)  # built, never sent: not settled
    message = ledger.next_unsent
    assert message is not None
    ledger.sent(message, 4)

    def ack_it() -> None:
        ledger.acked(4)
        ledger.publish()

    assert ledger.wait_for(4, 5.0, before_waiting=ack_it)  # the older failure does not fail it
