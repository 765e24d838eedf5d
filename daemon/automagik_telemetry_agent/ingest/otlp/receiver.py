"""One export request, from its decompressed body to its answer: decode, skip what is already durable,
hand the rest to ingest, wait until all of it is durable, answer.

**A 200 means durable**: it is sent only when ingest has acknowledged every RECORDS message of the
request, i.e. every record is in the WAL under the agent's fsync mode (the socket protocol's ACK). Any
other outcome is an error the exporter retries (503 with ``Retry-After``), and the retry writes only the
parts that did not become durable (:mod:`.dedup`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import orjson

from .dedup import DurableParts, request_id
from .export import Export, Refusal, messages
from .forward import IngestLink, IngestRejected, IngestUnavailable
from .http import Reply, Request
from .json_body import decode_json
from .proto import BodyError, decode_protobuf
from .responses import Encoding, export_response, status_body
from .signals import OtlpSignal

log = logging.getLogger(__name__)

DISK_RETRY_AFTER_S = 5
INGEST_RETRY_AFTER_S = 1


@dataclass
class ReceiverStats:
    requests: Counter[str] = field(default_factory=Counter)  # by signal
    decode_errors: Counter[str] = field(default_factory=Counter)  # by encoding
    items_accepted: Counter[str] = field(default_factory=Counter)  # by signal: durable in the WAL
    items_refused: Counter[tuple[str, str]] = field(default_factory=Counter)  # (signal, reason)
    items_unavailable: Counter[str] = field(default_factory=Counter)  # by signal: answered 503, to be retried
    requests_deduplicated: int = 0  # retries whose every part was already durable
    parts_skipped: int = 0  # messages not written again because they were durable
    records_sent: int = 0


class Receiver:
    def __init__(self, link: IngestLink, durable: DurableParts, ack_timeout_s: float = 8.0) -> None:
        self.link = link
        self.durable = durable
        self.ack_timeout_s = ack_timeout_s
        self.stats = ReceiverStats()
        self._in_flight: dict[str, asyncio.Future[Reply]] = {}
        self.last_progress = time.monotonic()

    async def __call__(self, request: Request) -> Reply:
        signal = request.signal
        self.stats.requests[signal.label] += 1
        try:
            export = _decode(request)
        except BodyError as exc:
            self.stats.decode_errors[request.encoding.name.lower()] += 1
            body, ctype = status_body(request.encoding, 400, str(exc))
            return Reply(400, body, ctype)
        for reason, n in export.refused.items():
            self.stats.items_refused[(signal.label, reason.value)] += n
        rid = request_id(signal.value, request.body)
        earlier = self._in_flight.get(rid)
        if earlier is not None:  # the same body again while the first is still on its way: one write
            return await asyncio.shield(earlier)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._in_flight[rid] = future
        try:
            reply = await self._write(request, export, rid)
            future.set_result(reply)
            return reply
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: a waiter-less future must not warn
            raise
        finally:
            del self._in_flight[rid]

    async def _write(self, request: Request, export: Export, rid: str) -> Reply:
        signal = request.signal
        parts = messages(export, rid)
        try:
            await self.link.connect()  # first: a (re)connect reloads what is durable from the WAL
        except IngestUnavailable as exc:
            return self._unavailable(request, export, str(exc), INGEST_RETRY_AFTER_S)
        done = self.durable.get(rid)
        todo = [m for m in parts if m.part not in done]
        if parts and not todo:
            self.stats.requests_deduplicated += 1
        self.stats.parts_skipped += len(parts) - len(todo)
        try:
            futures = await self.link.send([(m.payload, m.count) for m in todo], signal.kind)
            for m, f in zip(todo, futures, strict=False):  # fewer futures: sending broke off (they failed)
                f.add_done_callback(functools.partial(self._durable, rid, m.part))
            self.stats.records_sent += len(todo)
            if futures:
                # asyncio.wait, not wait_for: a late ACK must still reach _durable (the futures stay alive).
                _, pending = await asyncio.wait(futures, timeout=self.ack_timeout_s)
                if pending:
                    raise TimeoutError
                for f in futures:
                    if f.exception() is not None:
                        raise f.exception()  # type: ignore[misc]
        except IngestRejected as exc:
            return self._unavailable(request, export, f"the WAL refused the data ({exc.reason})", DISK_RETRY_AFTER_S)
        except IngestUnavailable as exc:
            return self._unavailable(request, export, str(exc), INGEST_RETRY_AFTER_S)
        except TimeoutError:
            return self._unavailable(
                request, export, f"not durable within {self.ack_timeout_s:g} s (fsync is lagging)", DISK_RETRY_AFTER_S
            )
        if todo or not parts:  # a retry answered from the dedup index wrote nothing: counted there, not here
            self.stats.items_accepted[signal.label] += export.accepted
        self.last_progress = time.monotonic()
        body = export_response(signal, request.encoding, export.refused_items, _refusal_message(export))
        return Reply(200, body, request.encoding.value)

    def _durable(self, rid: str, part: int, future: asyncio.Future[None]) -> None:
        if not future.cancelled() and future.exception() is None:
            self.durable.add(rid, part)

    def _unavailable(self, request: Request, export: Export, why: str, retry_after_s: int) -> Reply:
        self.stats.items_unavailable[request.signal.label] += export.accepted
        body, ctype = status_body(request.encoding, 503, f"{why}; retry later")
        return Reply(503, body, ctype, retry_after_s)


def _decode(request: Request) -> Export:
    try:
        if request.encoding is Encoding.PROTOBUF:
            return decode_protobuf(request.signal, request.body)
        return decode_json(request.signal, request.body)
    except orjson.JSONEncodeError as exc:  # values nested deeper than a line can be written (~250 levels)
        raise BodyError(f"the body nests values too deeply: {exc}") from None


def _refusal_message(export: Export) -> str:
    if not export.refused_items:
        return ""
    counts = ", ".join(f"{n} {reason.value}" for reason, n in sorted(export.refused.items()))
    return f"{export.refused_items} refused ({counts}): {export.problem}"


__all__ = ["OtlpSignal", "Receiver", "ReceiverStats", "Refusal"]
