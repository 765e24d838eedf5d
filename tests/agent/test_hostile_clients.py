"""Hostile and broken clients against the real agent process: it rejects, counts, and keeps serving.

Every test drives the agent over its real socket (tests/agent_process.py) and checks the agent's
counters *exactly* against a model of what the test sent (:class:`Ledger`). The model follows the
protocol's rules (client/automagik_telemetry/protocol.py), checked in the order the agent applies
them: size > 64 KiB -> oversized; < 24 bytes -> too_short; magic; version; type; flags; length;
then for RECORDS: kind, count == 0 (empty), line structure (bad_payload).

Counting rules the model encodes (and the agent must follow):

* ``messages_received`` counts every message read from a connection, control messages included
  (STATS_REQUEST, CLIENT_STATS), so ``messages_received == records_received + sum(rejected) +
  control messages``. ``rejected_messages["too_many_connections"]`` counts refused *connections*
  (no message was read), so it is left out of that sum.
* ``rejected_items[reason]`` is the header's ``count`` for a rejected RECORDS message whose framing
  was valid (unsupported_kind, bad_payload, disk_full, wal_error), else 0: the items a client lost.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
from agent_process import (
    AgentClosedConnection,
    AgentProcess,
    RawClient,
    agent_env,
    dumped_names,
    encode_records,
    record_line,
    wait_until,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from automagik_telemetry import protocol
from automagik_telemetry.protocol import MAX_MESSAGE_SIZE, MessageType
from automagik_telemetry_agent.ingest.replies import MAX_OUTBOX

HEADER = struct.Struct("<2sBBBBHIIQ")
RECORDS, CLIENT_STATS, STATS_REQUEST = 0x01, 0x02, 0x10
KNOWN_TYPES = {0x01, 0x02, 0x10, 0x81, 0x82, 0x90}
STATS_SEQ_BASE = 1 << 62  # seqs of our own STATS_REQUESTs: never used by the messages under test
#: Examples of the fuzz test (300 by default, ~3 s); raise it for a longer hunt.
FUZZ_EXAMPLES = int(os.environ.get("AUTOMAGIK_TELEMETRY_FUZZ_EXAMPLES", "300"))


def header(
    *,
    magic: bytes = b"AT",
    version: int = 1,
    type: int = RECORDS,
    kind: int = 1,
    flags: int = 0,
    reserved: int = 0,
    count: int = 1,
    length: int | None = None,
    seq: int = 1,
    payload: bytes = b"",
) -> bytes:
    """A message with any header fields (``length`` defaults to the payload's)."""
    return (
        HEADER.pack(magic, version, type, kind, flags, reserved, count, len(payload) if length is None else length, seq)
        + payload
    )


def nonzero(counters: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counters.items() if v}


def payload_of(*records: bytes) -> bytes:
    return b'{"r":1}\n' + b"".join(r + b"\n" for r in records)


@dataclass(frozen=True)
class Outcome:
    kind: str  # "reject" | "accept" | "stats" | "client_stats"
    reason: str = ""
    items: int = 0  # items rejected (reject) or accepted (accept)
    seq: int = 0


def expected_outcome(msg: bytes) -> Outcome:
    """What the agent must do with one message: the protocol rules, written independently of it."""
    size = len(msg)
    if size > MAX_MESSAGE_SIZE:
        # The agent reads at most MAX+1 bytes of it: the seq is still in the first 24.
        return Outcome("reject", "oversized", 0, int.from_bytes(msg[16:24], "little"))
    if size < 24:
        return Outcome("reject", "too_short", 0, 0)
    magic, version, mtype, kind, flags, _reserved, count, length, seq = HEADER.unpack_from(msg)

    def reject(reason: str, items: int = 0) -> Outcome:
        return Outcome("reject", reason, items, seq)

    if magic != b"AT":
        return reject("bad_magic")
    if version != 1:
        return reject("bad_version")
    if mtype not in KNOWN_TYPES:
        return reject("bad_type")
    if flags:
        return reject("bad_flags")
    if 24 + length != size:
        return reject("length_mismatch")
    payload = msg[24:]
    if mtype == RECORDS:
        if kind not in (1, 2, 3):  # spans, log records, metric data points
            return reject("unsupported_kind", count)
        if count == 0:
            return reject("empty")
        if seq == 0:
            return reject("bad_seq")
        lines = payload.split(b"\n")
        if not payload.endswith(b"\n") or len(lines) - 1 != count + 1:  # content is the shipper's job
            return reject("bad_payload", count)
        return Outcome("accept", "", count, seq)
    if mtype == CLIENT_STATS:
        try:
            data = json.loads(payload)
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("instance"), str):
            return Outcome("client_stats", seq=seq)
        return reject("bad_payload")
    if mtype == STATS_REQUEST:
        return Outcome("stats", seq=seq)
    return reject("bad_type")  # a known agent-to-client type sent by a client


