"""The ClickHouse HTTP sink: one keep-alive session, capability detection, one INSERT per call.

Responsibilities (and nothing else): talk HTTP to one ClickHouse endpoint, pick the request
compression and the settings the server supports, and turn every answer into an
:class:`InsertResult` (class, code, the server's own text). Retrying, batching and bisecting are
the shipper's job.

* Auth: exactly one method, HTTP basic auth (never URL parameters: they land in logs). Credentials
  are never logged, and an endpoint URL carrying ``user:password@`` is refused.
* ``detect()``: ``SELECT version()`` gives the capabilities (:mod:`.versions`: zstd request bodies from
  21.1, ``insert_deduplication_token`` from 22.2); ``system.columns`` gives the target table's columns and
  so the row :class:`~.rows.Profile` (:func:`.table_checks.require_row_shape`, the checks both sinks
  make; :mod:`.table_checks` also holds the restart probe's SQL, re-exported here).
* ``insert()``: ``POST ?query=INSERT INTO db.table FORMAT JSONEachRow&wait_end_of_query=1`` (plus
  ``insert_deduplication_token`` when supported); a 2xx carrying an exception is a failure.
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
import urllib.parse
from dataclasses import dataclass

import requests

from .errors import Classified, ErrorClass, Finding, classify_exception, classify_response
from .explain import SinkKind, Target, explain
from .rows import Profile
from .schema import identifier, pick_profile, quote, table_columns
from .sink import Capabilities, DetectResult, InsertResult, RowKeys, SinkError
from .table_checks import count_present_sql, count_rows_sql, lacks_optional_columns, profile_row_keys, require_row_shape
from .versions import server_capabilities, version_parts, version_tuple

__all__ = [
    "ClickHouseHttpSink",
    "count_present_sql",
    "count_rows_sql",
    "lacks_optional_columns",
    "profile_row_keys",
    "require_row_shape",
]

log = logging.getLogger(__name__)

COMPRESSIONS = ("auto", "zstd", "gzip", "none")
ZSTD_LEVEL = 1
GZIP_LEVEL = 3
ASYNC_INSERTS = ("off", "on")
PROBE_TIMEOUT_S = 1.0
#: Keeper trouble: NO_ZOOKEEPER, TABLE_IS_READ_ONLY, UNKNOWN_STATUS_OF_INSERT (the keeper connection was lost
#: while the insert committed), KEEPER_EXCEPTION. The server answers /ping meanwhile; its probe is the
#: replicas' read-only flags.
KEEPER_CODES = frozenset({225, 242, 319, 999})


#: Re-exported under its former name (tests import it from here).
_version_parts = version_parts


@dataclass(frozen=True, slots=True)
class _Settings:
    """What the sink was made with (``for_table`` makes its siblings from it)."""

    endpoint: str
    database: str
    username: str
    password: str
    ca_bundle: str | None
    verify_tls: bool
    connect_timeout: float
    read_timeout: float
    compression: str
    compression_threshold: int
    async_insert: str


class ClickHouseHttpSink:
    def __init__(
        self,
        endpoint: str = "http://localhost:8123",
        database: str = "telemetry",
        table: str = "traces",
        username: str = "default",
        password: str = "",
        ca_bundle: str | None = None,
        verify_tls: bool = True,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        compression: str = "auto",
        compression_threshold: int = 1024,
        row_keys: RowKeys = profile_row_keys,
        async_insert: str = "off",
    ) -> None:
        self._settings = _Settings(
            endpoint,
            database,
            username,
            password,
            ca_bundle,
            verify_tls,
            connect_timeout,
            read_timeout,
            compression,
            compression_threshold,
            async_insert,
        )
        self.row_keys = row_keys
        if async_insert not in ASYNC_INSERTS:
            raise ValueError(f"async_insert {async_insert!r} is not one of {', '.join(ASYNC_INSERTS)}")
        self.async_insert = async_insert
        self._warned_async = False
        parsed = urllib.parse.urlsplit(endpoint)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"ClickHouse endpoint {endpoint!r} is not an http(s)://host[:port] URL")
        if parsed.username or parsed.password:
            raise ValueError(
                "the ClickHouse endpoint URL must not carry credentials: use the username and "
                "password settings (or a password file)"
            )
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression {compression!r} is not one of {', '.join(COMPRESSIONS)}")
        self.endpoint = endpoint.rstrip("/")
        self.database = identifier(database)
        self.table = identifier(table)
        self.username = username
        self.compression = compression
        self.compression_threshold = compression_threshold
        self.timeout = (connect_timeout, read_timeout)
        self.session = self._new_session()
        self._probe_session: requests.Session | None = None
        self.capabilities: Capabilities | None = None
        self.columns: dict[str, str] = {}
        self.profile: Profile | None = None
        self.skip_unknown = False  # the table lacks migration 0004's columns (lacks_optional_columns)

    @property
    def target(self) -> str:
        return f"{self.database}.{self.table}"

    def _new_session(self) -> requests.Session:
        s = self._settings
        session = requests.Session()
        session.auth = (s.username, s.password)  # basic auth only: exactly one method
        session.verify = s.ca_bundle if s.ca_bundle else s.verify_tls
        session.trust_env = False  # no netrc credentials or proxies sneaking in a second method
        return session

    def reset_session(self) -> None:
        """A new session for the next requests (the old one stays with a request given up in another thread)."""
        self.session = self._new_session()

    def close(self) -> None:
        self.session.close()
        if self._probe_session is not None:
            self._probe_session.close()

    # ------------------------------------------------------------------ probes (cheap, 1 s timeouts)
    def _probe_get(self, params: dict[str, str] | None = None, path: str = "/") -> requests.Response | None:
        if self._probe_session is None:
            self._probe_session = self._new_session()
        timeout = (min(1.0, self.timeout[0]), PROBE_TIMEOUT_S)
        try:
            return self._probe_session.get(self.endpoint + path, params=params, timeout=timeout)
        except (requests.RequestException, OSError):
            return None

    def ping(self) -> bool:
        """Whether the server answers ``GET /ping`` with ``Ok.`` within a second."""
        r = self._probe_get(path="/ping")
        return r is not None and r.status_code == 200 and r.content.startswith(b"Ok.")

    def replicas_writable(self) -> bool:
        """Whether the server answers and none of its replicas of the target table is read-only (a plain
        table has none: True)."""
        sql = (
            "SELECT count() FROM system.replicas WHERE is_readonly AND database = "
            f"{quote(self.database)} AND table = {quote(self.table)} FORMAT TabSeparated"
        )
        r = self._probe_get({"query": sql})
        return r is not None and r.status_code == 200 and r.text.strip() == "0"

    def probe(self, last: InsertResult) -> bool:
        """Whether an insert that failed with ``last`` would likely succeed now, found cheaply:

        * after no answer (refused, reset, timeout) or a 5xx that did not come from ClickHouse (a proxy
          whose upstream is down): /ping;
        * after a keeper problem (:data:`KEEPER_CODES`: the server answers while its tables stay read-only):
          the replicas' read-only flags;
        * after any other error ClickHouse answered with (TOO_MANY_PARTS, memory, a 4xx): never -- the
          server was there, /ping would say nothing new; that waits out its backoff."""
        if last.code in KEEPER_CODES:
            return self.replicas_writable()
        if last.status is None or (last.code is None and last.status >= 500):
            return self.ping()
        return False

    def for_table(self, table: str, row_keys: RowKeys) -> ClickHouseHttpSink:
        """The same server, database and credentials, another table (its own session and detection)."""
        s = self._settings
        return ClickHouseHttpSink(
            endpoint=s.endpoint,
            database=s.database,
            table=table,
            username=s.username,
            password=s.password,
            ca_bundle=s.ca_bundle,
            verify_tls=s.verify_tls,
            connect_timeout=s.connect_timeout,
            read_timeout=s.read_timeout,
            compression=s.compression,
            compression_threshold=s.compression_threshold,
            row_keys=row_keys,
            async_insert=s.async_insert,
        )

    # ------------------------------------------------------------------ plain queries
    def query(self, sql: str, timeout: float | None = None) -> str:
        """Run one statement (POSTed as the body); its output text, or :class:`SinkError`. ``timeout``: a
        read timeout shorter than the sink's (light queries that must not hold the caller long)."""
        timeouts = self.timeout if timeout is None else (min(self.timeout[0], timeout), timeout)
        try:
            r = self.session.post(
                self.endpoint + "/", data=sql.encode(), timeout=timeouts, params={"wait_end_of_query": "1"}
            )
        except (requests.RequestException, OSError) as exc:
            result = InsertResult.of(classify_exception(exc))
            raise SinkError(result, self.explain(result)) from None
        c = classify_response(r.status_code, r.headers, r.content)
        if c.error_class is not ErrorClass.OK:
            result = InsertResult.of(c)
            raise SinkError(result, self.explain(result))
        return r.text

    def detect(self) -> DetectResult:
        """Server capabilities and the target table's columns and profile.

        Raises :class:`SinkError` (CONFIG) when the table is missing or lacks columns the rows need.
        """
        version = self.query("SELECT version()").strip()
        caps = server_capabilities(version)
        self.capabilities = caps
        columns = table_columns(self.query, self.database, self.table)
        if not columns:
            result = InsertResult(
                False, ErrorClass.CONFIG, message=f"Table {self.target} doesn't exist", finding=Finding.TABLE_MISSING
            )
            raise SinkError(result, self.explain(result))
        profile = require_row_shape(self.target, columns, self.explain, self.row_keys)
        self.columns, self.profile = columns, profile
        self.skip_unknown = lacks_optional_columns(self.target, columns, self.row_keys)
        with_server = pick_profile(version) if version_tuple(version) != (0, 0) else profile
        if with_server is not profile:
            log.info(
                "ClickHouse %s: writing the %s row shape of the existing table %s", version, profile.value, self.target
            )
        return DetectResult(caps, columns, profile)

    def count_rows(self, columns: tuple[str, ...], keys: list[tuple[object, ...]], min_ns: int, max_ns: int) -> int:
        """How many rows within ``[min_ns, max_ns]`` have one of ``keys`` in ``columns`` (restart probe)."""
        return int(self.query(count_rows_sql(self.target, columns, keys, min_ns, max_ns)).strip() or 0)

    def count_present(self, span_ids: list[str], min_ns: int, max_ns: int) -> int:
        """How many of ``span_ids`` (started within ``[min_ns, max_ns]``) the table holds (restart probe)."""
        return int(self.query(count_present_sql(self.target, span_ids, min_ns, max_ns)).strip() or 0)

    # ------------------------------------------------------------------ inserts
    def choose_encoding(self, size: int) -> str:
        if self.compression == "none" or (self.compression == "auto" and size < self.compression_threshold):
            return "none"
        caps = self.capabilities
        if self.compression == "zstd" or self.compression == "auto":
            if caps is not None and caps.zstd:
                return "zstd"
            return "gzip"
        return "gzip"

    @staticmethod
    def compress(body: bytes, encoding: str) -> bytes:
        # Levels measured on span rows (bench/README.md, "Compression"): zstd 1 costs 0.7 us/row at 22:1,
        # zstd 3 1.1 us at 21:1; gzip 3 2.8 us at 17:1 (gzip 1 is no faster, gzip 6 twice as slow).
        if encoding == "zstd":
            import zstandard

            return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(body)
        if encoding == "gzip":
            return gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)
        return body

    def insert_params(self, token: str | None) -> dict[str, str]:
        params = {"query": f"INSERT INTO {self.target} FORMAT JSONEachRow", "wait_end_of_query": "1"}
        if self.skip_unknown:  # a traces table before migration 0004: its 0.1.4 keys are left out, not an error
            params["input_format_skip_unknown_fields"] = "1"
        caps = self.capabilities
        if token is not None and caps is not None and caps.dedup_token:
            params["insert_deduplication_token"] = token
        if caps is not None and caps.async_insert:
            params.update(self._async_params(caps))
        return params

    def _async_params(self, caps: Capabilities) -> dict[str, str]:
        """The async_insert settings, always explicit on a server that knows them (26.3+ defaults to on, and a
        shipper that batches wants synchronous inserts unless told otherwise): ``on`` asks the server to
        gather small inserts into one part and answer after the flush (``wait_for_async_insert=1``, so an
        OK still means stored), deduplicated like synchronous ones; only where tokens are safe with it."""
        if self.async_insert == "on" and caps.async_insert_with_token:
            return {"async_insert": "1", "wait_for_async_insert": "1", "async_insert_deduplicate": "1"}
        if self.async_insert == "on" and not self._warned_async:
            self._warned_async = True
            log.warning(
                "ClickHouse %s at %s: async inserts lose deduplicated rows before 26.3.17.65; inserting "
                "synchronously (clickhouse.async_insert = on takes effect once the server is upgraded)",
                caps.version,
                self.endpoint,
            )
        return {"async_insert": "0"}

    def insert(self, body: bytes, token: str | None = None) -> InsertResult:
        """POST one JSONEachRow body; never raises for a server or network failure."""
        encoding = self.choose_encoding(len(body))
        data = self.compress(body, encoding)
        headers = {"Content-Type": "application/x-ndjson"}
        if encoding != "none":
            headers["Content-Encoding"] = encoding
        try:
            r = self.session.post(
                self.endpoint + "/", params=self.insert_params(token), data=data, headers=headers, timeout=self.timeout
            )
        except (requests.RequestException, OSError) as exc:
            return InsertResult.of(classify_exception(exc), len(body), len(data), encoding)
        c = classify_response(r.status_code, r.headers, r.content)
        if c.code == 89 and encoding == "zstd":  # UNKNOWN_COMPRESSION_METHOD: fall back to gzip
            log.warning("ClickHouse at %s refused a zstd body; falling back to gzip", self.endpoint)
            if self.capabilities is not None:
                self.capabilities = dataclasses.replace(self.capabilities, zstd=False)
            if self.compression == "zstd":
                self.compression = "gzip"
            c = Classified(ErrorClass.TRANSIENT, c.code, c.message, c.status)
        return InsertResult.of(c, len(body), len(data), encoding)

    # ------------------------------------------------------------------ messages
    def explain(self, r: InsertResult) -> str:
        """One actionable line for an operator (never containing a password)."""
        version = self.capabilities.version if self.capabilities else "version unknown"
        return explain(r, Target(SinkKind.SERVER, self.endpoint, self.database, self.table, self.username, version))

    def read(self, sql: str, fmt: str) -> bytes:
        """The output of one read-only statement (``readonly = 1``) in format ``fmt``; :class:`SinkError`."""
        try:
            r = self.session.post(
                self.endpoint + "/",
                data=sql.encode(),
                timeout=self.timeout,
                params={"default_format": fmt, "readonly": "1"},
            )
        except (requests.RequestException, OSError) as exc:
            result = InsertResult.of(classify_exception(exc))
            raise SinkError(result, self.explain(result)) from None
        c = classify_response(r.status_code, r.headers, r.content)
        if c.error_class is not ErrorClass.OK:  # also an answer that did not come from ClickHouse
            result = InsertResult.of(c)
            raise SinkError(result, self.explain(result))
        return r.content
