"""A decoded OTLP export request, before it becomes RECORDS messages: per resource, its record lines.

Both decoders (:mod:`.proto` for ``application/x-protobuf``, :mod:`.json_body` for
``application/json``) build an :class:`Export`. The receiver refuses only what can never become a row
(:class:`Refusal`) and says so in the response's ``partial_success``; everything else travels as an OTLP/JSON
line, and the shipper applies the same rules to it as to the Python client's lines (dead-lettering what
it cannot use, docs/protocol.md).
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from automagik_telemetry import protocol

from .signals import OtlpSignal

#: What one record line may take at most: a message holds the resource line and at least one record.
MAX_LINE_BYTES = protocol.MAX_PAYLOAD_SIZE // 2


class Refusal(enum.StrEnum):
    """Why an item of a request was refused (the ``reason`` label of ``otlp_items_refused_total``)."""

    NOT_AN_OBJECT = "not_an_object"  # JSON: an item, scope or resource entry that is not an object
    UNSUPPORTED_METRIC = "unsupported_metric_type"  # exponential histograms and summaries: no columns for them
    TOO_LARGE = "item_too_large"  # one item's line beyond MAX_LINE_BYTES


#: What a resource line may take at most (the dedup marker is added to it in :func:`messages`).
MAX_RESOURCE_BYTES = MAX_LINE_BYTES - 128


@dataclass
class Group:
    """The items of one resource: its resource object and one OTLP/JSON line per item."""

    resource: dict[str, Any]
    lines: list[bytes] = field(default_factory=list)
    resource_bytes: int = 0  # of the resource serialized: beyond MAX_RESOURCE_BYTES its items are refused


@dataclass
class Export:
    signal: OtlpSignal
    groups: list[Group] = field(default_factory=list)
    accepted: int = 0  # items (spans, log records, data points) that travel on
    refused: Counter[Refusal] = field(default_factory=Counter)
    problem: str = ""  # the first refusal, in words, for partial_success.error_message

    @property
    def refused_items(self) -> int:
        return sum(self.refused.values())

    def refuse(self, reason: Refusal, items: int, detail: str) -> None:
        self.refused[reason] += items
        if not self.problem:
            self.problem = detail

    def group(self, resource: dict[str, Any]) -> Group:
        """A new group for the items of ``resource``."""
        group = Group(resource, resource_bytes=len(orjson.dumps(resource)))
        self.groups.append(group)
        return group

    def add(self, group: Group, item: dict[str, Any], items: int = 1) -> None:
        """One item's line into ``group`` (``items``: what it counts for: a metric counts its data points)."""
        if group.resource_bytes > MAX_RESOURCE_BYTES:
            self.refuse(
                Refusal.TOO_LARGE,
                items,
                f"a resource of {group.resource_bytes} bytes (the limit is {MAX_RESOURCE_BYTES})",
            )
            return
        line = orjson.dumps(item) + b"\n"
        if len(line) > MAX_LINE_BYTES:
            self.refuse(Refusal.TOO_LARGE, items, f"an item of {len(line)} bytes (the limit is {MAX_LINE_BYTES})")
            return
        group.lines.append(line)
        self.accepted += items


@dataclass(frozen=True, slots=True)
class Message:
    """One RECORDS payload: a resource line and up to a message's worth of its record lines."""

    part: int  # its index among the request's messages (the dedup key's second half)
    payload: bytes
    count: int


def messages(export: Export, request_id: str) -> list[Message]:
    """The RECORDS payloads of ``export``, each at most :data:`protocol.MAX_PAYLOAD_SIZE` bytes.

    Every resource line carries ``"otlpRequest": "<request_id>:<part>"`` (the shipper reads only
    ``attributes``): what lets a restarted receiver recognize the parts of a retried request that are
    already in the WAL (:mod:`.dedup`). The split depends only on the request's content, so a retry
    of the same body yields the same parts.
    """
    out: list[Message] = []
    for group in export.groups:
        lines = group.lines
        i = 0
        while i < len(lines):
            head = orjson.dumps({**group.resource, "otlpRequest": f"{request_id}:{len(out)}"}) + b"\n"
            size, j = len(head), i
            while j < len(lines) and size + len(lines[j]) <= protocol.MAX_PAYLOAD_SIZE:
                size += len(lines[j])
                j += 1
            assert j > i, "a resource line and a record line always fit a message (MAX_*_BYTES)"
            out.append(Message(len(out), head + b"".join(lines[i:j]), j - i))
            i = j
    return out
