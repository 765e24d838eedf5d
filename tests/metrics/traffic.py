"""Known client traffic (valid, rejected, CLIENT_STATS) and a /metrics scraper, shared by the metrics tests."""

from __future__ import annotations

import json
import urllib.request
from collections import Counter
from dataclasses import dataclass, field

from agent_process import RawClient
from prometheus_client.parser import text_string_to_metric_families
from shipper.shipper_helpers import RESOURCE, span

from automagik_telemetry import protocol
from automagik_telemetry.protocol import MessageType

P = "automagik_telemetry_"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Traffic:
    """What was sent, i.e. what the agent's counters must say."""

    messages: int = 0
    bytes: int = 0
    records: int = 0
    spans: int = 0
    span_ids: list[int] = field(default_factory=list)  # span numbers (shipper_helpers.span) accepted
    rejected_messages: Counter = field(default_factory=Counter)
    rejected_spans: Counter = field(default_factory=Counter)
    client: dict[str, int] = field(default_factory=dict)


def _records(lines: list[bytes], seq: int, *, count: int | None = None, kind: int = 1) -> bytes:
    payload = RESOURCE + b"\n" + b"".join(line + b"\n" for line in lines)
    return protocol.encode(
        MessageType.RECORDS, payload, seq=seq, count=len(lines) if count is None else count, kind=kind
    )


def send_known_traffic(
    socket_path: str,
    valid: int = 40,
    first_span: int = 0,
    instance: str = "metrics-test",
    client_counters: dict[str, int] | None = None,
) -> Traffic:
    """Send ``valid`` accepted RECORDS messages (1..5 spans each), five rejected ones with known reasons and
    one CLIENT_STATS; wait until the agent answered everything. Returns the expected counts."""
    t = Traffic()
    client_counters = client_counters or {"dropped_queue_full": 7, "unconfirmed_records": 2, "sent_records": 100}
    n = first_span
    with RawClient(socket_path) as client:

        def send(message: bytes) -> None:
            client.send_raw(message)
            t.messages += 1
            t.bytes += len(message)

        seq = 0
        for i in range(valid):
            k = i % 5 + 1
            seq += 1
            send(_records([span(n + j) for j in range(k)], seq))
            t.records += 1
            t.spans += k
            t.span_ids += range(n, n + k)
            n += k
            if i == valid // 2:  # rejected ones in the middle of the stream
                seq += 1
                send(b"AT\x01")
                t.rejected_messages["too_short"] += 1
                seq += 1
                send(b"XX" + _records([span(10**6)], seq)[2:])
                t.rejected_messages["bad_magic"] += 1
                seq += 1
                send(_records([span(10**6 + j) for j in range(3)], seq, kind=4))  # a kind no agent knows
                t.rejected_messages["unsupported_kind"] += 1
                t.rejected_spans["unsupported_kind"] += 3
                seq += 1
                send(_records([span(10**6 + j) for j in range(2)], seq, count=5))
                t.rejected_messages["bad_payload"] += 1
                t.rejected_spans["bad_payload"] += 5
                seq += 1
                send(protocol.encode(MessageType.RECORDS, RESOURCE + b"\n", seq=seq, count=0, kind=1))
                t.rejected_messages["empty"] += 1
                seq += 1
                send(
                    protocol.encode(
                        MessageType.CLIENT_STATS,
                        json.dumps({"instance": instance, **client_counters}).encode(),
                        seq=seq,
                    )
                )
                t.client = dict(client_counters)
        assert client.wait_ack(seq, timeout=10), f"no ACK for the last message (replies: {client.replies[-3:]})"
        assert sorted(Counter(client.rejected.values()).items()) == sorted(t.rejected_messages.items())
    return t


def scrape(port: int, host: str = "127.0.0.1") -> Samples:
    """GET /metrics and parse it: (sample name, labels) -> value."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (``name`` without the prefix); KeyError names what is missing."""
    key = (P + name, frozenset(labels.items()))
    if key not in samples:
        raise KeyError(f"{P + name}{labels or ''} not in the scrape")
    return samples[key]


def total(samples: Samples, name: str) -> float:
    """Sum of a metric over all its label values."""
    return sum(v for (n, _), v in samples.items() if n == P + name)