class Ledger:
    """The agent's counters as they must be, from what this test sent. ``check`` compares exactly."""

    def __init__(self) -> None:
        self.messages = 0
        self.records = 0
        self.items = 0
        self.control = 0
        self.rejected: Counter[str] = Counter()
        self.rejected_items: Counter[str] = Counter()
        self.refused_connections = 0

    def sent(self, msg: bytes) -> Outcome:
        outcome = expected_outcome(msg)
        self.messages += 1
        if outcome.kind == "reject":
            self.rejected[outcome.reason] += 1
            self.rejected_items[outcome.reason] += outcome.items
        elif outcome.kind == "accept":
            self.records += 1
            self.items += outcome.items
        else:
            self.control += 1
        return outcome

    def stats_request(self) -> None:
        self.messages += 1
        self.control += 1

    def check(self, stats: dict[str, Any]) -> None:
        """Compare a STATS snapshot (taken after the last message this ledger knows) exactly."""
        got = {
            "messages_received": stats["messages_received"],
            "records_received": stats["records_received"],
            "items_received": stats["items_received"],
            "rejected_messages": {k: v for k, v in stats["rejected_messages"].items() if v},
            "rejected_items": {k: v for k, v in stats["rejected_items"].items() if v},
        }
        want = {
            "messages_received": self.messages,
            "records_received": self.records,
            "items_received": self.items,
            "rejected_messages": {
                k: v for k, v in (self.rejected + Counter(too_many_connections=self.refused_connections)).items() if v
            },
            "rejected_items": {k: v for k, v in self.rejected_items.items() if v},
        }
        assert got == want
        # The identity the agent's counters must satisfy on their own:
        rejected = sum(v for k, v in stats["rejected_messages"].items() if k != "too_many_connections")
        assert stats["messages_received"] == stats["records_received"] + rejected + self.control

    def agent_stats(self, agent: AgentProcess) -> dict[str, Any]:
        """agent.stats() (a fresh connection and one STATS_REQUEST, which this ledger counts), checked."""
        self.stats_request()
        stats = agent.stats()
        self.check(stats)
        return stats


def send_and_expect(client: RawClient, ledger: Ledger, msg: bytes, timeout: float = 5.0) -> Outcome:
    """Send one message and check the agent's reply to it: REJECT(seq, reason), ACK(seq) or STATS."""
    outcome = ledger.sent(msg)
    client.send_raw(msg)
    if outcome.kind == "reject":
        reply = client.recv_reply(timeout)
        assert reply is not None, f"no REJECT for {msg[:40]!r} (expected {outcome.reason})"
        assert reply == (MessageType.REJECT, outcome.seq, outcome.reason.encode()), msg[:40]
    elif outcome.kind == "accept":
        assert client.wait_ack(outcome.seq, timeout), f"no ACK for seq {outcome.seq}"
    elif outcome.kind == "stats":
        reply = client.recv_reply(timeout)
        assert reply is not None and reply[0] == MessageType.STATS and reply[1] == outcome.seq
    return outcome


# ---------------------------------------------------------------------------------------------------
def test_garbage_frames_are_rejected_and_counted_by_reason(agent: AgentProcess) -> None:
    """Each malformed frame gets REJECT(its seq, the reason) at once; counters match per reason, exactly;
    the connection stays usable and nothing malformed reaches the WAL."""
    ledger = Ledger()
    good = payload_of(b'{"name":"ok"}')
    garbage = [
        b"A",  # 1 byte
        b"\x00" * 23,  # one byte short of a header
        b"AT\x01\x01\x01\x00\x00\x00",  # a truncated header
        header(magic=b"XX", seq=11, payload=good),
        header(magic=b"at", seq=12, payload=good),
        header(version=0, seq=13, payload=good),
        header(version=2, seq=14, payload=good),
        header(type=0x00, seq=15, payload=good),
        header(type=0x7F, seq=16, payload=good),
        header(type=0x81, seq=17, count=0),  # ACK, sent by a client
        header(type=0x82, seq=18, count=0, payload=b"bad_magic"),  # REJECT, sent by a client
        header(type=0x90, seq=19, count=0, payload=b"{}"),  # STATS, sent by a client
        header(flags=1, seq=20, payload=good),
        header(flags=0x80, seq=21, payload=good),
        header(length=len(good) + 1, seq=22, payload=good),
        header(length=len(good) - 1, seq=23, payload=good),
        header(length=0xFFFFFFFF, seq=24, payload=good),
        header(kind=4, count=1, seq=25, payload=good),  # a kind no agent knows
        header(kind=255, count=1, seq=26, payload=good),
        header(kind=0, count=1, seq=27, payload=good),
        header(count=0, seq=28, payload=good),  # RECORDS with no records
        header(seq=0, payload=good),  # RECORDS with seq 0: sequence numbers start at 1
        header(count=0, seq=29),
        header(count=1, seq=30),  # count 1, empty payload
        header(count=1, seq=31, payload=good[:-1]),  # no final newline
        header(type=CLIENT_STATS, count=0, seq=32, payload=b"not json"),
        header(type=CLIENT_STATS, count=0, seq=33, payload=b'["instance"]'),
        header(type=CLIENT_STATS, count=0, seq=34, payload=b'{"instance":7}'),
        header(type=CLIENT_STATS, count=0, seq=35, payload=b'{"instance":"i-1","sent_records":3}'),  # valid
        b"\xff" * 100,
    ]
    with RawClient(agent.socket_path) as client:
        outcomes = [send_and_expect(client, ledger, msg) for msg in garbage]
        assert sum(o.kind == "reject" for o in outcomes) == len(garbage) - 1
        # Still the same connection, still served:
        ok = encode_records([record_line("after-garbage")], seq=100)
        send_and_expect(client, ledger, ok)
    stats = ledger.agent_stats(agent)
    assert stats["rejected_messages"] == {
        "too_short": 3,
        "bad_magic": 3,
        "bad_version": 2,
        "bad_type": 5,
        "bad_flags": 2,
        "length_mismatch": 3,
        "unsupported_kind": 3,
        "empty": 2,
        "bad_payload": 5,
        "bad_seq": 1,
    }
    assert nonzero(stats["rejected_items"]) == {"unsupported_kind": 3, "bad_payload": 2}
    assert stats["client_reported"] == {"sent_records": 3}
    assert agent.terminate() == 0
    assert dumped_names(agent.dump()) == ["after-garbage"]
    code, report = agent.verify()
    assert code == 0 and report["clean"] and report["records"] == 1


