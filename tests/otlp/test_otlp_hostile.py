"""Hostile input against the real OTLP/HTTP receiver (issue 12, "Hostile input").

A gzip bomb, truncated and garbage protobuf, invalid JSON, wrong content types and encodings, a 100 MB
body (declared and chunked), hundreds of byte-a-second connections, more connections than the limit:
the agent stays up (the same ``otlp`` process serves before and after), its memory stays bounded
(``VmHWM``, the peak RSS, of the ``otlp`` process), a well-behaved exporter's data all lands (ingest's
``items_by_signal``, the WAL), and every refusal is counted by reason (the Prometheus scrape).

Everything runs against real agent processes (``sink="none"``: the WAL shows what was accepted) over
real sockets; :func:`request` is a raw HTTP/1.1 client that reads while it sends, as exporters do, so an
early answer (413 after the headers) is seen even while a 100 MB body is still being written.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import selectors
import socket
import struct
import threading
import time
import urllib.request
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from agent_process import wait_until
from google.protobuf.json_format import MessageToJson
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import OtlpAgent, free_port, post

MiB = 1024 * 1024
MAX_BODY = 16 * MiB  # otlp.max_body's default
RSS_BOUND_MB = 150.0  # the otlp process's peak RSS (VmHWM) under any of this
PREFIX = "automagik_telemetry_"
PROTOBUF, JSON = "application/x-protobuf", "application/json"
RPC_INVALID_ARGUMENT, RPC_NOT_FOUND, RPC_UNIMPLEMENTED, RPC_RESOURCE_EXHAUSTED, RPC_UNAVAILABLE = 3, 5, 12, 8, 14

Agent = Callable[..., OtlpAgent]


# ---- what the tests send -----------------------------------------------------------------------
def spans_body(prefix: str, n: int) -> bytes:
    """A valid ExportTraceServiceRequest of ``n`` spans named ``<prefix>-<i>`` (distinct bodies: no dedup)."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    attr = rs.resource.attributes.add()
    attr.key, attr.value.string_value = "service.name", "hostile-test"
    scope = rs.scope_spans.add()
    for i in range(n):
        span = scope.spans.add()
        span.name = f"{prefix}-{i}"
        span.trace_id = (prefix.encode() * 16)[:16]
        span.span_id = struct.pack(">Q", i + 1)
        span.start_time_unix_nano, span.end_time_unix_nano = 1_700_000_000_000_000_000, 1_700_000_000_500_000_000
    return bytes(request.SerializeToString())


