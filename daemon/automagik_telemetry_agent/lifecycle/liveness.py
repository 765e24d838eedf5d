"""How long ago a child's main loop last made progress: the ``loop_age_s`` of its reports.

The supervisor kills a child whose loop age exceeds ``agent.heartbeat_timeout``; a wait the child
declares (an HTTP request within its timeouts, a retry backoff) counts as progress until its bound.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar, cast

T = TypeVar("T")


class Liveness:
    """How long ago a child's main loop last made progress: the ``loop_age_s`` of its reports.

    Threads call :meth:`beat` when they make progress, and wrap a wait they know the bound of in
    :meth:`waiting`: while a declared wait runs, the process counts as alive until the wait's bound,
    so an HTTP request within its timeouts or a 60 s retry backoff is not taken for a hang, and a
    request that outlives its timeouts is. The supervisor kills a child whose age exceeds
    ``agent.heartbeat_timeout``.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._last = clock()
        self._waits: dict[object, float] = {}

    def beat(self) -> None:
        now = self._clock()
        with self._lock:
            self._last = max(self._last, now)

    @contextlib.contextmanager
    def waiting(self, seconds: float | None) -> Iterator[None]:
        """Declare a wait of at most ``seconds`` (None: unbounded, which declares nothing)."""
        token = object()
        if seconds is not None:
            with self._lock:
                self._waits[token] = self._clock() + seconds
        try:
            yield
        finally:
            now = self._clock()
            with self._lock:
                self._waits.pop(token, None)
                self._last = max(self._last, now)

    def age(self) -> float:
        now = self._clock()
        with self._lock:
            alive_until = max(self._last, *self._waits.values()) if self._waits else self._last
        return max(0.0, now - alive_until)

    def event(self) -> DeclaredEvent:
        """A threading.Event whose timed waits are declared to this liveness."""
        return DeclaredEvent(self)

    def watch(self, target: T, bounds: Mapping[str, float]) -> T:
        """``target`` with the methods named in ``bounds`` declared as waits of that many seconds (a proxy
        that passes everything else through, so it stands in for ``target``)."""
        return cast(T, WatchedCalls(target, self, bounds))


class DeclaredEvent(threading.Event):
    """``wait(timeout)`` declares the timeout to a :class:`Liveness` (a backoff is a known wait)."""

    def __init__(self, liveness: Liveness) -> None:
        super().__init__()
        self._liveness = liveness

    def wait(self, timeout: float | None = None) -> bool:
        with self._liveness.waiting(timeout):
            return super().wait(timeout)


class WatchedCalls:
    """A proxy: calls of the methods named in ``bounds`` are declared waits; everything else passes through.

    Used on the shipper's sink: an INSERT may legitimately take up to connect + read timeout.
    """

    def __init__(self, target: Any, liveness: Liveness, bounds: Mapping[str, float]) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_liveness", liveness)
        object.__setattr__(self, "_bounds", dict(bounds))

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        bound = self._bounds.get(name)
        if bound is None or not callable(value):
            return value
        liveness = self._liveness

        def call(*args: Any, **kwargs: Any) -> Any:
            with liveness.waiting(bound):
                return value(*args, **kwargs)

        return call

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._target, name, value)