def test_oversized_message_is_rejected_and_connection_survives(agent: AgentProcess) -> None:
    """A message over 64 KiB (however much over) is rejected as oversized with its own seq, the same
    connection then gets a maximum-size message (exactly 64 KiB) accepted and written once."""
    ledger = Ledger()
    max_payload = MAX_MESSAGE_SIZE - protocol.HEADER_SIZE
    resource = b'{"r":1}'
    line = b'"' + b"m" * (max_payload - len(resource) - 1 - 3) + b'"'  # a JSON string record
    exact = encode_records([line], seq=5, resource=resource)
    assert len(exact) == MAX_MESSAGE_SIZE
    over = [
        encode_records([line + b" "], seq=1, resource=resource),  # one byte too many
        header(seq=2, payload=b"{}\n" + b"o" * (128 * 1024) + b"\n"),
        header(seq=3, payload=b"{}\n" + b"o" * (512 * 1024) + b"\n"),
    ]
    assert len(over[0]) == MAX_MESSAGE_SIZE + 1
    with RawClient(agent.socket_path, sndbuf=4 * 1024 * 1024) as client:
        for msg in over:
            outcome = send_and_expect(client, ledger, msg)
            assert outcome.reason == "oversized"
        send_and_expect(client, ledger, exact)
        send_and_expect(client, ledger, encode_records([record_line("small")], seq=6))
    stats = ledger.agent_stats(agent)
    assert stats["rejected_messages"] == {"oversized": 3}
    assert agent.terminate() == 0
    dump = agent.dump()
    assert len(dump) == 2 and dump[0]["record"] == "m" * (len(line) - 2)
    assert dumped_names(dump[1:]) == ["small"]
    assert agent.verify()[0] == 0


def test_zero_length_message_ends_only_that_connection(agent: AgentProcess) -> None:
    """A zero-length SEQPACKET message reads like end-of-stream (recv returns 0): the agent closes that
    connection (nothing to count: no message had a byte), other connections and the agent carry on."""
    ledger = Ledger()
    with RawClient(agent.socket_path) as other, RawClient(agent.socket_path) as client:
        send_and_expect(client, ledger, encode_records([record_line("before-empty")], seq=1))
        client.send_raw(b"")
        with pytest.raises(AgentClosedConnection):
            client.recv_reply(5)
        send_and_expect(other, ledger, encode_records([record_line("other")], seq=1))
    ledger.agent_stats(agent)


