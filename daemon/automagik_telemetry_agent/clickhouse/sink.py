"""What the shipper needs from a sink: one interface, two carriers.

:class:`~.shipper.Shipper` batches, freezes, retries, bisects and commits; a sink only carries one
frozen JSONEachRow body with its dedup token to a table and classifies the answer. Two sinks
implement this protocol:

* :class:`~.sink_http.ClickHouseHttpSink`: a ClickHouse server over HTTP(S);
* :class:`~.sink_chdb.EmbeddedSink`: an in-process chDB store (ClickHouse 26.9) in a local directory.

Everything else (the transform, batch bytes, tokens, error classes) is shared, so the embedded
default and a production server take the same code path except for the carrier.
"""

from __future__ import annotations

from typing import Protocol

from .sink_http import Capabilities, DetectResult, InsertResult
from .transform import Profile

__all__ = ["Sink"]


class Sink(Protocol):
    #: where the rows go, for log lines ("http://host:8123", "chdb:/var/lib/.../embedded")
    endpoint: str
    database: str
    table: str
    #: set by :meth:`detect`; ``capabilities.dedup_token`` says whether retries are deduplicated
    capabilities: Capabilities | None
    profile: Profile | None

    @property
    def target(self) -> str:
        """``database.table``."""
        ...

    def detect(self) -> DetectResult:
        """Capabilities and the table's row profile; raises :class:`~.sink_http.SinkError` when unusable."""
        ...

    def insert(self, body: bytes, token: str | None = None) -> InsertResult:
        """Insert one JSONEachRow body (deduplicated by ``token`` where supported); never raises for a
        failure of the store: the result carries its class."""
        ...

    def explain(self, r: InsertResult) -> str:
        """One actionable line for an operator."""
        ...

    def count_present(self, span_ids: list[str], min_ns: int, max_ns: int) -> int:
        """How many of ``span_ids`` the table holds (the restart probe for sinks without dedup tokens)."""
        ...

    def query(self, sql: str) -> str:
        """Run one statement; its output text, or :class:`~.sink_http.SinkError`."""
        ...

    def close(self) -> None: ...
