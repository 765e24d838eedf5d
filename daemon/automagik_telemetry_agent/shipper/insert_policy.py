"""The fleet insert policy: how long a partial batch waits, adapted to how busy the server is.

Every synchronous INSERT makes a part; a fleet of N agents each inserting every ``batch_wait`` seconds
makes N / batch_wait parts per second at the shard, and ClickHouse slows down (``parts_to_delay_insert``)
and then refuses inserts (TOO_MANY_PARTS, 252) when merges fall behind. One agent cannot see the fleet,
but every agent can see the shard: :class:`InsertPolicy` reads the shard's inserts per second
(:func:`~..clickhouse.load.sample_load`, every ``sample_interval_s``, jittered) and steers its own
``wait_s``, the effective batch_wait, between ``batch_wait_s`` and ``batch_wait_max_s``:

* **busy** (the shard's rate above ``target_inserts_per_s``): ``wait *= sqrt(rate / target)`` (at most x2 a
  step). Every agent does the same from the same reading, so together they bring the shard's rate to the
  target in a few steps (the square root damps the overshoot of all agents reacting at once);
* **quiet** (below 70 % of the target): ``wait *= sqrt(rate / target)`` (at least x0.5 a step), back down to
  ``batch_wait_s``: a single agent on its own server keeps the latency of ``batch_wait``;
* **parts pressure** (the table's worst partition holds more than half of ``parts_to_delay_insert`` active
  parts): ``wait *= 2``;
* **a slow server** (the reading got no answer within two seconds: an overloaded server, whose figures
  cannot be had): ``wait *= 2``;
* **TOO_MANY_PARTS** (the server refused an insert with 252): ``wait = batch_wait_max_s``.

Readings come every ``sample_interval_s`` while the wait holds or shrinks; after a reading that raised
it (or gave no rate yet: the first one after a start) the next comes sooner, once two batches at the new
wait can have gone (``2 x wait``, at least a third of the interval): a fleet started at once, all at
``batch_wait``, stretches within seconds rather than minutes, before its parts reach the throw limit.

Between 70 % and 100 % of the target the wait stays (a dead band: no oscillation). With ``fixed`` the wait
is always ``batch_wait_s``. :meth:`InsertPolicy.start_delay` jitters the first insert after a restart over
``[0, wait)`` when the kept wait is a stretched one, so that a busy fleet restarted at once does not insert
in lockstep.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..clickhouse.load import LoadSample

__all__ = ["STATE_FILE", "Adjustment", "InsertPolicy", "PolicyMode", "PolicySettings", "load_wait", "save_wait"]

log = logging.getLogger(__name__)

STATE_FILE = "insert_policy.json"  # in the shipper's state directory: the wait in force, kept across restarts
QUIET_FRACTION = 0.7  # below this fraction of the target the wait shrinks
MAX_STEP = 2.0  # the most one reading multiplies or divides the wait by
PRESSURE_FRACTION = 0.5  # of parts_to_delay_insert: more active parts in one partition is pressure
RISING_FRACTION = 1 / 3  # of sample_interval_s: the soonest next reading while the wait is rising


class PolicyMode(enum.Enum):
    FLEET = "fleet"
    FIXED = "fixed"


class Adjustment(enum.Enum):
    """Why the wait last changed (a label of the policy's metrics)."""

    BUSY = "busy"
    QUIET = "quiet"
    PARTS_PRESSURE = "parts_pressure"
    SLOW_SERVER = "slow_server"
    TOO_MANY_PARTS = "too_many_parts"


@dataclass(frozen=True, slots=True)
class PolicySettings:
    mode: PolicyMode = PolicyMode.FLEET
    batch_wait_s: float = 1.0
    batch_wait_max_s: float = 30.0
    target_inserts_per_s: float = 10.0
    sample_interval_s: float = 10.0


class InsertPolicy:
    """The effective batch_wait of one shipper process (its three signals share it). Thread-safe."""

    def __init__(
        self,
        settings: PolicySettings,
        sampler: Callable[[], LoadSample | None] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        rand: random.Random | None = None,
        initial_wait_s: float | None = None,
        on_change: Callable[[float], None] | None = None,
    ) -> None:
        """``initial_wait_s``: the wait in force when this shipper last stopped (so that a fleet restarted at
        once does not start over at batch_wait and burst); ``on_change`` is told every new wait (to keep it)."""
        self._settings = settings
        self._sampler = sampler
        self._clock = clock
        self._rand = rand or random.Random()
        self._lock = threading.Lock()
        self._on_change = on_change
        self._wait = self._clamp(initial_wait_s) if initial_wait_s is not None else settings.batch_wait_s
        self._last: tuple[float, LoadSample] | None = None
        # The first reading soon after a start (the baseline), the next one an interval later: the first
        # rate is known after about one interval, not two.
        self._next_sample = clock() + self._rand.uniform(0.5, 2.0)
        self.adjustments: dict[Adjustment, int] = dict.fromkeys(Adjustment, 0)
        self.server_inserts_per_s: float | None = None  # the shard's rate at the last reading
        self.max_parts = 0

    # ------------------------------------------------------------------ reading
    @property
    def settings(self) -> PolicySettings:
        return self._settings

    @property
    def wait_s(self) -> float:
        """The batch_wait to use now."""
        if self._settings.mode is PolicyMode.FIXED:
            return self._settings.batch_wait_s
        return self._wait

    def start_delay(self) -> float:
        """How long after a start the first partial batch waits: uniform in [0, wait) when the fleet policy
        starts with a wait it had stretched (kept from before a restart: a busy fleet restarted at once must
        not insert in lockstep), else 0 (the first spans go at once, as under ``fixed``)."""
        if self._settings.mode is PolicyMode.FIXED or self.wait_s <= self._settings.batch_wait_s:
            return 0.0
        return self._rand.uniform(0, self.wait_s)

    def update(self, settings: PolicySettings) -> None:
        """New settings (a reload): the wait is clamped into the new bounds."""
        with self._lock:
            self._settings = settings
            self._wait = self._clamp(self._wait)

    # ------------------------------------------------------------------ observations
    def maybe_sample(self) -> None:
        """Take a reading if one is due (cheap to call often; one caller at a time does the query)."""
        if self._sampler is None or self._settings.mode is PolicyMode.FIXED or self._clock() < self._next_sample:
            return
        if not self._lock.acquire(blocking=False):
            return
        try:
            now = self._clock()
            if now < self._next_sample:
                return
            self._next_sample = now + self._jittered(self._settings.sample_interval_s)
            reading = self._sampler()
            if reading is not None:
                before = self._wait
                self._observe_locked(now, reading)
                if self._wait > before or self.server_inserts_per_s is None:
                    self._next_sample = now + self._jittered(self._rising_interval())
        finally:
            self._lock.release()

    def observe(self, now: float, reading: LoadSample) -> None:
        """Feed one reading taken at ``now`` (what :meth:`maybe_sample` does with its sampler's)."""
        with self._lock:
            self._observe_locked(now, reading)

    def too_many_parts(self) -> None:
        """The server refused an insert with TOO_MANY_PARTS: wait as long as allowed."""
        with self._lock:
            if self._settings.mode is PolicyMode.FLEET:
                self._set(self._settings.batch_wait_max_s, Adjustment.TOO_MANY_PARTS)

    # ------------------------------------------------------------------ the rules
    def _observe_locked(self, now: float, reading: LoadSample) -> None:
        if reading.slow:  # no figures, but an answer in itself: the shard is too busy
            self._set(self._wait * MAX_STEP, Adjustment.SLOW_SERVER)
            return
        last, self._last = self._last, (now, reading)
        self.max_parts = reading.max_parts
        rate = self._rate(last, now, reading)
        if rate is not None:
            self.server_inserts_per_s = rate
        if reading.max_parts > PRESSURE_FRACTION * reading.parts_to_delay:
            self._set(self._wait * MAX_STEP, Adjustment.PARTS_PRESSURE)
            return
        if rate is None:
            return
        target = self._settings.target_inserts_per_s
        if rate > target:
            self._set(self._wait * min(MAX_STEP, math.sqrt(rate / target)), Adjustment.BUSY)
        elif rate < QUIET_FRACTION * target and self._wait > self._settings.batch_wait_s:
            self._set(self._wait * max(1 / MAX_STEP, math.sqrt(max(rate, 1e-9) / target)), Adjustment.QUIET)

    @staticmethod
    def _rate(last: tuple[float, LoadSample] | None, now: float, reading: LoadSample) -> float | None:
        """The shard's inserts per second since the previous reading; None for the first reading of these
        servers, or when one restarted (its counter began again)."""
        if last is None or last[1].endpoints != reading.endpoints or now <= last[0]:
            return None
        delta = reading.inserts - last[1].inserts
        return delta / (now - last[0]) if delta >= 0 else None

    def _set(self, wait: float, why: Adjustment) -> None:
        new = self._clamp(wait)
        if new == self._wait:
            return
        level = logging.DEBUG if why in (Adjustment.BUSY, Adjustment.QUIET) else logging.INFO
        log.log(
            level,
            "insert policy: batch_wait %.2f s -> %.2f s (%s; shard at %s inserts/s, target %g; %d active parts)",
            self._wait,
            new,
            why.value,
            "?" if self.server_inserts_per_s is None else f"{self.server_inserts_per_s:.1f}",
            self._settings.target_inserts_per_s,
            self.max_parts,
        )
        self._wait = new
        self.adjustments[why] += 1
        if self._on_change is not None:
            self._on_change(new)

    def _clamp(self, wait: float) -> float:
        s = self._settings
        return min(max(wait, s.batch_wait_s), max(s.batch_wait_s, s.batch_wait_max_s))

    def _rising_interval(self) -> float:
        """Seconds to the next reading after one that raised the wait: two batches at the new wait."""
        interval = self._settings.sample_interval_s
        return min(interval, max(interval * RISING_FRACTION, 2 * self._wait))

    def _jittered(self, interval: float) -> float:
        return interval * self._rand.uniform(0.8, 1.2)


def load_wait(path: str) -> float | None:
    """The wait :func:`save_wait` kept in ``path``; None if there is none (or it is unreadable: start afresh)."""
    try:
        with open(path, encoding="utf-8") as f:
            wait = json.load(f)["batch_wait_s"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return float(wait) if isinstance(wait, int | float) and math.isfinite(wait) and wait >= 0 else None


def save_wait(path: str, wait: float) -> None:
    """Keep ``wait`` in ``path`` (atomically; a failure is logged, never raised: it only costs a slower start)."""
    tmp = f"{path}.tmp"
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"batch_wait_s": wait}, f)
        os.replace(tmp, path)
    except OSError as exc:
        log.debug("cannot keep the insert policy's wait in %s: %s", path, exc)
