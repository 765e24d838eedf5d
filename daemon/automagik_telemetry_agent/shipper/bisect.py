"""Finding the rows ClickHouse refuses: one bisection, used by the shipper and by ``dead-letter replay``.

A body the server refuses as bad data (a parse or type error) is split in halves, and each half is
sent on its own, until every refused row stands alone; the other rows are stored. Who sends a part,
with which dedup token and how it retries transient failures is the caller's: it passes
``send(lo, hi, path) -> InsertResult | None`` for rows ``lo..hi-1`` (``path`` is the part's place in
the bisection, ``"0"``/``"1"`` per level, for deriving a stable token; None means "stop, abandoned").

An answer that is neither OK nor bad data (server down, auth, missing table) stops the bisection: the
shipper's sender never returns one (it retries those itself), ``dead-letter replay`` reports it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..clickhouse.errors import ErrorClass
from ..clickhouse.sink import InsertResult

#: Sends rows ``lo..hi-1`` as one INSERT; None when the caller gave up (a stop past its deadline).
SendPart = Callable[[int, int, str], InsertResult | None]


@dataclass
class Bisection:
    """What a bisection found: the rows refused on their own (index, the server's answer), the row ranges
    stored, and why it ended early (``stopped``: a failure that is not bad data; ``abandoned``)."""

    refused: list[tuple[int, InsertResult]] = field(default_factory=list)
    stored: list[tuple[int, int]] = field(default_factory=list)
    stopped: InsertResult | None = None
    abandoned: bool = False

    @property
    def complete(self) -> bool:
        return self.stopped is None and not self.abandoned


def bisect(rows: int, send: SendPart, failed: InsertResult) -> Bisection:
    """Isolate the refused rows of ``rows`` rows that were just refused as a whole with ``failed``."""
    found = Bisection()
    _split(0, rows, "", failed, send, found)
    return found


def insert_or_bisect(rows: int, send: SendPart) -> Bisection:
    """Send all ``rows`` at once; if the server refuses them as bad data, :func:`bisect` them."""
    found = Bisection()
    if rows:
        _part(0, rows, "", send, found)
    return found


def _part(lo: int, hi: int, path: str, send: SendPart, found: Bisection) -> None:
    result = send(lo, hi, path)
    if result is None:
        found.abandoned = True
    elif result.ok:
        found.stored.append((lo, hi))
    elif result.error_class is ErrorClass.BAD_DATA:
        _split(lo, hi, path, result, send, found)
    else:
        found.stopped = result


def _split(lo: int, hi: int, path: str, failed: InsertResult, send: SendPart, found: Bisection) -> None:
    if hi - lo == 1:
        found.refused.append((lo, failed))
        return
    mid = (lo + hi) // 2
    for a, b, tag in ((lo, mid, "0"), (mid, hi, "1")):
        if not found.complete:
            return
        _part(a, b, path + tag, send, found)
