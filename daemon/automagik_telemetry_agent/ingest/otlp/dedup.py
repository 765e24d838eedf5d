"""Which parts of recent export requests are already durable: a retried request is not written twice.

An exporter whose request was durable but not answered (the receiver was killed, ingest restarted, the
answer was lost) sends the same body again. Every RECORDS message the receiver writes carries
``"otlpRequest": "<request id>:<part>"`` in its resource line (:func:`~.export.messages`), the request
id being a digest of the signal and the decompressed body. This index maps request ids to their durable
parts; it is rebuilt from the newest WAL segments whenever the receiver (re)connects to ingest, so it
survives kill -9 of the receiver and of ingest alike. A retry finds its parts and writes only the
missing ones (usually none): exactly once into the WAL, hence into ClickHouse.

Bounded: the newest :data:`MAX_REQUESTS` request ids, forgotten after :data:`MAX_AGE_S` (exporters give
up long before: 10 s export timeouts, retries with backoff for a minute or so).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict

from ...wal.inspect import dump

MAX_REQUESTS = 100_000
MAX_AGE_S = 15 * 60.0
SCAN_SEGMENTS = 2  # the newest WAL segments read at (re)connect: wal.segment_size each (64 MiB by default)

_MARKER = re.compile(rb'"otlpRequest":"([0-9a-f]{32}):([0-9]+)"')


def request_id(path: str, body: bytes) -> str:
    """The identity of an export request: its signal and its decompressed body."""
    return hashlib.blake2b(body, digest_size=16, person=path.encode()[:16]).hexdigest()


class DurableParts:
    """request id -> the parts of it known durable in the WAL."""

    def __init__(self, max_requests: int = MAX_REQUESTS, max_age_s: float = MAX_AGE_S) -> None:
        self._parts: OrderedDict[str, tuple[float, set[int]]] = OrderedDict()
        self.max_requests, self.max_age_s = max_requests, max_age_s

    def __len__(self) -> int:
        return len(self._parts)

    def get(self, rid: str) -> frozenset[int]:
        entry = self._parts.get(rid)
        return frozenset(entry[1]) if entry is not None else frozenset()

    def add(self, rid: str, part: int, now: float | None = None) -> None:
        entry = self._parts.get(rid)
        if entry is None:
            self._parts[rid] = (time.monotonic() if now is None else now, {part})
            self._evict(time.monotonic() if now is None else now)
        else:
            entry[1].add(part)

    def _evict(self, now: float) -> None:
        parts = self._parts
        while len(parts) > self.max_requests:
            parts.popitem(last=False)
        while parts:
            oldest = next(iter(parts.values()))
            if now - oldest[0] <= self.max_age_s:
                break
            parts.popitem(last=False)

    def load_wal(self, wal_dir: str, segments: int = SCAN_SEGMENTS) -> int:
        """Add the parts found in the newest ``segments`` WAL segments; how many records carried one."""
        found = 0
        for _seq, _kind, payload in dump(wal_dir, last_segments=segments):
            end = payload.find(b"\n")
            match = _MARKER.search(payload, 0, end if end >= 0 else len(payload))
            if match is not None:
                self.add(match.group(1).decode(), int(match.group(2)))
                found += 1
        return found
