"""The sender thread: one batch in flight while the shipper thread freezes the next."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Sending(Generic[T]):
    """``fn()`` running in a daemon thread (a send retried forever must not hold up exit); :meth:`wait`
    returns its result or re-raises its exception in the caller's thread."""

    def __init__(self, fn: Callable[[], T]) -> None:
        self.done = threading.Event()
        self._outcome: tuple[T] | None = None  # (result,) once fn returned
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), name="shipper-send", daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], T]) -> None:
        try:
            self._outcome = (fn(),)
        except BaseException as exc:  # re-raised in the shipper thread by wait()
            self._error = exc
        finally:
            self.done.set()

    def wait(self) -> T:
        self.done.wait()
        if self._error is not None:
            raise self._error
        assert self._outcome is not None  # fn returned (no error) before done was set
        return self._outcome[0]
