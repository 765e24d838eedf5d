"""A fixed-bucket latency histogram in plain Python, for layers that must not import prometheus-client.

The WAL (fsync latency) and the shipper (INSERT latency) record durations here; the child's reporter
sends :meth:`LatencyHistogram.to_dict` to the supervisor, which merges and exposes it (metrics.py).
A leaf module: stdlib only and no project imports, so the lowest layer can use it.

One thread observes, any thread may read: ``observe`` is a couple of list updates under the GIL, and a
concurrent ``to_dict`` may see one observation in ``counts`` but not yet in ``sum`` (harmless for a
latency distribution; the next report is consistent again).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

#: fdatasync on SSDs takes 0.1-10 ms, on spinning disks or busy/network storage up to seconds.
FSYNC_BOUNDS_S: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
#: One HTTP INSERT round trip: milliseconds on a LAN, up to the read timeout (60 s) when ClickHouse struggles.
INSERT_BOUNDS_S: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class LatencyHistogram:
    """Counts of observations per bucket (value <= bound, as Prometheus' ``le``), plus their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        if not bounds or any(b <= a for a, b in pairwise(bounds)):
            raise ValueError("histogram bounds must be a non-empty ascending sequence")
        self.bounds: tuple[float, ...] = tuple(float(b) for b in bounds)
        self.counts: list[int] = [0] * (len(self.bounds) + 1)  # the last bucket is +Inf
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def to_dict(self) -> dict[str, Any]:
        """The histogram as the metrics dict carries it: per-bucket (not cumulative) counts."""
        return {"bounds": list(self.bounds), "counts": list(self.counts), "sum": self.sum}
