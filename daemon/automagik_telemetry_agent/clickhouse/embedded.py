"""The embedded sink: the shipper writes into a chDB store (:mod:`.chdb`) at ``embedded.dir``.

A newcomer sees spans arrive without owning a ClickHouse server: the store gets the modern schema,
the same rows, batches and dedup tokens as the HTTP sink (:class:`EmbeddedSink` implements
:class:`~.sink.Sink`); only the carrier differs.

Each insert is one query, ``INSERT INTO db.table SETTINGS insert_deduplication_token = '<batch
token>' FORMAT JSONEachRow`` followed by the exact frozen body (not chDB's faster streaming inserter,
which reports success for a block the table refused: see :meth:`~.chdb.EmbeddedStore.insert`). The
modern table has ``non_replicated_deduplication_window``, so a batch re-sent after a crash of the
shipper is dropped by the store: exactly once.
"""

from __future__ import annotations

import logging
import threading

from .chdb import ChdbUnavailable, EmbeddedStore, StoreBusy, StoreUnusable, classify_chdb_error
from .errors import ErrorClass
from .explain import SinkKind, Target, explain
from .http import count_present_sql, require_row_shape
from .query_server import QueryServer
from .rows import Profile
from .schema import apply, identifier, render_migrations, table_columns
from .sink import Capabilities, DetectResult, InsertResult, SinkError

__all__ = ["EmbeddedSink"]

log = logging.getLogger(__name__)


class EmbeddedSink:
    """The :class:`~.sink.Sink` for a chDB store in ``directory`` (the shipper owns the store).

    ``detect()`` opens the store (and starts the query server, if ``serve_queries``), and creates the
    table with the modern schema when it is missing: nobody else can, since the store belongs to this
    process.
    """

    def __init__(
        self, directory: str, database: str = "telemetry", table: str = "traces", serve_queries: bool = True
    ) -> None:
        if not directory.strip():
            raise ValueError("embedded.dir must not be empty")
        self.store = EmbeddedStore(directory)
        self.directory = self.store.directory
        self.endpoint = f"chdb:{self.directory}"
        self.database = identifier(database)
        self.table = identifier(table)
        self.serve_queries = serve_queries
        self.capabilities: Capabilities | None = None
        self.columns: dict[str, str] = {}
        self.profile: Profile | None = None
        self.query_server: QueryServer | None = None  # while the store is open
        self._lock = threading.RLock()  # detect() may run in the sender thread while the main thread stops

    @property
    def target(self) -> str:
        return f"{self.database}.{self.table}"

    def close(self) -> None:
        with self._lock:
            if self.query_server is not None:
                self.query_server.close()
                self.query_server = None
            self.store.close()

    # ------------------------------------------------------------------ opening
    def open(self) -> None:
        """Open the store (idempotent); raises :class:`SinkError` with one line when that fails."""
        with self._lock:
            if self.store.is_open:
                return
            try:
                self.store.open()
            except StoreBusy as exc:
                result = InsertResult(False, ErrorClass.TRANSIENT, None, str(exc))
                raise SinkError(result, f"{exc}: waiting for it to exit") from None
            except ChdbUnavailable as exc:
                result = InsertResult(False, ErrorClass.CONFIG, None, str(exc))
                raise SinkError(result, str(exc)) from None
            except StoreUnusable as exc:
                result = InsertResult(False, ErrorClass.CONFIG, None, exc.message)
                raise SinkError(result, result.message) from None
            except OSError as exc:
                result = InsertResult(False, ErrorClass.CONFIG, None, exc.strerror or str(exc))
                raise SinkError(result, result.message) from None
            except Exception as exc:  # chDB's own start-up errors (e.g. a second path in this process)
                result = classify_chdb_error(exc)
                result = InsertResult(False, ErrorClass.CONFIG, result.code, result.message)
                raise SinkError(result, self.explain(result)) from None
            if self.serve_queries:
                try:
                    self.query_server = QueryServer(self.directory, self.store.read).start()
                except OSError as exc:  # queries fall back to "stopped agent" errors; shipping goes on
                    log.warning(
                        "cannot serve queries on the embedded store %s: %s", self.directory, exc.strerror or exc
                    )
            log.info("embedded ClickHouse store %s open (chDB)", self.directory)

    # ------------------------------------------------------------------ the Sink interface
    def query(self, sql: str) -> str:
        """Run one statement on the store (opening it if needed); its TabSeparated text or :class:`SinkError`."""
        self.open()
        try:
            return self.store.execute(sql).decode("utf-8", "replace")
        except Exception as exc:
            result = classify_chdb_error(exc)
            raise SinkError(result, self.explain(result)) from None

    def detect(self) -> DetectResult:
        """Open the store, create the table if missing (modern schema), and check its columns."""
        with self._lock:
            version = self.query("SELECT version()").strip()
            self.capabilities = Capabilities(version, zstd=False, dedup_token=True)
            columns = table_columns(self.query, self.database, self.table)
            if not columns:
                try:
                    applied = apply(self.query, Profile.MODERN, self.database, self.table, 0)
                    if not table_columns(self.query, self.database, self.table):
                        # Dropped after its migrations were recorded: run them again (each statement is
                        # IF NOT EXISTS-safe, see schema.apply).
                        log.warning(
                            "table %s was dropped from the embedded store %s: creating it again",
                            self.target,
                            self.directory,
                        )
                        for migration in render_migrations(Profile.MODERN, self.database, self.table, 0):
                            for statement in migration.statements:
                                self.query(statement)
                except SinkError:
                    raise
                except Exception as exc:  # SchemaError, ValueError: the migrations themselves
                    result = InsertResult(False, ErrorClass.CONFIG, None, f"creating {self.target}: {exc}")
                    raise SinkError(result, self.explain(result)) from None
                log.info(
                    "created %s in the embedded store %s (migrations applied now: %s)",
                    self.target,
                    self.directory,
                    ", ".join(map(str, applied)) or "none",
                )
                columns = table_columns(self.query, self.database, self.table)
            profile = require_row_shape(self.target, columns, self.explain)
            self.columns, self.profile = columns, profile
            return DetectResult(self.capabilities, columns, profile)

    def insert(self, body: bytes, token: str | None = None) -> InsertResult:
        """Insert the exact frozen body with ``insert_deduplication_token = token``; never raises."""
        try:
            self.open()
        except SinkError as exc:
            return exc.result
        try:
            self.store.insert(self.target, body, token)
        except Exception as exc:
            r = classify_chdb_error(exc)
            return InsertResult(False, r.error_class, r.code, r.message, None, len(body), len(body))
        return InsertResult(True, ErrorClass.OK, None, "", None, len(body), len(body), "none")

    def count_present(self, span_ids: list[str], min_ns: int, max_ns: int) -> int:
        return int(self.query(count_present_sql(self.target, span_ids, min_ns, max_ns)).strip() or 0)

    def explain(self, r: InsertResult) -> str:
        """One actionable line for an operator."""
        return explain(r, Target(SinkKind.EMBEDDED, self.directory, self.database, self.table))

    def read(self, sql: str, fmt: str) -> bytes:
        """The output of one statement on the store's read-only session (``automagik-telemetry query``)."""
        self.open()
        try:
            return self.store.read(sql, fmt)
        except Exception as exc:
            result = classify_chdb_error(exc)
            raise SinkError(result, self.explain(result)) from None
