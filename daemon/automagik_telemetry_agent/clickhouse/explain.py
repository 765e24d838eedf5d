"""One actionable line for every failure a sink can meet: one table, for the server and the embedded store.

:func:`problem_of` names the problem behind an :class:`~.sink.InsertResult` (from the agent's own
:class:`~.errors.Finding`, the ClickHouse error code, or the HTTP status); :data:`REMEDIES` says, per
problem and per kind of sink, what the operator reads: where it happened, what is wrong, what to do.
The server's own words follow in parentheses. No line ever contains a password.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .errors import ErrorClass, Finding
from .sink import InsertResult


class SinkKind(enum.Enum):
    SERVER = "server"  # ClickHouse over HTTP(S)
    EMBEDDED = "embedded"  # the chDB store


class Problem(enum.Enum):
    TABLE_MISSING = "table_missing"
    TABLE_MISMATCH = "table_mismatch"
    WRONG_PASSWORD = "wrong_password"
    UNKNOWN_USER = "unknown_user"
    HOST_NOT_ALLOWED = "host_not_allowed"
    ACCESS_DENIED = "access_denied"
    READONLY = "readonly"
    UNKNOWN_SETTING = "unknown_setting"
    NOT_CLICKHOUSE = "not_clickhouse"
    OUT_OF_RESOURCES = "out_of_resources"
    CANNOT_CONNECT = "cannot_connect"  # a client-side configuration failure: TLS, the URL
    UNAVAILABLE = "unavailable"
    KEEPER = "keeper"  # a replicated table without its ZooKeeper / Keeper session: read-only
    TOO_MANY_PARTS = "too_many_parts"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Target:
    """The sink an explanation is about (the fields its lines mention)."""

    kind: SinkKind
    endpoint: str  # http://host:8123, or the store's directory
    database: str
    table: str
    username: str = ""
    version: str = "version unknown"

    @property
    def where(self) -> str:
        return (
            f"ClickHouse at {self.endpoint}" if self.kind is SinkKind.SERVER else f"the embedded store {self.endpoint}"
        )

    @property
    def target(self) -> str:
        return f"{self.database}.{self.table}"


_BY_FINDING = {
    Finding.NOT_CLICKHOUSE: Problem.NOT_CLICKHOUSE,
    Finding.TABLE_MISSING: Problem.TABLE_MISSING,
    Finding.TABLE_UNKNOWN_SHAPE: Problem.TABLE_MISMATCH,
    Finding.TABLE_LACKS_COLUMNS: Problem.TABLE_MISMATCH,
}
_BY_CODE = {
    225: Problem.KEEPER,
    242: Problem.KEEPER,
    999: Problem.KEEPER,
    252: Problem.TOO_MANY_PARTS,
    60: Problem.TABLE_MISSING,
    81: Problem.TABLE_MISSING,
    16: Problem.TABLE_MISMATCH,
    117: Problem.TABLE_MISMATCH,
    193: Problem.WRONG_PASSWORD,
    194: Problem.WRONG_PASSWORD,
    516: Problem.WRONG_PASSWORD,
    192: Problem.UNKNOWN_USER,
    195: Problem.HOST_NOT_ALLOWED,
    497: Problem.ACCESS_DENIED,
    164: Problem.READONLY,
    115: Problem.UNKNOWN_SETTING,
    36: Problem.READONLY,  # BAD_ARGUMENTS: what chDB says of a store it cannot open for writing
    173: Problem.OUT_OF_RESOURCES,
    241: Problem.OUT_OF_RESOURCES,
    243: Problem.OUT_OF_RESOURCES,
}
#: Codes whose problem only the embedded store has; on a server they read as OTHER / UNAVAILABLE.
_EMBEDDED_ONLY = frozenset({36, 173, 241, 243})


def problem_of(r: InsertResult, kind: SinkKind) -> Problem:
    if r.finding is not None:
        return _BY_FINDING[r.finding]
    if r.code is not None and r.code in _BY_CODE and (kind is SinkKind.EMBEDDED or r.code not in _EMBEDDED_ONLY):
        return _BY_CODE[r.code]
    if r.code is None and r.status == 401:
        return Problem.WRONG_PASSWORD
    if r.status == 403:
        return Problem.ACCESS_DENIED
    if r.error_class is ErrorClass.CONFIG and r.status is None and r.code is None:
        return Problem.CANNOT_CONNECT
    if r.error_class is ErrorClass.TRANSIENT:
        return Problem.UNAVAILABLE
    return Problem.OTHER


_SCHEMA_APPLY = (
    "`automagik-telemetry schema apply --clickhouse-endpoint {endpoint} --database {database} --table {table}`"
)
#: Problem -> kind of sink -> the line, before the server's words. A kind without an entry reads as OTHER.
REMEDIES: dict[Problem, dict[SinkKind, str]] = {
    Problem.TABLE_MISSING: {
        SinkKind.SERVER: "table {target} does not exist on {where}: run " + _SCHEMA_APPLY,
        SinkKind.EMBEDDED: "table {target} is missing in {where}: the shipper creates it again at its next check "
        "(shipper.config_retry)",
    },
    Problem.TABLE_MISMATCH: {
        SinkKind.SERVER: "table {target} on {where} does not match the rows: run `automagik-telemetry schema apply` "
        "or point --table at an automagik-telemetry table",
        SinkKind.EMBEDDED: "table {target} in {where} does not match the rows: it was not created by "
        "automagik-telemetry; move {endpoint} away",
    },
    Problem.WRONG_PASSWORD: {
        SinkKind.SERVER: "{where} rejected user {username!r}'s password: fix --password / --password-file "
        "/ AUTOMAGIK_TELEMETRY_CLICKHOUSE_PASSWORD",
    },
    Problem.UNKNOWN_USER: {SinkKind.SERVER: "{where} has no user {username!r}: fix --username"},
    Problem.HOST_NOT_ALLOWED: {SinkKind.SERVER: "{where} does not accept user {username!r} from this host"},
    Problem.ACCESS_DENIED: {SinkKind.SERVER: "user {username!r} may not insert into {target} on {where}: GRANT INSERT"},
    Problem.READONLY: {
        SinkKind.SERVER: "user {username!r} is read-only on {where}: use a user allowed to INSERT",
        SinkKind.EMBEDDED: "{where} cannot be opened for writing (check its permissions and that one process uses it)",
    },
    Problem.UNKNOWN_SETTING: {SinkKind.SERVER: "{where} ({version}) does not know a setting the shipper sent"},
    Problem.NOT_CLICKHOUSE: {
        SinkKind.SERVER: "the server at {endpoint} is not ClickHouse's HTTP interface: point --clickhouse-endpoint "
        "at it (port 8123 by default, 8443 with TLS)",
    },
    Problem.OUT_OF_RESOURCES: {SinkKind.EMBEDDED: "{where} is out of disk space or memory"},
    Problem.UNAVAILABLE: {SinkKind.SERVER: "{where} unavailable"},
    Problem.KEEPER: {
        SinkKind.SERVER: "{where} cannot write {target}: its replicated table has no ZooKeeper (Keeper) session and "
        "is read-only; check ZooKeeper and the server's <zookeeper> settings (inserts resume by themselves)",
    },
    Problem.TOO_MANY_PARTS: {
        SinkKind.SERVER: "{where} refuses inserts into {target}: too many parts (merges are behind); the agent "
        "backs off and sends fewer, larger batches (docs/scaling.md)",
    },
    Problem.OTHER: {SinkKind.SERVER: "{where} error", SinkKind.EMBEDDED: "{where} error"},
}


def explain(r: InsertResult, target: Target) -> str:
    """One actionable line for ``r`` on ``target``."""
    problem = problem_of(r, target.kind)
    if problem is Problem.CANNOT_CONNECT:
        if target.kind is SinkKind.SERVER:
            return f"cannot talk to {target.where}: {r.message} (check --ca-bundle / --verify-tls / the URL)"
        return r.message
    template = REMEDIES[problem].get(target.kind) or REMEDIES[Problem.OTHER][target.kind]
    detail = f" (code {r.code}: {r.message})" if r.code is not None else f" ({r.message})"
    return (
        template.format(
            target=target.target,
            where=target.where,
            endpoint=target.endpoint,
            database=target.database,
            table=target.table,
            username=target.username,
            version=target.version,
        )
        + detail
    )