def test_half_frame_length_mismatch_is_rejected(agent: AgentProcess) -> None:
    """SEQPACKET keeps message boundaries: a frame sent in two pieces is two bad messages (the first a
    length_mismatch, the second garbage), never glued together; a header whose length disagrees with
    the bytes that came (either way) is length_mismatch; nothing of them reaches the WAL."""
    ledger = Ledger()
    whole = encode_records([record_line(f"split-{i}") for i in range(3)], seq=7)
    half = len(whole) // 2
    pieces = [whole[:10], whole[10:]], [whole[:24], whole[24:]], [whole[:half], whole[half:]]
    with RawClient(agent.socket_path) as client:
        for first, second in pieces:
            o1 = send_and_expect(client, ledger, first)
            o2 = send_and_expect(client, ledger, second)
            assert o1.kind == o2.kind == "reject"
        assert [o.reason for o in (expected_outcome(p) for pair in pieces for p in pair)] == [
            "too_short",
            "bad_magic",
            "length_mismatch",
            "bad_magic",
            "length_mismatch",
            "bad_magic",
        ]
        for i, delta in enumerate((-len(whole) + 24, -1, 1, 1000, 1 << 31)):
            hdr = bytearray(whole)
            struct.pack_into("<IIQ", hdr, 8, 3, len(whole) - 24 + delta, 100 + i)
            assert send_and_expect(client, ledger, bytes(hdr)).reason == "length_mismatch"
        intact = encode_records([record_line(f"split-{i}") for i in range(3)], seq=8)
        send_and_expect(client, ledger, intact)  # the intact frame is fine
    stats = ledger.agent_stats(agent)
    assert stats["rejected_messages"] == {"too_short": 1, "bad_magic": 3, "length_mismatch": 7}
    assert agent.terminate() == 0
    assert dumped_names(agent.dump()) == ["split-0", "split-1", "split-2"]


def test_wrong_count_payload_is_rejected(agent: AgentProcess) -> None:
    """The header's count must match the payload's line structure (1 resource line + count records,
    newline-terminated); each mismatch is bad_payload and counts the header's items as rejected.
    Line *content* is not checked at ingest (the shipper dead-letters what it cannot use): bad JSON,
    invalid UTF-8 and empty lines with the right line count are accepted and stored verbatim."""
    ledger = Ledger()
    two = payload_of(b'{"name":"a"}', b'{"name":"b"}')
    cases = [
        header(count=1, seq=1, payload=two),  # fewer promised than sent
        header(count=3, seq=2, payload=two),  # more promised than sent
        header(count=0xFFFFFFFF, seq=3, payload=two),
        header(count=2, seq=4, payload=two[:-1]),  # last line not terminated
        header(count=2, seq=5, payload=two + b"trailing"),
        header(count=1, seq=6, payload=b"\n"),  # one line where two are due
        header(count=2, seq=7, payload=b'{"r":1}\r\n{"name":"a"}\n{"name":"b"}'),
    ]
    stored = [
        header(count=2, seq=11, payload=b'not json at all\n{"name":"ok"}\n\xff\xfe broken\n'),
        header(count=2, seq=12, payload=b'{"r":1}\n{"name":"e"}\n\n'),  # an empty record line
        header(count=1, seq=13, payload=b"\n\n"),  # empty resource and record lines
    ]
    with RawClient(agent.socket_path) as client:
        for msg in cases:
            assert send_and_expect(client, ledger, msg).reason == "bad_payload", msg
        for msg in stored:
            assert send_and_expect(client, ledger, msg).kind == "accept", msg
    stats = ledger.agent_stats(agent)
    assert stats["rejected_messages"] == {"bad_payload": 7}
    assert nonzero(stats["rejected_items"]) == {"bad_payload": 1 + 3 + 0xFFFFFFFF + 2 + 2 + 1 + 2}
    assert stats["items_received"] == 5
    assert agent.terminate() == 0
    dump = agent.dump()
    assert [d["record"].get("name") if isinstance(d.get("record"), dict) else d.get("raw") for d in dump] == [
        "ok",
        "\ufffd\ufffd broken",
        "e",
        "",
        "",
    ]


def test_unknown_type_version_magic_flags_kind_rejected(agent: AgentProcess) -> None:
    """Every value of type, version, flags, kind and the first magic byte: only the defined ones pass;
    each other one is rejected with its own reason and counted exactly (1,000+ messages, one connection)."""
    ledger = Ledger()
    good = payload_of(b'{"name":"v"}')
    messages: list[bytes] = []
    seq = 0

    def add(**fields: Any) -> None:
        nonlocal seq
        seq += 1
        fields.setdefault("payload", good)
        messages.append(header(seq=seq, **fields))

    for value in range(256):
        if value not in (RECORDS, CLIENT_STATS, STATS_REQUEST):
            add(type=value, count=0 if value >= 0x80 else 1)
        if value != 1:
            add(version=value)
        if value not in (1, 2, 3):  # spans, log records, metric data points
            add(kind=value)
        if value:
            add(flags=value)
        if value != ord("A"):
            add(magic=bytes([value]) + b"T")
        if value != ord("T"):
            add(magic=b"A" + bytes([value]))
    for kind in (1, 2, 3):  # the valid combinations: one of each kind
        add(kind=kind)
    with RawClient(agent.socket_path) as client:
        # Batches small enough that the agent's replies never fill the socket (REJECT is best effort).
        for start in range(0, len(messages), 50):
            batch = messages[start : start + 50]
            outcomes = [ledger.sent(m) for m in batch]
            for m in batch:
                client.send_raw(m)
            for outcome in outcomes:
                if outcome.kind == "reject":
                    reply = client.recv_reply(5)
                    while reply is not None and reply[0] == MessageType.ACK:
                        reply = client.recv_reply(5)
                    assert reply == (MessageType.REJECT, outcome.seq, outcome.reason.encode())
        assert client.wait_ack(seq)
    stats = ledger.agent_stats(agent)
    assert stats["rejected_messages"] == {
        "bad_type": 256 - 3,
        "bad_version": 255,
        "unsupported_kind": 256 - 3,
        "bad_flags": 255,
        "bad_magic": 510,
    }
    assert nonzero(stats["rejected_items"]) == {"unsupported_kind": 256 - 3}
    assert stats["records_received"] == 3


