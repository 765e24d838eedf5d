"""The in-flight record: which WAL range the shipper is sending, kept across its restarts.

``<state>/shipper/inflight.json`` holds ``{"first": seq, "last": seq, "token": "...", "bisecting": bool}``
of the batch being sent, written (crash-atomically) before its first send. A restarted shipper reads
it and collects exactly that range again, so it rebuilds the very same batch: same rows, same dedup
token. ``bisecting`` says the batch had gone into bisection, so parts of it may be stored: a restart
never skips such a batch as a whole.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import orjson

from ..paths import INFLIGHT_FILE
from ..wal.durable import write_atomic
from .batch import FrozenBatch

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Resume:
    """The batch in flight when the previous shipper stopped, still uncommitted."""

    last_seq: int
    bisecting: bool


class InflightRecord:
    def __init__(self, state_dir: str, file_name: str = INFLIGHT_FILE) -> None:
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, file_name)

    def write(self, batch: FrozenBatch, bisecting: bool = False) -> None:
        """Record ``batch`` as in flight; a failure is logged, not raised (only dedup across restarts
        depends on it)."""
        try:
            os.makedirs(self.state_dir, mode=0o750, exist_ok=True)
            write_atomic(
                self.path,
                orjson.dumps(
                    {"first": batch.first_seq, "last": batch.last_seq, "token": batch.token, "bisecting": bisecting}
                ),
            )
        except OSError as exc:
            log.warning("cannot record the in-flight batch in %s: %s", self.path, exc.strerror)

    def pending(self, committed_seq: int) -> Resume | None:
        """The batch recorded in flight, if the cursor (``committed_seq``) has not passed it yet."""
        try:
            with open(self.path, "rb") as f:
                obj = orjson.loads(f.read())
            first, last, bisecting = int(obj["first"]), int(obj["last"]), bool(obj.get("bisecting"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            log.warning("ignoring unreadable %s", self.path)
            return None
        if first <= committed_seq or last < first:
            return None
        log.info("resending the batch %d-%d that was in flight when the shipper last stopped", first, last)
        return Resume(last, bisecting)
