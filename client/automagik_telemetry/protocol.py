"""The agent socket protocol, version 1: the one place the wire format is defined.

Transport: a Unix domain socket of type ``SOCK_SEQPACKET``. Every ``send`` is one message and every
``recv`` returns exactly one message (no partial reads, no coalescing). See ``docs/protocol.md``
for the rationale and a language-neutral description.

Every message is a fixed 24-byte header followed by ``length`` payload bytes::

    offset size  field
    0      2     magic      b"AT"
    2      1     version    1
    3      1     type       MessageType
    4      1     kind       RecordKind (RECORDS only, else 0)
    5      1     flags      0 (reserved; receivers reject unknown bits)
    6      2     reserved   0
    8      4     count      number of records in the payload (RECORDS), else 0
    12     4     length     payload length in bytes; header + length == message size
    16     8     seq        sender's message sequence number (per connection, starts at 1)

All integers are little-endian. A RECORDS payload is UTF-8 JSON lines: the first line is the OTLP
``resource`` object shared by the records, then ``count`` lines, one OTLP-shaped record each; every
line ends with ``\\n`` (JSON text never contains a raw newline, so lines are unambiguous).

This module is stdlib-only: it is imported by the client (into applications) and by the agent.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

MAGIC = b"AT"
VERSION = 1
HEADER = struct.Struct("<2sBBBBHIIQ")
HEADER_SIZE = HEADER.size  # 24
#: Largest message (header included) a receiver accepts. Fits the default Linux socket send buffer.
MAX_MESSAGE_SIZE = 64 * 1024
MAX_PAYLOAD_SIZE = MAX_MESSAGE_SIZE - HEADER_SIZE
#: Default path of the agent socket (``AUTOMAGIK_TELEMETRY_SOCKET`` overrides it).
DEFAULT_SOCKET_PATH = "/run/automagik-telemetry/agent.sock"


class MessageType(enum.IntEnum):
    """What a message is. Client-to-agent types are < 0x80, agent-to-client types are >= 0x80."""

    RECORDS = 0x01  # payload: resource line + `count` record lines
    CLIENT_STATS = 0x02  # payload: one JSON object of cumulative client counters
    STATS_REQUEST = 0x10  # empty payload; the agent answers with STATS
    ACK = 0x81  # every RECORDS message of this connection with seq <= header.seq is durable
    REJECT = 0x82  # the message header.seq was rejected; payload: the reason as ASCII
    STATS = 0x90  # payload: one JSON object of agent counters


#: The span line formats of a RECORDS payload (docs/protocol.md, "Compact span lines"): OTLP/JSON span
#: objects, which every agent reads, and compact positional arrays, which an agent that lists
#: ``compact-1`` in its STATS ``line_formats`` reads (marked by ``"lineFormat"`` in the resource line).
OTLP_SPANS = "otlp"
COMPACT_SPANS = "compact-1"
LINE_FORMATS = (OTLP_SPANS, COMPACT_SPANS)


class RecordKind(enum.IntEnum):
    SPAN = 1
    LOG = 2  # OTLP logRecord lines (accepted from agent 0.2 on; older agents answer unsupported_kind)
    METRIC = 3  # OTLP Metric lines, one data point each (likewise)


class RejectReason(enum.StrEnum):
    """Why the agent rejected a message. The same names label the agent's rejection counters."""

    TOO_SHORT = "too_short"  # fewer bytes than a header
    BAD_MAGIC = "bad_magic"
    BAD_VERSION = "bad_version"
    BAD_TYPE = "bad_type"
    BAD_FLAGS = "bad_flags"
    UNSUPPORTED_KIND = "unsupported_kind"
    LENGTH_MISMATCH = "length_mismatch"  # header.length disagrees with the bytes received (a half frame)
    OVERSIZED = "oversized"  # larger than MAX_MESSAGE_SIZE
    BAD_PAYLOAD = "bad_payload"  # line structure disagrees with header.count
    EMPTY = "empty"  # RECORDS with count == 0
    BAD_SEQ = "bad_seq"  # RECORDS with seq 0 (sequence numbers start at 1: an ACK of 0 would mean nothing)
    DISK_FULL = "disk_full"  # the WAL cannot take it now (disk policy: reject)
    TOO_MANY_CONNECTIONS = "too_many_connections"
    WAL_ERROR = "wal_error"  # an I/O error writing the WAL


