"""How fast the shipper may go: retry delays (capped exponential backoff, full jitter) and the catch-up
rate limit (a token bucket of rows per second)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable


def backoff_delay(attempt: int, base: float, cap: float, rand: random.Random | None = None) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    ceiling = min(cap, base * (2 ** min(attempt, 62)))
    return (rand or random).uniform(0, ceiling)


class TokenBucket:
    """Rows per second with a one-second burst; ``take`` returns how long to wait first."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.clock = clock
        self.tokens = rate
        self.stamp = clock()

    def take(self, n: int) -> float:
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= n
        return -self.tokens / self.rate if self.tokens < 0 else 0.0
