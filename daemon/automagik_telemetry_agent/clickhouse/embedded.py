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
from .http import count_present_sql, count_rows_sql, lacks_optional_columns, profile_row_keys, require_row_shape
from .query_server import QueryServer
from .resource import Profile
from .schema import apply, identifier, render_migrations, table_columns
from .sink import Capabilities, DetectResult, InsertResult, RowKeys, SinkError, Tables

__all__ = ["EmbeddedSink"]

log = logging.getLogger(__name__)


class EmbeddedSink:
    """The :class:`~.sink.Sink` for a chDB store in ``directory`` (the shipper owns the store).

    ``detect()`` opens the store (and starts the query server, if ``serve_queries``), and creates the
    table with the modern schema when it is missing: nobody else can, since the store belongs to this
    process.
    """

    def __init__(
        self,
        directory: str,
        database: str = "telemetry",
        table: str = "traces",
        serve_queries: bool = True,
        *,
        tables: Tables | None = None,
        row_keys: RowKeys = profile_row_keys,
        store: EmbeddedStore | None = None,
        lock: threading.RLock | None = None,
    ) -> None:
        """``tables``: the three tables the store gets (``table`` is the one this sink writes); ``store``: the
        store of another sink of this process (:meth:`for_table`), which then keeps owning it."""
        if not directory.strip():
            raise ValueError("embedded.dir must not be empty")
        self.owns_store = store is None
        self.store = EmbeddedStore(directory) if store is None else store
        self.tables = tables or Tables(traces=table)
        self.row_keys = row_keys
        self.directory = self.store.directory
        self.endpoint = f"chdb:{self.directory}"
        self.database = identifier(database)
        self.table = identifier(table)
        self.serve_queries = serve_queries
        self.capabilities: Capabilities | None = None
        self.columns: dict[str, str] = {}
        self.profile: Profile | None = None
        self.skip_unknown = False  # the table lacks migration 0004's columns (lacks_optional_columns)
        self.query_server: QueryServer | None = None  # while the store is open
        # detect() may run in a sender thread while the main thread stops; the sinks of one store share it,
        # so that two tables' first detections do not both apply the migrations.
        self._lock = lock or threading.RLock()

    @property
    def target(self) -> str:
        return f"{self.database}.{self.table}"

    def for_table(self, table: str, row_keys: RowKeys) -> EmbeddedSink:
        """Another table of the same store (chDB allows one store per process: it is shared, and closed by
        this sink, not by the new one)."""
        return EmbeddedSink(
            self.directory,
            self.database,
            table,
            False,
            tables=self.tables,
            row_keys=row_keys,
            store=self.store,
            lock=self._lock,
        )

    def close(self) -> None:
        if not self.owns_store:
            return
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
                self._serve_queries()
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
            log.info("embedded ClickHouse store %s open (chDB)", self.directory)
            self._serve_queries()

    def _serve_queries(self) -> None:
        """Start the query socket once the store is open (whichever table's sink opened it); call locked."""
        if not self.serve_queries or self.query_server is not None:
            return
        try:
            self.query_server = QueryServer(self.directory, self.store.read).start()
        except OSError as exc:  # queries fall back to "stopped agent" errors; shipping goes on
            log.warning("cannot serve queries on the embedded store %s: %s", self.directory, exc.strerror or exc)
            self.serve_queries = False  # one warning, not one per detection

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
                    t = self.tables
                    applied = apply(
                        self.query,
                        Profile.MODERN,
                        self.database,
                        t.traces,
                        0,
                        logs_table=t.logs,
                        metrics_table=t.metrics,
                    )
                    if not table_columns(self.query, self.database, self.table):
                        # Dropped after its migrations were recorded: run them again (each statement is
                        # IF NOT EXISTS-safe, see schema.apply).
                        log.warning(
                            "table %s was dropped from the embedded store %s: creating it again",
                            self.target,
                            self.directory,
                        )
                        for migration in render_migrations(
                            Profile.MODERN, self.database, t.traces, 0, logs_table=t.logs, metrics_table=t.metrics
                        ):
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
            profile = require_row_shape(self.target, columns, self.explain, self.row_keys)
            self.columns, self.profile = columns, profile
            self.skip_unknown = lacks_optional_columns(self.target, columns, self.row_keys)
            return DetectResult(self.capabilities, columns, profile)

    def insert(self, body: bytes, token: str | None = None) -> InsertResult:
        """Insert the exact frozen body with ``insert_deduplication_token = token``; never raises."""
        try:
            self.open()
        except SinkError as exc:
            return exc.result
        try:
            self.store.insert(self.target, body, token, self.skip_unknown)
        except Exception as exc:
            r = classify_chdb_error(exc)
            return InsertResult(False, r.error_class, r.code, r.message, None, len(body), len(body))
        return InsertResult(True, ErrorClass.OK, None, "", None, len(body), len(body), "none")

    def count_rows(self, columns: tuple[str, ...], keys: list[tuple[object, ...]], min_ns: int, max_ns: int) -> int:
        return int(self.query(count_rows_sql(self.target, columns, keys, min_ns, max_ns)).strip() or 0)

    def count_present(self, span_ids: list[str], min_ns: int, max_ns: int) -> int:
        return int(self.query(count_present_sql(self.target, span_ids, min_ns, max_ns)).strip() or 0)

    def explain(self, r: InsertResult) -> str:
        """One actionable line for an operator."""
        return explain(r, Target(SinkKind.EMBEDDED, self.directory, self.database, self.table))

    def probe(self, last: InsertResult) -> bool:
        """No cheaper question than the insert itself in process: the backoff is waited out."""
        return False

    def read(self, sql: str, fmt: str) -> bytes:
        """The output of one statement on the store's read-only session (``automagik-telemetry query``)."""
        self.open()
        try:
            return self.store.read(sql, fmt)
        except Exception as exc:
            result = classify_chdb_error(exc)
            raise SinkError(result, self.explain(result)) from None
