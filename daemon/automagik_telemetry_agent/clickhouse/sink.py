"""What the shipper needs from a sink: one interface, two carriers.

``shipper.Shipper`` batches, freezes, retries, bisects and commits; a sink only carries one
frozen JSONEachRow body with its dedup token to a table and classifies the answer. Two sinks
implement this protocol:

* :class:`~.http.ClickHouseHttpSink`: a ClickHouse server over HTTP(S);
* :class:`~.embedded.EmbeddedSink`: an in-process chDB store (ClickHouse 26.9) in a local directory.

Everything else (the transform, batch bytes, tokens, error classes) is shared, so the embedded
default and a production server take the same code path except for the carrier.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .errors import Classified, ErrorClass, Finding
from .resource import Profile

__all__ = ["Capabilities", "DetectResult", "InsertResult", "RowKeys", "Sink", "SinkError", "Tables"]

#: The columns rows of a profile fill (what a table must have for them): one per kind of row.
RowKeys = Callable[[Profile], frozenset[str]]


@dataclass(frozen=True, slots=True)
class Tables:
    """The names of the three tables of one database (``schema apply`` creates all three)."""

    traces: str = "traces"
    logs: str = "logs"
    metrics: str = "metrics"


@dataclass(frozen=True, slots=True)
class InsertResult:
    ok: bool
    error_class: ErrorClass
    code: int | None = None
    message: str = ""
    status: int | None = None
    raw_bytes: int = 0
    sent_bytes: int = 0
    encoding: str = "none"
    #: what the agent found itself (no server error code): a missing table, a table of the wrong shape...
    finding: Finding | None = None
    #: the request never reached the server (no connection made): the body is surely not stored
    unsent: bool = False

    @classmethod
    def of(cls, c: Classified, raw_bytes: int = 0, sent_bytes: int = 0, encoding: str = "none") -> InsertResult:
        ok = c.error_class is ErrorClass.OK
        return cls(ok, c.error_class, c.code, c.message, c.status, raw_bytes, sent_bytes, encoding, c.finding, c.unsent)

    @property
    def maybe_stored(self) -> bool:
        """A failure after which the body may still have been stored: no answer after the request went out,
        or ClickHouse's own UNKNOWN_STATUS_OF_INSERT (319). A retry of it must reach a server that would
        deduplicate it (the same replicated shard), never another one."""
        return not self.ok and ((self.status is None and not self.unsent) or self.code == 319)


@dataclass(frozen=True, slots=True)
class Capabilities:
    version: str
    zstd: bool
    dedup_token: bool
    #: the server knows the ``async_insert`` setting (21.11+): the sink then always says which it wants
    async_insert: bool = False
    #: async inserts keep insert_deduplication_token's promise here (26.3.17.65+: before, a silent-loss bug)
    async_insert_with_token: bool = False


@dataclass(frozen=True, slots=True)
class DetectResult:
    capabilities: Capabilities
    columns: dict[str, str]
    profile: Profile


class SinkError(Exception):
    """A query (detection, DDL) failed; ``result`` classifies it, ``str()`` is one actionable line."""

    def __init__(self, result: InsertResult, explanation: str) -> None:
        super().__init__(explanation)
        self.result = result


class Sink(Protocol):
    @property
    def endpoint(self) -> str:
        """Where the rows go, for log lines ("http://host:8123", "chdb:/var/lib/.../embedded")."""
        ...

    @property
    def database(self) -> str: ...

    @property
    def table(self) -> str: ...

    @property
    def capabilities(self) -> Capabilities | None:
        """Set by :meth:`detect`; ``capabilities.dedup_token`` says whether retries are deduplicated."""
        ...

    @property
    def profile(self) -> Profile | None:
        """The row shape the table takes, set by :meth:`detect`."""
        ...

    @property
    def target(self) -> str:
        """``database.table``."""
        ...

    def detect(self) -> DetectResult:
        """Capabilities and the table's row profile; raises :class:`SinkError` when unusable."""
        ...

    def insert(self, body: bytes, token: str | None = None) -> InsertResult:
        """Insert one JSONEachRow body (deduplicated by ``token`` where supported); never raises for a
        failure of the store: the result carries its class."""
        ...

    def explain(self, r: InsertResult) -> str:
        """One actionable line for an operator."""
        ...

    def probe(self, last: InsertResult) -> bool:
        """While backing off after ``last``: whether an insert would likely succeed now, found cheaply (a
        light query, never the batch). True ends the backoff early; False waits it out."""
        ...

    def count_present(self, span_ids: list[str], min_ns: int, max_ns: int) -> int:
        """How many of ``span_ids`` the table holds (the restart probe for sinks without dedup tokens)."""
        ...

    def count_rows(self, columns: tuple[str, ...], keys: list[tuple[object, ...]], min_ns: int, max_ns: int) -> int:
        """How many rows within ``[min_ns, max_ns]`` have one of ``keys`` in ``columns`` (the restart probe
        of any table)."""
        ...

    def query(self, sql: str) -> str:
        """Run one statement; its output text, or :class:`SinkError`."""
        ...

    def read(self, sql: str, fmt: str) -> bytes:
        """The output of one read-only statement in format ``fmt`` (``automagik-telemetry query``)."""
        ...

    def for_table(self, table: str, row_keys: RowKeys) -> Sink:
        """A sink of the same carrier and database for another table whose rows fill ``row_keys`` (one per
        signal: spans, log records and data points each go to their own table)."""
        ...

    def close(self) -> None: ...
