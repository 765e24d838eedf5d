"""``dead-letter replay``: re-insert dead-lettered rows after the cause was fixed (the command is
``cli.dead_letter``; the file and its format belong to :mod:`.dead_letter`).

* ``rejected`` entries carry the row exactly as it was sent: it is sent again;
* ``transform`` entries carry only the span line: the transform is re-run (with the current code)
  and usually fails again, which is reported; a span that transforms now is inserted only if its
  resource line is still in the WAL (the dead-letter entry does not keep it);
* ``unsupported`` entries (record kinds the shipper does not ship) stay.

Crash-safety: rows are inserted first (bad ones isolated by the shipper's own bisection,
:mod:`.bisect`), then the file is rewritten without the inserted entries (temp file, fsync, rename).
A crash in between leaves the entries in the file, so a second replay may insert those rows twice (at
least once, never lost). The file is only read and rewritten under the dead-letter directory's lock,
which the shipper takes for every append: entries the shipper appends during a replay are kept. The
network part runs without that lock, so the shipper never waits on ClickHouse for a replay; a second
``replay`` at the same time is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..clickhouse.rows import Profile, TransformError, parse_resource
from ..clickhouse.sink import InsertResult
from ..wal.inspect import dump
from ..wal.signals import Signal
from .bisect import insert_or_bisect
from .signals import SHIPMENTS, Shipment

REPLAY_LOCK_FILE = ".replay.lock"
ERROR_WIDTH = 80


def parse_entry(line: bytes) -> dict[str, Any] | None:
    """One dead-letter line as a dict, or None if it is not a JSON object."""
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


@dataclass
class Candidate:
    index: int  # line number in the snapshot
    body: bytes  # one JSONEachRow line, newline-terminated


@dataclass
class ReplayPlan:
    candidates: list[Candidate] = field(default_factory=list)
    kept: dict[int, str] = field(default_factory=dict)  # index -> why it stays (a short, groupable reason)
    examples: dict[str, str] = field(default_factory=dict)  # reason -> one full message behind it

    def merge(self, other: ReplayPlan) -> None:
        """Add another signal's plan to this one."""
        self.candidates += other.candidates
        self.kept.update(other.kept)
        for why, example in other.examples.items():
            self.examples.setdefault(why, example)

    def keep(self, index: int, why: str, example: str = "") -> None:
        self.kept[index] = why
        if example:
            self.examples.setdefault(why, example)

    def report(self) -> list[str]:
        """One line per reason: how many entries stay for it, and one example of the server's words."""
        lines = []
        for why, n in Counter(self.kept.values()).most_common():
            example = self.examples.get(why, "")
            if len(example) > 2 * ERROR_WIDTH:
                example = example[: 2 * ERROR_WIDTH - 3] + "..."
            lines.append(f"  {n} kept: {why}" + (f", e.g. {example}" if example else ""))
        return lines


@contextlib.contextmanager
def replay_lock(directory: str) -> Iterator[bool]:
    """One replay at a time per dead-letter directory; yields False if another one holds it."""
    try:
        fd = os.open(os.path.join(directory, REPLAY_LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except FileNotFoundError:
        yield True  # no directory: nothing to replay
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _wal_resources(wal_dir: str, seqs: set[int]) -> dict[int, bytes]:
    """The resource line of each WAL record in ``seqs`` still on disk (one pass over the WAL)."""
    found: dict[int, bytes] = {}
    if not seqs or not os.path.isdir(wal_dir):
        return found
    with contextlib.suppress(OSError):
        for seq, _kind, payload in dump(wal_dir, start_after=min(seqs) - 1):
            if seq in seqs:
                found[seq] = payload.split(b"\n", 1)[0]
            if seq >= max(seqs):
                break
    return found


def signal_of(entry: dict[str, Any] | None) -> str:
    """The signal an entry belongs to (entries written before there were signals are spans)."""
    signal = entry.get("signal") if entry else None
    return signal if isinstance(signal, str) else "traces"


def plan_replay(
    entries: list[dict[str, Any] | None],
    profile: Profile,
    wal_dir: str,
    shipment: Shipment = SHIPMENTS[Signal.TRACES],
) -> ReplayPlan:
    """Which entries of ``shipment``'s signal to send again (and their row bytes), and why the others of
    it stay; entries of other signals are left to their own plan (unreadable lines go to the spans')."""
    plan = ReplayPlan()
    mine = shipment.signal.value
    transform_seqs = {
        e["wal_seq"]
        for e in entries
        if e and signal_of(e) == mine and e.get("reason") == "transform" and isinstance(e.get("wal_seq"), int)
    }
    resources = _wal_resources(wal_dir, transform_seqs)
    for index, e in enumerate(entries):
        reason = e.get("reason") if e else None
        if (e is None and shipment.signal is not Signal.TRACES) or (e is not None and signal_of(e) != mine):
            continue
        if e is None:
            plan.keep(index, "unreadable line")
        elif reason == "rejected" and isinstance(e.get("row"), dict):
            plan.candidates.append(Candidate(index, orjson.dumps(e["row"], option=orjson.OPT_APPEND_NEWLINE)))
        elif reason == "rejected" and isinstance(e.get("row_raw"), str):
            plan.candidates.append(Candidate(index, e["row_raw"].encode().rstrip(b"\n") + b"\n"))
        elif reason == "transform" and isinstance(e.get("raw"), str):
            if "raw_length" in e:
                plan.keep(index, "line was truncated when dead-lettered")
                continue
            resource_line = resources.get(e.get("wal_seq", -1))
            try:
                resource = parse_resource(resource_line or b'{"attributes":[]}')
                rows = shipment.transform(e["raw"].encode(), resource, profile)
            except TransformError as exc:
                plan.keep(index, f"transform still fails: {exc.reason}")
                continue
            if resource_line is None:
                plan.keep(index, "transforms now, but its resource line is no longer in the WAL")
                continue
            body = b"".join(
                orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE) for row in (rows if type(rows) is list else [rows])
            )
            plan.candidates.append(Candidate(index, body))
        elif reason == "unsupported":
            plan.keep(index, "record kind not shipped")
        else:
            plan.keep(index, f"nothing to replay (reason {reason!r})")
    return plan


def insert_candidates(
    insert: Callable[[bytes, str], InsertResult], candidates: list[Candidate], plan: ReplayPlan
) -> tuple[list[int], InsertResult | None]:
    """Insert ``candidates``: (indexes inserted, the failed result that stopped it or None).

    A group ClickHouse refuses as bad data is bisected until the refused rows are alone; each is kept in
    ``plan`` with the server's message. Any other failure (down, auth, missing table) stops at once: what
    was inserted so far is returned with it. Each body carries a deduplication token derived from its
    bytes, so a replay repeated after a crash is deduplicated where the server can.
    """

    def send(lo: int, hi: int, _path: str) -> InsertResult:
        body = b"".join(c.body for c in candidates[lo:hi])
        return insert(body, "replay:" + hashlib.sha256(body).hexdigest()[:32])

    found = insert_or_bisect(len(candidates), send)
    for index, why in found.refused:
        plan.keep(candidates[index].index, f"ClickHouse still refuses it (code {why.code})", why.message)
    inserted = [c.index for lo, hi in found.stored for c in candidates[lo:hi]]
    return inserted, found.stopped
