"""The shipper process's three shippers, one per signal (spans, log records, metric data points).

Each :class:`~.loop.Shipper` reads its own signal's records from the WAL, with its own cursor,
in-flight record and consumer lock, and writes its own table through a sink of the same carrier
(:meth:`~..clickhouse.sink.Sink.for_table`). They run in threads of one process and share nothing
else but the insert policy (:mod:`.insert_policy`: one batch_wait for the servers they all write to), so
a table that refuses rows (missing, wrong shape, unreachable) holds up only its signal: the others keep
shipping while its records wait in the WAL.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

from ..clickhouse.sink import Sink
from ..lifecycle.liveness import Liveness
from ..wal.signals import Signal
from ..wal.watch import WalWatch
from .insert_policy import InsertPolicy
from .loop import Shipper
from .options import ShipperOptions
from .signals import SHIPMENTS

__all__ = ["ShipperGroup"]

log = logging.getLogger(__name__)


class ShipperGroup:
    """One :class:`Shipper` per signal; ``sinks`` maps each signal to its table's sink."""

    def __init__(
        self,
        wal_dir: str,
        sinks: Mapping[Signal, Sink],
        options: ShipperOptions,
        policy: InsertPolicy | None = None,
    ) -> None:
        self.policy = policy  # shared: the three signals' inserts reach the same servers
        self.wal_dir = wal_dir
        self.watch: WalWatch | None = None  # shared too: one inotify instance per process, opened by run()
        self.shippers: dict[Signal, Shipper] = {
            signal: Shipper(wal_dir, sink, options, SHIPMENTS[signal], policy) for signal, sink in sinks.items()
        }
        self._errors: list[BaseException] = []

    def declare_waits(self, liveness: Liveness) -> None:
        for shipper in self.shippers.values():
            shipper.declare_waits(liveness)

    def request_stop(self, deadline_s: float | None = None) -> None:
        for shipper in self.shippers.values():
            shipper.request_stop(deadline_s)

    def apply_options(self, **changes: Any) -> None:
        for shipper in self.shippers.values():
            shipper.apply_options(**changes)

    @property
    def ready(self) -> bool:
        """Every shipper holds its WAL reader (it took its consumer lock and is reading)."""
        return all(shipper.reader is not None for shipper in self.shippers.values())

    def run(self) -> None:
        """Run every shipper until a stop; re-raise the first failure of one (after stopping the others)."""
        os.makedirs(self.wal_dir, exist_ok=True)
        self.watch = WalWatch.open(self.wal_dir)
        for shipper in self.shippers.values():
            shipper.use_watch(self.watch)
        try:
            self._run_threads()
        finally:
            if self.watch is not None:
                self.watch.close()

    def _run_threads(self) -> None:
        threads = [
            threading.Thread(target=self._run_one, args=(signal, shipper), name=f"shipper-{signal.value}", daemon=True)
            for signal, shipper in self.shippers.items()
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if self._errors:
            raise self._errors[0]

    def _run_one(self, signal: Signal, shipper: Shipper) -> None:
        try:
            shipper.run()
        except BaseException as exc:  # one signal's crash stops the process (the supervisor restarts it)
            log.exception("the %s shipper failed; stopping the others", signal.value)
            self._errors.append(exc)
            self.request_stop(0.0)