# ---------------------------------------------------------------------------------------------------
def test_stalled_clients_do_not_delay_others(agent: AgentProcess) -> None:
    """200 idle connections and a client that floods bad frames but never reads its REJECTs do not delay a
    well-behaved client's ACKs beyond 1 s; the stalled client is disconnected once MAX_OUTBOX REJECTs are
    queued for it (counted), never silently spared its REJECTs (which would make a later ACK lie)."""
    idle = [RawClient(agent.socket_path) for _ in range(200)]
    stalled = RawClient(agent.socket_path)
    try:
        bad = header(magic=b"XX", seq=0)
        with contextlib.suppress(OSError):  # the agent cuts it off part way
            for _ in range(5000):
                stalled.send_raw(bad)
        wait_until(lambda: agent.stats()["connections_dropped_unread"] == 1, 10, message="stalled client dropped")
        latencies = []
        with RawClient(agent.socket_path) as good:
            for seq in range(1, 101):
                started = time.monotonic()
                good.send_records([record_line(f"good-{seq}")], seq=seq)
                assert good.wait_ack(seq, 5), f"good client: no ACK for {seq}"
                latencies.append(time.monotonic() - started)
        assert max(latencies) < 1.0, (
            f"ACK latency max {max(latencies):.3f}s, median {statistics.median(latencies):.4f}s"
        )
        stats = agent.stats()
        assert stats["connections_open"] >= 200  # the 200 idle ones (the stalled one is gone)
        assert stats["rejected_messages"]["bad_magic"] > MAX_OUTBOX
        for client in idle[:5]:
            assert client.request_stats(seq=1)["connections_open"] >= 200  # idle ones still served
    finally:
        stalled.close()
        for client in idle:
            client.close()
    assert agent.terminate() == 0
    assert sorted(dumped_names(agent.dump())) == sorted(f"good-{i}" for i in range(1, 101))


def test_rejects_always_arrive_before_the_ack_that_follows_them(agent: AgentProcess) -> None:
    """A client that reads late still gets every REJECT, in order, before a cumulative ACK covering later
    messages: the agent queues REJECTs its socket could not take and holds the ACK behind them."""
    n_bad = 600  # more than the socket buffer toward the client holds, fewer than MAX_OUTBOX
    with RawClient(agent.socket_path) as client:
        for seq in range(1, n_bad + 1):
            client.send_records([record_line("x")], seq=seq, kind=9)  # unsupported kind: REJECT
        client.send_records([record_line("kept")], seq=n_bad + 1)
        wait_until(lambda: agent.stats()["records_received"] == 1, 10, message="the good record")
        time.sleep(0.3)
        replies = []
        while (reply := client.recv_reply(2)) is not None:
            replies.append(reply)
            if reply[0] == MessageType.ACK:
                break
    kinds = [r[0] for r in replies]
    assert kinds.count(MessageType.REJECT) == n_bad
    assert kinds[-1] == MessageType.ACK and replies[-1][1] == n_bad + 1
    assert [r[1] for r in replies[:-1]] == list(range(1, n_bad + 1))
    assert agent.stats()["connections_dropped_unread"] == 0


FLOOD_SCRIPT = r"""
import json, socket, struct, sys, time
path, seconds = sys.argv[1], float(sys.argv[2])
from automagik_telemetry import protocol
resource = b'{"r":1}\n'
payload = resource + b'"' + b"f" * (protocol.MAX_PAYLOAD_SIZE - len(resource) - 3) + b'"\n'
assert len(payload) == protocol.MAX_PAYLOAD_SIZE
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect(path)
s.setblocking(False)
sent = acked = 0
seq = 0
deadline = time.monotonic() + seconds
print("flooding", flush=True)
while time.monotonic() < deadline:
    seq += 1
    msg = protocol.encode(protocol.MessageType.RECORDS, payload, seq=seq, count=1, kind=1)
    while True:
        try:
            s.send(msg)
            break
        except BlockingIOError:
            pass
        try:  # read replies while blocked, without waiting
            while True:
                r = s.recv(256)
                if r[3] == 0x81:
                    acked = int.from_bytes(r[16:24], "little")
        except BlockingIOError:
            pass
    sent += 1
print(json.dumps({"sent": sent, "bytes": sent * len(msg), "acked": acked}), flush=True)
"""