class ProtocolError(ValueError):
    """A message that does not follow the protocol; ``reason`` says which rule it broke."""

    def __init__(self, reason: RejectReason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Header:
    type: int
    kind: int
    count: int
    length: int
    seq: int


_KNOWN_TYPES = frozenset(int(t) for t in MessageType)
_ACCEPTED_KINDS = frozenset(int(kind) for kind in RecordKind)


def encode(msg_type: MessageType, payload: bytes = b"", *, seq: int = 0, count: int = 0, kind: int = 0) -> bytes:
    """One complete message: header + payload."""
    if HEADER_SIZE + len(payload) > MAX_MESSAGE_SIZE:
        raise ProtocolError(RejectReason.OVERSIZED, f"{HEADER_SIZE + len(payload)} > {MAX_MESSAGE_SIZE}")
    return HEADER.pack(MAGIC, VERSION, int(msg_type), kind, 0, 0, count, len(payload), seq) + payload


def encode_records(
    resource_line: bytes, record_lines: list[bytes], *, seq: int, kind: RecordKind = RecordKind.SPAN
) -> bytes:
    """A RECORDS message. Every line must already end with ``b"\\n"``."""
    payload = resource_line + b"".join(record_lines)
    return encode(MessageType.RECORDS, payload, seq=seq, count=len(record_lines), kind=int(kind))


def decode_header(message: bytes | bytearray | memoryview) -> Header:
    """Validate a received message's header against its size; raise ProtocolError if it breaks a rule.

    Checks only what is O(1): the agent's hot path calls this for every message.
    """
    size = len(message)
    if size > MAX_MESSAGE_SIZE:
        raise ProtocolError(RejectReason.OVERSIZED, f"{size} bytes > {MAX_MESSAGE_SIZE}")
    if size < HEADER_SIZE:
        raise ProtocolError(RejectReason.TOO_SHORT, f"{size} bytes < {HEADER_SIZE}")
    magic, version, msg_type, kind, flags, _reserved, count, length, seq = HEADER.unpack_from(message)
    if magic != MAGIC:
        raise ProtocolError(RejectReason.BAD_MAGIC, repr(bytes(magic)))
    if version != VERSION:
        raise ProtocolError(RejectReason.BAD_VERSION, f"version {version}, this agent speaks {VERSION}")
    if msg_type not in _KNOWN_TYPES:
        raise ProtocolError(RejectReason.BAD_TYPE, f"type {msg_type:#x}")
    if flags:
        raise ProtocolError(RejectReason.BAD_FLAGS, f"flags {flags:#x}")
    if HEADER_SIZE + length != size:
        got = size - HEADER_SIZE
        raise ProtocolError(RejectReason.LENGTH_MISMATCH, f"header says {length} payload bytes, got {got}")
    if msg_type == MessageType.RECORDS:
        if kind not in _ACCEPTED_KINDS:
            raise ProtocolError(RejectReason.UNSUPPORTED_KIND, f"kind {kind}")
        if count == 0:
            raise ProtocolError(RejectReason.EMPTY, "RECORDS with count 0")
        if seq == 0:
            raise ProtocolError(RejectReason.BAD_SEQ, "RECORDS seq must start at 1")
    return Header(msg_type, kind, count, length, seq)


def check_records_payload(payload: bytes, count: int) -> None:
    """Check the line structure of a RECORDS payload in O(1) Python steps (no JSON parsing here).

    The resource line plus ``count`` record lines, newline-terminated. Whether each line is a valid
    record is decided later by the shipper, which dead-letters (and counts) a line it cannot use.
    """
    if not payload or payload[-1] != 0x0A:
        raise ProtocolError(RejectReason.BAD_PAYLOAD, "payload must end with a newline")
    lines = payload.count(b"\n")
    if lines != count + 1:
        raise ProtocolError(RejectReason.BAD_PAYLOAD, f"{lines} lines, header promises 1 resource + {count} records")


def split_records(payload: bytes) -> tuple[bytes, list[bytes]]:
    """Split a RECORDS payload into (resource line, record lines), newlines stripped."""
    lines = payload.split(b"\n")
    lines.pop()  # the empty string after the final newline
    return lines[0], lines[1:]


def _any_value(value: object) -> object:
    """A compact attribute value as its OTLP/JSON ``AnyValue``."""
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, int):
        return {"intValue": value}
    if isinstance(value, float):
        return {"doubleValue": value}
    if value is None:
        return {}
    return value  # already an AnyValue object


def _key_values(attributes: object) -> list[dict[str, object]]:
    if not isinstance(attributes, dict):
        return []
    return [{"key": key, "value": _any_value(value)} for key, value in attributes.items()]


def expand_compact_span(line: object) -> dict[str, object] | None:
    """A decoded compact span line (``[traceId, spanId, parentSpanId, name, kind, startTimeUnixNano,
    endTimeUnixNano, attributes, statusCode, statusMessage, events]``) in its OTLP/JSON spelling, for
    tools that show spans (``wal dump``); ``None`` if it is not such an array. No checks beyond that:
    the shipper's are authoritative."""
    if not isinstance(line, list) or len(line) < 11:
        return None
    trace_id, span_id, parent, name, kind, start, end, attributes, code, message, events = line[:11]
    span: dict[str, object] = {
        "traceId": trace_id,
        "spanId": span_id,
        "parentSpanId": parent,
        "name": name,
        "kind": kind,
        "startTimeUnixNano": start,
        "endTimeUnixNano": end,
        "attributes": _key_values(attributes),
        "status": {"code": code, "message": message},
        "events": [
            {"name": ev[0], "timeUnixNano": ev[1], "attributes": _key_values(ev[2])}
            for ev in (events if isinstance(events, list) else [])
            if isinstance(ev, list) and len(ev) >= 3
        ],
    }
    return span