def gzip_bomb(size: int) -> bytes:
    """A valid gzip stream of ``size`` zero bytes (a multiple of 1 MiB), about ``size / 1032`` bytes long.

    Built without holding the inflated bytes: after a full flush deflate's state is reset, so every MiB of
    zeros compresses to the same block, which is repeated; the trailer's CRC is computed MiB by MiB."""
    zeros = b"\0" * MiB
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(size // MiB):
        crc = zlib.crc32(zeros, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # gzip, deflate, no flags, no mtime, unknown OS
    return header + block * (size // MiB) + deflate.flush() + struct.pack("<II", crc, size & 0xFFFFFFFF)


def zeros(total: int, piece: int = MiB) -> Iterator[bytes]:
    chunk = b"\0" * piece
    for _ in range(total // piece):
        yield chunk


def head(method: str, path: str, content_type: str = PROTOBUF, **headers: str | int) -> bytes:
    """A request's head; header names from keywords (``content_length`` -> ``Content-Length``)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {content_type}"]
    lines += [f"{name.replace('_', '-').title()}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# ---- a raw client that reads while it sends ------------------------------------------------------
@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes
    sent: int  # body bytes written before the answer arrived (all of them when it came after the body)
    seconds: float  # from the end of the request's head to the answer's first byte
    closed: bool  # the server closed the connection after the answer

    def error(self) -> tuple[int, str]:
        """The answer's google.rpc.Status (code, message), in the encoding its Content-Type names."""
        if self.headers["content-type"] == JSON:
            status = json.loads(self.body)
            assert set(status) == {"code", "message"}, status
            return status["code"], status["message"]
        assert self.headers["content-type"] == PROTOBUF, self.headers
        parsed = Status.FromString(self.body)
        return parsed.code, parsed.message


def request(
    port: int, request_head: bytes, body: bytes | Iterable[bytes] = b"", *, chunked: bool = False, timeout: float = 10.0
) -> Answer:
    """Send ``request_head`` and ``body`` (bytes, or pieces: a 100 MB body need not exist at once), reading
    all the while; stop sending as soon as the answer starts (exporters do: an early 413 ends the upload).
    ``chunked``: each piece is framed as a chunk and the last chunk follows."""
    pieces: Iterator[bytes] = iter([body] if isinstance(body, bytes) else body)
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.sendall(request_head)
        started = time.monotonic()
        sock.setblocking(False)
        with selectors.DefaultSelector() as selector:
            selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
            sent, received, first_byte_at, closed = _exchange(sock, selector, pieces, chunked, started + timeout)
        status, headers, answer_body = _parse(received)
        if not closed and headers.get("connection") == "close":  # then the server must end the connection
            sock.setblocking(True)
            sock.settimeout(3.0)
            try:
                closed = sock.recv(1 << 16) == b""
            except ConnectionResetError:
                closed = True
            except TimeoutError:
                closed = False
        return Answer(status, headers, answer_body, sent, first_byte_at - started, closed)
    finally:
        sock.close()


def _exchange(
    sock: socket.socket,
    selector: selectors.BaseSelector,
    pieces: Iterator[bytes],
    chunked: bool,
    deadline: float,
) -> tuple[int, bytes, float, bool]:
    """Write the body while reading; (body bytes sent, bytes received, when the first came, EOF seen)."""
    out, sent, done_sending = bytearray(), 0, False
    received, first_byte_at, eof = bytearray(), 0.0, False
    while not _complete(received) and not eof:
        if time.monotonic() > deadline:
            raise AssertionError(f"no complete answer in time; got {bytes(received[:200])!r}")
        if not out and not done_sending:
            piece = next(pieces, None)
            if piece is None:
                done_sending = True
                out += b"0\r\n\r\n" if chunked else b""
            else:
                out += (b"%x\r\n%s\r\n" % (len(piece), piece)) if chunked and piece else piece
        if not out and done_sending:
            selector.modify(sock, selectors.EVENT_READ)
        for _, mask in selector.select(timeout=0.5):
            if mask & selectors.EVENT_READ:
                try:
                    data = sock.recv(1 << 16)
                except ConnectionResetError:
                    data = b""
                first_byte_at = first_byte_at or time.monotonic()
                received += data
                eof = not data
                if not done_sending:  # the answer began (or the server closed): stop sending
                    out.clear()
                    done_sending = True
                    selector.modify(sock, selectors.EVENT_READ)
            elif mask & selectors.EVENT_WRITE and out:
                try:
                    n = sock.send(out)
                except (BrokenPipeError, ConnectionResetError):  # the server closed: its answer is in our buffer
                    out.clear()
                    done_sending = True
                    selector.modify(sock, selectors.EVENT_READ)
                    continue
                sent += n
                del out[:n]
    return sent, bytes(received), first_byte_at, eof


def _split(raw: bytes) -> tuple[int, dict[str, str], bytes] | None:
    while raw.startswith(b"HTTP/1.1 100 "):  # an interim 100 Continue
        end = raw.find(b"\r\n\r\n")
        if end < 0:
            return None
        raw = raw[end + 4 :]
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = raw[:end].decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split(" ")[1]), headers, raw[end + 4 :]


def _complete(raw: bytes | bytearray) -> bool:
    parts = _split(bytes(raw))
    return parts is not None and len(parts[2]) >= int(parts[1].get("content-length", "0"))


def _parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    parts = _split(raw)
    assert parts is not None and _complete(raw), f"not a complete HTTP answer: {raw[:300]!r}"
    status, headers, body = parts
    return status, headers, body[: int(headers.get("content-length", "0"))]


# ---- what the tests measure ----------------------------------------------------------------------
def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MB: its resident memory now, and the most it ever had."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def by_label(samples: Samples, name: str, *labels: str) -> dict[tuple[str, ...], int]:
    """The non-zero samples of ``PREFIX + name`` keyed by the values of ``labels``."""
    out = {}
    for (sample, label_set), value in samples.items():
        if sample == PREFIX + name and value:
            d = dict(label_set)
            out[tuple(d[label] for label in labels)] = int(value)
    return out


def one(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((PREFIX + name, frozenset(labels.items())), 0.0)


def scrape_until(port: int, ready: Callable[[Samples], bool], what: str, timeout: float = 15.0) -> Samples:
    """Scrape until ``ready`` holds: the children report their metrics about once a second."""

    def attempt() -> Samples | None:
        samples = scrape(port)
        return samples if ready(samples) else None

    return wait_until(attempt, timeout, interval=0.2, message=what, retry_on=(OSError,))


def traces_received(agent: OtlpAgent) -> int:
    return int(agent.stats()["items_by_signal"]["traces"])


# ---- 1. every class of bad request -------------------------------------------------------------
def test_each_bad_request_gets_its_status_and_a_clear_message_and_the_same_receiver_keeps_serving(
    otlp_agent: Agent, tmp_path: Path
) -> None:
    agent = otlp_agent(tmp_path)
    port = agent.otlp_port
    otlp_pid = agent.child_pid("otlp")
    assert post(port, "/v1/traces", spans_body("before", 3))[0] == 200
    rss_before, _ = memory_mb(otlp_pid)

    # A gzip bomb: 1 GiB of zeros in about 1 MB. Cut off at the limit: the process never holds the GiB.
    bomb = gzip_bomb(1024 * MiB)
    assert len(bomb) < 1_100_000
    answer = request(port, head("POST", "/v1/traces", content_encoding="gzip", content_length=len(bomb)), bomb)
    assert answer.status == 413
    assert answer.error() == (
        RPC_RESOURCE_EXHAUSTED,
        f"the body exceeds the limit of {MAX_BODY} bytes (after decompression)",
    )
    assert answer.closed
    rss_after_bomb, peak_after_bomb = memory_mb(otlp_pid)
    assert peak_after_bomb < RSS_BOUND_MB, f"the otlp process peaked at {peak_after_bomb:.0f} MB on a gzip bomb"

    # Undecodable bodies: 400 with the decoder's reason; the connection stays usable (the body was read).
    valid = spans_body("truncated", 20)
    cases: list[tuple[str, bytes, bytes, int, str]] = [
        ("truncated protobuf", head("POST", "/v1/traces", content_length=len(valid) // 2), valid[: len(valid) // 2],
         400, "the body is not a valid protobuf ExportTraceServiceRequest: "),
        ("garbage protobuf", head("POST", "/v1/traces", content_length=12), b"\xff\xfe\xfdnot-proto",
         400, "the body is not a valid protobuf ExportTraceServiceRequest: "),
        ("invalid JSON", head("POST", "/v1/logs", JSON, content_length=18), b'{"resourceLogs": [',
         400, "the body is not valid JSON: "),
        ("not gzip at all", head("POST", "/v1/traces", content_encoding="gzip", content_length=8), b"not gzip",
         400, "the body is not valid gzip data: "),
        ("text/plain", head("POST", "/v1/traces", "text/plain", content_length=5), b"hello",
         415, "Content-Type 'text/plain' is not supported: application/x-protobuf or application/json"),
        ("Content-Encoding: br", head("POST", "/v1/traces", content_encoding="br", content_length=5), b"\x0b\x02\x80hi",
         415, "Content-Encoding 'br' is not supported: gzip, deflate or none"),
        ("GET", head("GET", "/v1/traces"), b"",
         405, "GET is not allowed: POST"),
        ("unknown path", head("POST", "/v2/traces", content_length=5), b"hello",
         404, "no such path: '/v2/traces' (POST /v1/traces, /v1/logs or /v1/metrics)"),
    ]  # fmt: skip
    rpc_code = {400: RPC_INVALID_ARGUMENT, 404: RPC_NOT_FOUND, 405: RPC_UNIMPLEMENTED, 415: RPC_INVALID_ARGUMENT}
    for what, request_head, body, status, message in cases:
        answer = request(port, request_head, body)
        assert answer.status == status, f"{what}: {answer}"
        code, text = answer.error()
        assert code == rpc_code[status], f"{what}: {answer}"
        assert text.startswith(message) if message.endswith(": ") else text == message, f"{what}: {text!r}"
        if JSON.encode() in request_head:
            assert answer.headers["content-type"] == JSON, f"{what}: a JSON request's error is JSON"
        if status in (404, 405, 415):  # refused on the headers: the body is not read, the connection ends
            assert answer.closed, f"{what}: the connection stays open"
        if status == 405:
            assert answer.headers["allow"] == "POST"

    # 100 MB declared: refused on the headers, at once, without the server reading the body.
    hundred = 100 * MiB
    answer = request(port, head("POST", "/v1/traces", content_length=hundred), zeros(hundred))
    declared_s, declared_sent = answer.seconds, answer.sent
    assert answer.status == 413
    assert answer.error() == (
        RPC_RESOURCE_EXHAUSTED,
        f"the body of {hundred} bytes exceeds the limit of {MAX_BODY} bytes",
    )
    assert answer.closed
    assert declared_s < 1.0, f"the 413 for a declared 100 MB body took {declared_s:.2f} s"
    # What went out before the 413 is what the kernel buffers took (the server reads one piece after the
    # headers; test_every_request... measures that on its side): far from all of it.
    assert answer.sent < hundred // 2, f"{answer.sent} bytes of the body went out before the 413"

    # 100 MB chunked (no length to refuse on): read up to the limit, then 413 and the connection ends.
    answer = request(port, head("POST", "/v1/traces", transfer_encoding="chunked"), zeros(hundred), chunked=True)
    chunked_s = answer.seconds
    assert answer.status == 413
    assert answer.error() == (
        RPC_RESOURCE_EXHAUSTED,
        f"the body exceeds the limit of {MAX_BODY} bytes (after decompression)",
    )
    assert answer.closed
    assert MAX_BODY < answer.sent < hundred // 2, f"{answer.sent} bytes sent before the 413: not cut off at the limit"
    assert chunked_s < 5.0

    # The same process serves a well-behaved request afterwards, and all good data is in.
    status, _, body = post(port, "/v1/traces", spans_body("after", 4))
    assert (status, body) == (200, b"")
    assert agent.child_pid("otlp") == otlp_pid, "the otlp process was replaced: it crashed"
    assert agent.running
    wait_until(lambda: traces_received(agent) == 3 + 4, 10, message="the 7 good spans in ingest")
    assert "Traceback" not in agent.stderr_text, agent.stderr_text
    rss_end, peak_end = memory_mb(otlp_pid)
    assert peak_end < RSS_BOUND_MB
    print(
        f"\nRSS of otlp: {rss_before:.1f} MB before the bomb, {rss_after_bomb:.1f} MB after it"
        f" (peak {peak_after_bomb:.1f}), {rss_end:.1f} MB at the end (peak {peak_end:.1f});"
        f" 413 after {declared_s * 1000:.1f} ms and {declared_sent / MiB:.1f} MiB for 100 MB declared,"
        f" after {chunked_s * 1000:.1f} ms and {answer.sent / MiB:.1f} MiB for 100 MB chunked"
    )


# ---- 2. every refusal is counted by reason -----------------------------------------------------
def test_every_request_and_decode_error_is_counted_by_signal_status_and_encoding(
    otlp_agent: Agent, tmp_path: Path
) -> None:
    metrics_port = free_port()
    agent = otlp_agent(tmp_path, metrics_listen=f"127.0.0.1:{metrics_port}")
    port = agent.otlp_port
    logs_json = b'{"resourceLogs":[{"resource":{},"scopeLogs":[{"logRecords":[{"body":{"stringValue":"hi"}}]}]}]}'
    valid = spans_body("counted", 10)
    small = [spans_body(f"c{i}", 2) for i in range(3)]
    half = valid[: len(valid) // 2]
    bomb = gzip_bomb(64 * MiB)
    sent: list[tuple[str, int, bytes, bytes | Iterable[bytes]]] = [
        ("traces", 200, head("POST", "/v1/traces", content_length=len(valid)), valid),
        *[("traces", 200, head("POST", "/v1/traces", content_length=len(b)), b) for b in small],
        ("logs", 200, head("POST", "/v1/logs", JSON, content_length=len(logs_json)), logs_json),
        ("logs", 400, head("POST", "/v1/logs", content_length=4), b"\xff\xff\xff\xff"),  # decode error: protobuf
        ("traces", 400, head("POST", "/v1/traces", content_length=len(half)), half),  # decode error: protobuf
        ("metrics", 400, head("POST", "/v1/metrics", JSON, content_length=3), b"{x}"),  # decode error: json
        ("metrics", 400, head("POST", "/v1/metrics", JSON, content_length=2), b"[]"),  # decode error: json
        ("traces", 400, head("POST", "/v1/traces", content_encoding="gzip", content_length=4), b"nope"),  # not decode
        ("metrics", 415, head("POST", "/v1/metrics", "text/plain", content_length=2), b"hi"),
        ("logs", 415, head("POST", "/v1/logs", content_encoding="br", content_length=2), b"hi"),
        ("traces", 405, head("GET", "/v1/traces"), b""),
        ("other", 404, head("POST", "/", content_length=2), b"hi"),
        ("traces", 413, head("POST", "/v1/traces", content_encoding="gzip", content_length=len(bomb)), bomb),
        ("logs", 413, head("POST", "/v1/logs", content_length=100 * MiB), zeros(100 * MiB)),
    ]  # fmt: skip
    for signal, status, request_head, body in sent:
        assert request(port, request_head, body).status == status, (signal, status, request_head)
    expected = dict(Counter((signal, str(status)) for signal, status, _, _ in sent))

    samples = scrape_until(
        metrics_port,
        lambda s: by_label(s, "otlp_requests_total", "signal", "status") == expected,
        f"otlp_requests_total to be {expected}",
    )
    assert by_label(samples, "otlp_decode_errors_total", "encoding") == {("protobuf",): 2, ("json",): 2}
    assert by_label(samples, "otlp_items_accepted_total", "signal") == {("traces",): 10 + 3 * 2, ("logs",): 1}
    assert by_label(samples, "otlp_items_refused_total", "signal", "reason") == {}
    # What the receiver read: far less than the 100 MB and the 64 MiB it refused.
    assert one(samples, "otlp_received_bytes_total") < 8 * MiB
    assert traces_received(agent) == 16


# ---- 3. hundreds of byte-a-second connections ---------------------------------------------------
SLOW = 300


def test_three_hundred_byte_a_second_connections_get_408_after_the_header_timeout_while_an_exporter_is_served(
    otlp_agent: Agent, tmp_path: Path
) -> None:
    metrics_port = free_port()
    agent = otlp_agent(tmp_path, metrics_listen=f"127.0.0.1:{metrics_port}", otlp_header_timeout="3s")
    port = agent.otlp_port
    otlp_pid = agent.child_pid("otlp")
    assert post(port, "/v1/traces", spans_body("warm-up", 5))[0] == 200  # the receiver is up and warm
    rss_before, _ = memory_mb(otlp_pid)
    slow_head = head("POST", "/v1/traces", content_length=100)

    # The well-behaved exporter: one request of 5 spans every 50 ms for as long as the storm lasts.
    served: list[tuple[int, float]] = []
    storm_over = threading.Event()

    def exporter() -> None:
        i = 0
        while not storm_over.is_set():
            started = time.monotonic()
            try:
                status = post(port, "/v1/traces", spans_body(f"good{i}", 5), timeout=5)[0]
            except OSError:
                status = -1
            served.append((status, time.monotonic() - started))
            i += 1
            storm_over.wait(0.05)

    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(SLOW)]
    selector = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    written = dict.fromkeys(socks, 0)
    got = {sock: b"" for sock in socks}
    closed_after: dict[socket.socket, float] = {}
    sending = threading.Thread(target=exporter, name="well-behaved-exporter")
    sending.start()
    peak_rss = 0.0
    try:
        started = time.monotonic()
        next_byte = started
        while len(closed_after) < SLOW and time.monotonic() - started < 15:
            if time.monotonic() >= next_byte:  # one more byte of the head on every open connection
                for sock in socks:
                    if sock not in closed_after and written[sock] < len(slow_head):
                        with contextlib.suppress(OSError):  # closed by the server: its answer is read below
                            written[sock] += sock.send(slow_head[written[sock] : written[sock] + 1])
                next_byte += 1.0
                peak_rss = max(peak_rss, memory_mb(otlp_pid)[0])
            for key, _ in selector.select(timeout=max(0.0, next_byte - time.monotonic())):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(1 << 16)
                except ConnectionResetError:
                    data = b""
                got[sock] += data
                if not data:
                    closed_after[sock] = time.monotonic() - started
                    selector.unregister(sock)
    finally:
        storm_over.set()
        sending.join()
        for sock in socks:
            sock.close()

    assert len(closed_after) == SLOW, f"{SLOW - len(closed_after)} slow connections still open after 15 s"
    statuses = Counter(_parse(raw)[0] for raw in got.values())
    assert statuses == {408: SLOW}, statuses
    assert all(
        _parse(raw)[2] == b'{"code":4,"message":"the request\'s headers did not arrive in time"}'
        for raw in got.values()
    )
    assert all(written[s] < len(slow_head) for s in socks), "a slow head completed: the test is not slow enough"
    earliest, latest = min(closed_after.values()), max(closed_after.values())
    assert earliest >= 2.9 and latest < 5.0, f"closed between {earliest:.2f} and {latest:.2f} s, not at the 3 s timeout"

    assert len(served) >= 20
    assert {status for status, _ in served} == {200}, Counter(status for status, _ in served)
    worst = max(seconds for _, seconds in served)
    assert worst < 1.0, f"a well-behaved request took {worst:.2f} s during the storm"
    wait_until(lambda: traces_received(agent) == 5 * (1 + len(served)), 10, message="every good span in ingest")

    samples = scrape_until(
        metrics_port,
        lambda s: (
            one(s, "otlp_connections_timed_out_total", phase="headers") == SLOW
            and one(s, "otlp_requests_total", signal="traces", status="200") == 1 + len(served)
        ),
        f"{SLOW} header timeouts and {len(served)} answered requests in the scrape",
    )
    assert by_label(samples, "otlp_requests_total", "signal", "status") == {
        ("other", "408"): SLOW,
        ("traces", "200"): 1 + len(served),
    }
    assert one(samples, "otlp_connections_open") == 0
    rss_after, peak = memory_mb(otlp_pid)
    assert peak < RSS_BOUND_MB, f"the otlp process peaked at {peak:.0f} MB during the storm"
    assert agent.child_pid("otlp") == otlp_pid
    print(
        f"\nslow storm: RSS of otlp {rss_before:.1f} MB before, {peak_rss:.1f} MB at most during, {rss_after:.1f} after"
        f" (peak {peak:.1f}); slow connections closed {earliest:.2f}..{latest:.2f} s;"
        f" {len(served)} good requests, the slowest {worst * 1000:.0f} ms"
    )


# ---- 4. more connections than the limit --------------------------------------------------------
def _read_all(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """What ``sock`` receives within ``timeout`` and whether it then saw EOF."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(1 << 16):
            data += chunk
    except TimeoutError:
        return data, False
    except ConnectionResetError:
        pass
    return data, True


def test_connections_beyond_the_limit_get_503_with_retry_after_and_a_slot_freed_is_served(
    otlp_agent: Agent, tmp_path: Path
) -> None:
    metrics_port = free_port()
    agent = otlp_agent(  # a long header timeout: the held connections stay until the test closes them
        tmp_path, metrics_listen=f"127.0.0.1:{metrics_port}", otlp_max_connections=20, otlp_header_timeout="60s"
    )
    port = agent.otlp_port
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(40)]
    try:
        scrape_until(  # the receiver has taken all 40 from the backlog
            metrics_port,
            lambda s: one(s, "otlp_connections_refused_total") == 20 and one(s, "otlp_connections_open") == 20,
            "20 refused and 20 open connections in the scrape",
        )
        outcomes = [_read_all(sock, 0.05) for sock in socks]
        refused = [(data, eof) for data, eof in outcomes if data]
        idle = [sock for sock, (data, eof) in zip(socks, outcomes, strict=True) if not data and not eof]
        assert len(refused) == 20 and len(idle) == 20, [o[0][:20] for o in outcomes]
        for data, eof in refused:
            status, headers, body = _parse(data)
            assert (status, headers["retry-after"], headers["connection"]) == (503, "1", "close")
            assert json.loads(body) == {"code": RPC_UNAVAILABLE, "message": "too many connections; retry later"}
            assert eof, "a refused connection stays open"

        # A request on one more connection while the 20 are held: refused the same way.
        late = request(port, head("POST", "/v1/traces", content_length=5), b"hello")
        assert (late.status, late.headers["retry-after"], late.closed) == (503, "1", True)
        scrape_until(
            metrics_port,
            lambda s: one(s, "otlp_connections_refused_total") == 21 and one(s, "otlp_connections_open") == 20,
            "21 refused and 20 open connections in the scrape",
        )
    finally:
        for sock in socks:
            sock.close()

    scrape_until(metrics_port, lambda s: one(s, "otlp_connections_open") == 0, "the 20 closed connections gone")
    status, _, _ = post(port, "/v1/traces", spans_body("after-the-crowd", 3))
    assert status == 200
    assert traces_received(agent) == 3
    samples = scrape_until(
        metrics_port,
        lambda s: one(s, "otlp_connections_accepted_total") == 21,
        "the 20 held connections and the served one accepted",
    )
    assert one(samples, "otlp_connections_refused_total") == 21
    assert by_label(samples, "otlp_requests_total", "signal", "status") == {("traces", "200"): 1}


def test_connections_that_send_nothing_give_their_slot_back_after_the_header_timeout(
    otlp_agent: Agent, tmp_path: Path
) -> None:
    """A new connection is not a keep-alive one: one that never sends a byte is closed after
    ``header_timeout`` (2 s here), not ``idle_timeout`` (120 s), so silent sockets cannot hold every slot."""
    metrics_port = free_port()
    agent = otlp_agent(
        tmp_path, metrics_listen=f"127.0.0.1:{metrics_port}", otlp_max_connections=20, otlp_header_timeout="2s"
    )
    port = agent.otlp_port
    started = time.monotonic()
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(20)]
    try:
        assert request(port, head("POST", "/v1/traces", content_length=5), b"hello").status == 503
        outcomes, closed_at = [], []
        for sock in socks:
            outcomes.append(_read_all(sock, max(0.1, started + 6 - time.monotonic())))
            closed_at.append(time.monotonic() - started)
        assert outcomes == [(b"", True)] * 20, outcomes  # closed without an answer: nothing was asked
        assert closed_at[0] >= 1.9 and closed_at[-1] < 5.0, closed_at
    finally:
        for sock in socks:
            sock.close()
    assert post(port, "/v1/traces", spans_body("slot", 2))[0] == 200
    samples = scrape_until(
        metrics_port,
        lambda s: one(s, "otlp_connections_timed_out_total", phase="idle") == 20,
        "20 idle timeouts in the scrape",
    )
    assert one(samples, "otlp_connections_refused_total") == 1


# ---- HTTP framing at the edges ------------------------------------------------------------------
def _raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` at once and read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return _read_all(sock, timeout)[0]


def test_malformed_framing_is_answered_4xx_never_5xx_and_the_receiver_keeps_serving(
    otlp_agent: Agent, tmp_path: Path
) -> None:
    agent = otlp_agent(tmp_path)
    port = agent.otlp_port
    otlp_pid = agent.child_pid("otlp")
    garbage_after = gzip.compress(spans_body("garbage-after", 2)) + b"garbage"
    cases: list[tuple[str, bytes, bytes, int, str]] = [
        # h11 hints 501 for a transfer coding it does not know: bad input all the same, 400
        ("Transfer-Encoding: gzip", head("POST", "/v1/traces", transfer_encoding="gzip"), b"",
         400, "malformed HTTP request: Only Transfer-Encoding: chunked is supported"),
        ("both framings", head("POST", "/v1/traces", transfer_encoding="chunked", content_length=2),
         b"2\r\n{}\r\n0\r\n\r\n", 400, "both Transfer-Encoding and Content-Length: send one of them"),
        # 20 KB of headers in one write: h11 alone takes a complete header block of any size
        ("20 KB of headers", head("POST", "/v1/traces", x_padding="a" * 20_000, content_length=2), b"{}",
         431, "the request's headers take "),
        ("not deflate data", head("POST", "/v1/traces", content_encoding="deflate", content_length=8), b"not zlib",
         400, "the body is not valid deflate data: "),
        ("gzip, then garbage", head("POST", "/v1/traces", content_encoding="gzip", content_length=len(garbage_after)),
         garbage_after, 400, "the body is not valid gzip data: "),
        ("no request line", b"hello there\r\n\r\n", b"",
         400, "malformed HTTP request: "),
    ]  # fmt: skip
    for what, request_head, body, status, message in cases:
        answer = request(port, request_head, body)
        assert answer.status == status, f"{what}: {answer}"
        code, text = answer.error()
        assert text.startswith(message) if message.endswith(" ") else text == message, f"{what}: {text!r}"
        assert code == (RPC_INVALID_ARGUMENT if status == 400 else RPC_RESOURCE_EXHAUSTED), what
        assert answer.closed, f"{what}: the connection stays open after a framing error"

    # HEAD: 405 with Allow, and no body (an answer to HEAD never has one)
    raw = _raw(port, head("HEAD", "/v1/traces"))
    status, headers, rest = _split(raw) or (0, {}, b"?")
    assert (status, headers.get("allow"), rest) == (405, "POST", b""), raw

    status, _, _ = post(port, "/v1/traces", spans_body("after-framing", 2))
    assert status == 200
    assert agent.child_pid("otlp") == otlp_pid
    assert traces_received(agent) == 2  # the gzip body with garbage after it was refused whole
    assert "Traceback" not in agent.stderr_text, agent.stderr_text


def test_multi_member_gzip_and_expect_100_continue_are_served_whole(otlp_agent: Agent, tmp_path: Path) -> None:
    agent = otlp_agent(tmp_path)
    port = agent.otlp_port
    body = spans_body("members", 6)
    # gzip allows concatenated members (RFC 1952 2.2; `gzip -c a b`, Go's reader): all of them are the body
    members = gzip.compress(body[:40]) + gzip.compress(body[40:])
    answer = request(port, head("POST", "/v1/traces", content_encoding="gzip", content_length=len(members)), members)
    assert (answer.status, answer.body) == (200, b"")
    wait_until(lambda: traces_received(agent) == 6, 10, message="the 6 spans of both gzip members")

    # Expect: 100-continue (curl for large bodies, .NET): the 100 comes once the headers passed, then the answer
    expecting = spans_body("expect", 3)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head("POST", "/v1/traces", content_length=len(expecting), expect="100-continue"))
        started = time.monotonic()
        assert sock.recv(1 << 16) == b"HTTP/1.1 100 Continue\r\n\r\n"
        continue_s = time.monotonic() - started
        sock.sendall(expecting)
        status, _, _ = _parse(sock.recv(1 << 16))
    assert status == 200 and continue_s < 0.5, (status, continue_s)
    # ... and none for a request refused on its headers: the client need not send the body at all
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head("POST", "/v1/traces", content_length=100 * MiB, expect="100-continue"))
        data, eof = _read_all(sock, 3.0)
    assert _parse(data)[0] == 413 and eof
    wait_until(lambda: traces_received(agent) == 9, 10, message="the 3 spans sent after the 100 Continue")


# ---- 5. partial success ------------------------------------------------------------------------
def metrics_body(gauge_name: str) -> ExportMetricsServiceRequest:
    """A gauge of 2 points (stored) and an exponential histogram of 3 points (no columns for it: refused)."""
    request = ExportMetricsServiceRequest()
    scope = request.resource_metrics.add().scope_metrics.add()
    gauge = scope.metrics.add()
    gauge.name = gauge_name
    for i in range(2):
        point = gauge.gauge.data_points.add()
        point.time_unix_nano, point.as_int = 1_700_000_000_000_000_000 + i, 40 + i
    expo = scope.metrics.add()
    expo.name = "request.latency"
    for i in range(3):
        point = expo.exponential_histogram.data_points.add()
        point.time_unix_nano, point.count, point.scale = 1_700_000_000_000_000_000 + i, 1, 2
    return request


def test_a_metrics_request_with_an_exponential_histogram_is_a_partial_success_and_its_gauge_is_stored(
    otlp_agent: Agent, tmp_path: Path
) -> None:
    metrics_port = free_port()
    agent = otlp_agent(tmp_path, metrics_listen=f"127.0.0.1:{metrics_port}")
    port = agent.otlp_port

    status, headers, body = post(port, "/v1/metrics", metrics_body("queue.depth").SerializeToString())
    assert (status, headers["content-type"]) == (200, PROTOBUF)
    partial = ExportMetricsServiceResponse.FromString(body).partial_success
    assert partial.rejected_data_points == 3
    assert "'request.latency'" in partial.error_message and "exponential_histogram" in partial.error_message

    as_json = _otlp_json(metrics_body("queue.depth.json"))
    status, headers, body = post(port, "/v1/metrics", as_json, JSON)
    assert (status, headers["content-type"]) == (200, JSON)
    answer = json.loads(body)["partialSuccess"]
    assert answer["rejectedDataPoints"] in ("3", 3)
    assert "'request.latency'" in answer["errorMessage"] and "exponentialHistogram" in answer["errorMessage"]

    stored = {
        item["record"]["name"]: len(item["record"]["gauge"]["dataPoints"]) for item in agent.dump() if "record" in item
    }
    assert stored == {"queue.depth": 2, "queue.depth.json": 2}  # the gauges, every point; no histogram
    samples = scrape_until(
        metrics_port,
        lambda s: one(s, "otlp_items_refused_total", signal="metrics", reason="unsupported_metric_type") == 6,
        "6 refused data points in the scrape",
    )
    assert one(samples, "otlp_items_accepted_total", signal="metrics") == 4
    assert by_label(samples, "otlp_requests_total", "signal", "status") == {("metrics", "200"): 2}


def _otlp_json(request: ExportMetricsServiceRequest) -> bytes:
    """OTLP/JSON of a metrics request: protobuf's JSON mapping (camelCase) is OTLP/JSON for metrics without ids."""
    return MessageToJson(request).encode()