def test_flooding_client_does_not_starve_others(agent_factory: Any) -> None:
    """One process floods maximum-size valid messages as fast as it can for 4 s; meanwhile another
    client's messages are still ACKed within 2 s each, and every message of both is in the WAL."""
    agent = agent_factory()
    try:
        _flood_and_measure(agent)
    finally:  # the flood wrote a GB or more: never leave it in pytest's kept tmp dirs
        agent.cleanup(graceful=False)
        for name in os.listdir(agent.wal_dir):
            if name.endswith(".seg"):
                os.unlink(os.path.join(agent.wal_dir, name))


def _flood_and_measure(agent: AgentProcess) -> None:
    flood = subprocess.Popen(
        [sys.executable, "-c", FLOOD_SCRIPT, agent.socket_path, "4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=agent_env(),
        text=True,
    )
    try:
        assert flood.stdout is not None
        assert flood.stdout.readline().strip() == "flooding", flood.stderr.read() if flood.stderr else ""
        time.sleep(0.3)
        latencies = []
        seq = 0
        with RawClient(agent.socket_path) as victim:
            while flood.poll() is None and seq < 400:
                seq += 1
                started = time.monotonic()
                victim.send_records([record_line(f"victim-{seq}")], seq=seq)
                assert victim.wait_ack(seq, 10), f"victim: no ACK for {seq} within 10 s"
                latencies.append(time.monotonic() - started)
                time.sleep(0.01)
        out, err = flood.communicate(timeout=30)
    finally:
        if flood.poll() is None:
            flood.kill()
            flood.wait()
    result = json.loads(out.strip().splitlines()[-1])
    assert flood.returncode == 0, err
    assert result["sent"] > 200, f"the flood was not a flood: {result}"
    assert len(latencies) >= 20
    assert max(latencies) < 2.0, (
        f"victim ACK latency max {max(latencies):.3f}s median "
        f"{statistics.median(latencies):.4f}s under a flood of {result}"
    )
    # The flooder's last messages may still be queued in its (closed) connection: they still count.
    stats = wait_until(
        lambda: (s := agent.stats())["records_received"] == result["sent"] + seq and s,
        10,
        message=f"{result['sent'] + seq} records received",
    )
    assert stats["rejected_messages"] == {}
    assert agent.terminate() == 0
    code, report = agent.verify()
    assert code == 0 and report["records"] == result["sent"] + seq
    print(
        f"flood {result}, victim {len(latencies)} msgs, latency max {max(latencies):.3f}s "
        f"median {statistics.median(latencies):.4f}s"
    )


@pytest.mark.agent_settings(max_connections=5)
def test_too_many_connections_refused_and_counted(agent: AgentProcess) -> None:
    """With --max-connections 5, connections 6.. get REJECT(too_many_connections) then end-of-stream,
    counted exactly (connections_refused and rejected_messages); the 5 keep working; closing one frees
    a slot."""
    clients = [RawClient(agent.socket_path) for _ in range(5)]
    try:
        for client in clients:
            client.request_stats(seq=1)  # answered: the connection was accepted
        for _ in range(3):
            with RawClient(agent.socket_path) as extra:
                reply = extra.recv_reply(5)
                assert reply == (MessageType.REJECT, 0, b"too_many_connections")
                with pytest.raises(AgentClosedConnection):
                    extra.recv_reply(5)
        stats = clients[0].request_stats(seq=2)
        assert stats["connections_refused"] == 3
        assert stats["rejected_messages"] == {"too_many_connections": 3}
        assert stats["connections_open"] == 5 and stats["connections_accepted"] == 5
        assert stats["messages_received"] == 6  # refusals read no message
        for i, client in enumerate(clients):
            client.send_records([record_line(f"conn-{i}")], seq=1)
            assert client.wait_ack(1)
        clients.pop().close()

        # The slot comes back once the agent has seen the close.
        def connect_ok() -> bool:
            with RawClient(agent.socket_path) as c:
                try:
                    return c.request_stats(seq=9, timeout=2)["connections_open"] == 5
                except (AgentClosedConnection, AssertionError):
                    return False

        wait_until(connect_ok, 5, interval=0.05, message="a freed connection slot")
    finally:
        for client in clients:
            client.close()
    stats = agent.stats()
    refused = stats["connections_refused"]
    assert stats["rejected_messages"] == {"too_many_connections": refused}
    assert refused >= 3
    assert agent.terminate() == 0
    assert sorted(dumped_names(agent.dump())) == [f"conn-{i}" for i in range(5)]


def test_client_disconnect_mid_stream_loses_nothing_acked(agent: AgentProcess) -> None:
    """Clients that vanish mid-stream (with messages in flight, ACKs unread, some while the agent is
    frozen): every ACKed record is in the WAL exactly once, nothing is duplicated or invented, and
    what was already in the socket when the client closed is still written."""
    sent: dict[str, int] = {}
    acked: set[str] = set()
    lock = threading.Lock()

    def client_run(cid: int, n: int, read_acks: bool) -> None:
        with RawClient(agent.socket_path) as client:
            for seq in range(1, n + 1):
                name = f"c{cid}-{seq}"
                client.send_records([record_line(name)], seq=seq)
                with lock:
                    sent[name] = seq
                if read_acks and seq % 7 == 0:
                    client.wait_ack(seq - 3, 2)
            with lock:
                acked.update(f"c{cid}-{s}" for s in range(1, client.acked + 1))
            # close with the last messages possibly unread by the agent and their ACKs unread by us

    threads = [threading.Thread(target=client_run, args=(i, 60 + 17 * i, i % 2 == 0)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert acked, "no client saw an ACK: the test proves nothing"
    # Clients that send while the agent is frozen, then vanish before it wakes up.
    agent.stop()
    try:
        frozen_sent = []
        for cid in range(100, 104):
            client = RawClient(agent.socket_path, timeout=0.5)
            client.sock.setblocking(False)
            for seq in range(1, 40):
                name = f"c{cid}-{seq}"
                try:
                    client.send_records([record_line(name)], seq=seq)
                except BlockingIOError:
                    break
                frozen_sent.append(name)
                sent[name] = seq
            client.close()
    finally:
        agent.cont()
    assert frozen_sent
    wait_until(
        lambda: agent.stats()["records_received"] == len(sent),
        10,
        message=f"all {len(sent)} sent records to be received",
    )
    assert agent.terminate() == 0
    names = dumped_names(agent.dump())
    counts = Counter(names)
    assert all(counts[name] == 1 for name in acked), "an ACKed record is missing or duplicated"
    assert set(names) <= set(sent), "the WAL holds records nobody sent"
    assert max(counts.values()) == 1, "duplicated records"
    assert set(names) == set(sent), "messages already in the socket were lost when their client left"
    code, report = agent.verify()
    assert code == 0 and report["records"] == len(sent)


# ---------------------------------------------------------------------------------------------------
def _mutate(draw: st.DrawFn, msg: bytearray) -> bytearray:
    fields = [(2, 1), (3, 1), (4, 1), (5, 1), (6, 2), (8, 4), (12, 4), (16, 8)]  # header fields
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["byte", "field", "truncate", "extend", "newline", "delete"]))
        if op == "byte" and msg:
            msg[draw(st.integers(0, len(msg) - 1))] = draw(st.integers(0, 255))
        elif op == "field":
            offset, size = draw(st.sampled_from(fields))
            interesting = [
                0,
                1,
                2,
                3,
                0x10,
                0x7F,
                0x80,
                0x81,
                0xFF,
                len(msg) - 24,
                len(msg) - 23,
                (1 << (8 * size)) - 1,
            ]
            value = draw(st.sampled_from(interesting) | st.integers(0, (1 << (8 * size)) - 1))
            if len(msg) >= offset + size:
                msg[offset : offset + size] = (value % (1 << (8 * size))).to_bytes(size, "little")
        elif op == "truncate":
            del msg[draw(st.integers(1, max(1, len(msg)))) :]
        elif op == "extend":
            msg += draw(st.binary(min_size=1, max_size=40))
        elif op == "newline" and msg:
            msg.insert(draw(st.integers(0, len(msg))), 0x0A)
        elif op == "delete" and len(msg) > 1:
            del msg[draw(st.integers(0, len(msg) - 1))]
    return msg


@st.composite
def fuzzed_message(draw: st.DrawFn) -> bytes:
    seq = draw(st.integers(1, 1 << 20) | st.sampled_from([0, (1 << 64) - 1]))
    n = draw(st.integers(1, 4))
    valid = encode_records([record_line(f"fz-{seq}-{i}", pad=draw(st.integers(0, 30))) for i in range(n)], seq=seq)
    choice = draw(st.sampled_from(["random", "header+random", "mutated", "mutated", "valid", "control", "oversized"]))
    if choice == "random":
        msg = draw(st.binary(min_size=1, max_size=200))
    elif choice == "header+random":
        msg = header(
            type=draw(st.sampled_from([1, 2, 0x10, 0x81, 7])),
            kind=draw(st.integers(0, 3)),
            count=draw(st.integers(0, 5)),
            seq=seq,
            payload=draw(st.binary(max_size=120)),
        )
    elif choice == "mutated":
        msg = bytes(_mutate(draw, bytearray(valid)))
    elif choice == "valid":
        msg = valid
    elif choice == "control":
        body = draw(st.sampled_from([b"", b"{}", b'{"instance":"fz","n":1}', b"[1]", b"\x00"]))
        msg = header(type=draw(st.sampled_from([CLIENT_STATS, STATS_REQUEST])), count=0, kind=0, seq=seq, payload=body)
    else:
        msg = valid + b"\n" * (MAX_MESSAGE_SIZE + draw(st.integers(-30, 30)) - len(valid))
        msg = msg[: 24 - 12] + struct.pack("<I", len(msg) - 24) + msg[16:]
    return msg if msg else b"\x00"


def test_fuzzed_frames_never_crash_the_agent(agent_factory: Any) -> None:
    """~300 hypothesis examples of random bytes, random headers and mutated valid messages (each
    example a connection of up to 8 messages): after every example the agent has answered each
    rejected message with REJECT(seq, the reason the protocol rules give) in order, its counters match
    the model exactly, it still ACKs; at the end the WAL holds exactly the accepted items and is clean."""
    agent = agent_factory(fsync="always")
    ledger = Ledger()
    examples = 0
    deadline = time.monotonic() + 60 * FUZZ_EXAMPLES / 300

    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        derandomize=False,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.lists(fuzzed_message(), min_size=1, max_size=8))
    def run(messages: list[bytes]) -> None:
        nonlocal examples
        examples += 1
        assert time.monotonic() < deadline, "fuzzing is too slow"
        assert agent.running, f"agent died; stderr:\n{agent.stderr_text[-4000:]}"
        with RawClient(agent.socket_path, sndbuf=1 << 20) as client:
            outcomes = []
            for msg in messages:
                outcomes.append(ledger.sent(msg))
                client.send_raw(msg)
            ledger.stats_request()
            stats = client.request_stats(seq=STATS_SEQ_BASE + examples)
            ledger.check(stats)
            rejects = [(seq, reason) for t, seq, reason in client.replies if t == MessageType.REJECT]
            assert rejects == [(o.seq, o.reason.encode()) for o in outcomes if o.kind == "reject"]
            stats_replies = [seq for t, seq, _ in client.replies if t == MessageType.STATS]
            want_stats = [o.seq for o in outcomes if o.kind == "stats"] + [STATS_SEQ_BASE + examples]
            assert stats_replies == want_stats
            accepted = [o for o in outcomes if o.kind == "accept"]
            if accepted and accepted[-1].seq:  # ACK(0) is never sent: seq 0 is not a valid seq
                last = accepted[-1].seq
                deadline_ack = time.monotonic() + 5
                while client.last_ack != last and time.monotonic() < deadline_ack:
                    client.recv_reply(0.5)
                assert client.last_ack == last, f"no ACK({last}); replies {client.replies[-5:]}"

    started = time.monotonic()
    run()
    elapsed = time.monotonic() - started
    # Afterwards: alive, serving, counters exact, and the WAL holds exactly what was accepted.
    with RawClient(agent.socket_path) as client:
        send_and_expect(client, ledger, encode_records([record_line("after-fuzz")], seq=1))
    stats = ledger.agent_stats(agent)
    assert (
        stats["messages_received"]
        == stats["records_received"] + sum(stats["rejected_messages"].values()) + ledger.control
    )
    assert agent.terminate() == 0
    dump = agent.dump()
    assert len(dump) == stats["items_received"]
    code, report = agent.verify()
    assert code == 0 and report["records"] == stats["records_received"]
    print(
        f"fuzz: {examples} examples, {ledger.messages} messages in {elapsed:.1f}s; "
        f"accepted {ledger.records} records, rejected {dict(ledger.rejected)}"
    )
    assert examples >= min(100, FUZZ_EXAMPLES)


def test_client_stats_flood_cannot_break_stats(agent: AgentProcess) -> None:
    """CLIENT_STATS is attacker-controlled JSON: many instances with thousands of distinct, long counter
    names and huge values must not make the agent's own STATS reply unsendable (> 64 KiB), nor erase
    the counters an honest client reported first."""
    ledger = Ledger()
    with RawClient(agent.socket_path) as client:
        honest = header(type=CLIENT_STATS, count=0, kind=0, seq=1, payload=b'{"instance":"honest","sent_records":5}')
        send_and_expect(client, ledger, honest)
        for i in range(40):
            counters: dict[str, Any] = {"instance": f"hostile-{i}"}
            counters |= {f"c{i}_{k}_{'z' * 40}": 10**18 for k in range(100)}
            counters |= {f"long_{i}_" + "y" * 500: 1, f"huge_{i}": 10**4000}
            msg = header(type=CLIENT_STATS, count=0, kind=0, seq=i + 2, payload=json.dumps(counters).encode())
            assert len(msg) <= MAX_MESSAGE_SIZE
            assert send_and_expect(client, ledger, msg).kind == "client_stats"
        ledger.stats_request()
        stats = client.request_stats(seq=STATS_SEQ_BASE)
        assert client.rejected == {}, f"the agent rejected its own STATS reply: {client.rejected}"
    ledger.check(stats)
    assert stats["client_reported"]["sent_records"] == 5
    assert len(json.dumps(stats)) < MAX_MESSAGE_SIZE // 2
