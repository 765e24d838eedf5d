"""Classify ClickHouse HTTP answers and client-side failures into what the shipper should do.

Four classes (docs/clickhouse-compat.md):

* ``OK``: the insert is confirmed (2xx, no exception header, no ``Code:`` body).
* ``TRANSIENT``: retry the same bytes later with backoff (connection errors, timeouts, overload,
  too many parts, keeper trouble, and anything we do not recognise: keeping data is the safe default).
* ``BAD_DATA``: this batch's rows are at fault (parse/type errors): bisect, dead-letter the bad rows.
* ``CONFIG``: every batch will fail until a human acts (auth, unknown table/database, readonly
  user, our query or a setting the server does not know): keep the data, say what to fix, retry slowly.

The error code is parsed from ``X-ClickHouse-Exception-Code`` (modern servers) or from the body,
which starts with ``Code: N`` in both the modern (``Code: 60. DB::Exception: ...``) and the 18.16
(``Code: 60, e.displayText() = DB::Exception: ...``) format. The HTTP status is used only when no
code is known: 18.16 answers an unknown setting with 404 and a bad value with 500.

Every answer from ClickHouse's HTTP interface carries ``X-ClickHouse-*`` headers (18.16:
``X-ClickHouse-Server-Display-Name``). An answer without them and without a ``Code:`` is from
something else (another service on that port, a proxy's own error page): it is never OK, so the
cursor never moves on it, and never BAD_DATA (ClickHouse did not judge the rows), except 413: a proxy's
body-size limit, which smaller INSERTs (bisection) get under.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass

import requests
import urllib3

__all__ = [
    "BAD_DATA_CODES",
    "CONFIG_CODES",
    "TRANSIENT_CODES",
    "Classified",
    "ErrorClass",
    "Finding",
    "answered_by_clickhouse",
    "classify_exception",
    "classify_response",
    "error_text",
    "parse_code",
]

MAX_MESSAGE = 500  # characters of the server's error text kept in results and logs


class ErrorClass(enum.Enum):
    OK = "ok"
    TRANSIENT = "transient"
    BAD_DATA = "bad_data"
    CONFIG = "config"


class Finding(enum.Enum):
    """What the agent found on its own, with no ClickHouse error code to say it (never dressed up as one)."""

    NOT_CLICKHOUSE = "not_clickhouse"  # the answer came from something else on that port (no X-ClickHouse-*)
    TABLE_MISSING = "table_missing"  # system.columns has no such table
    TABLE_UNKNOWN_SHAPE = "table_unknown_shape"  # neither a Map `attributes` nor `attribute_keys`
    TABLE_LACKS_COLUMNS = "table_lacks_columns"  # a column the rows fill is missing


#: Retry with capped exponential backoff and full jitter.
TRANSIENT_CODES = frozenset(
    {
        3,  # UNEXPECTED_END_OF_FILE (body cut by the network)
        23,  # CANNOT_READ_FROM_ISTREAM
        24,  # CANNOT_WRITE_TO_OSTREAM
        32,  # ATTEMPT_TO_READ_AFTER_EOF
        33,  # CANNOT_READ_ALL_DATA
        159,  # TIMEOUT_EXCEEDED
        173,  # CANNOT_ALLOCATE_MEMORY
        202,  # TOO_MANY_SIMULTANEOUS_QUERIES
        203,  # NO_FREE_CONNECTION
        209,  # SOCKET_TIMEOUT
        210,  # NETWORK_ERROR
        225,  # NO_ZOOKEEPER
        236,  # ABORTED
        241,  # MEMORY_LIMIT_EXCEEDED
        242,  # TABLE_IS_READ_ONLY (replica lost its keeper session)
        243,  # NOT_ENOUGH_SPACE
        252,  # TOO_MANY_PARTS
        279,  # ALL_CONNECTION_TRIES_FAILED
        319,  # UNKNOWN_STATUS_OF_INSERT
        394,  # QUERY_WAS_CANCELLED
        425,  # SYSTEM_ERROR
        999,  # KEEPER_EXCEPTION
    }
)

#: The rows of this batch are at fault: bisect and dead-letter the bad ones.
BAD_DATA_CODES = frozenset(
    {
        6,  # CANNOT_PARSE_TEXT
        25,  # CANNOT_PARSE_ESCAPE_SEQUENCE
        26,  # CANNOT_PARSE_QUOTED_STRING (18.16: broken JSON row)
        27,  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
        38,  # CANNOT_PARSE_DATE
        41,  # CANNOT_PARSE_DATETIME
        53,  # TYPE_MISMATCH
        69,  # ARGUMENT_OUT_OF_BOUND
        70,  # CANNOT_CONVERT_TYPE
        72,  # CANNOT_PARSE_NUMBER
        117,  # INCORRECT_DATA (but "Unknown field found" is CONFIG: see class_of_code)
        128,  # TOO_LARGE_ARRAY_SIZE
        131,  # TOO_LARGE_STRING_SIZE
        190,  # SIZES_OF_ARRAYS_DOESNT_MATCH
        321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
        349,  # CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
    }
)

#: Every batch will fail until a human acts.
CONFIG_CODES = frozenset(
    {
        16,  # NO_SUCH_COLUMN_IN_TABLE
        36,  # BAD_ARGUMENTS
        47,  # UNKNOWN_IDENTIFIER
        60,  # UNKNOWN_TABLE
        62,  # SYNTAX_ERROR (our own INSERT text: not the rows' fault)
        81,  # UNKNOWN_DATABASE
        115,  # UNKNOWN_SETTING
        164,  # READONLY
        192,  # UNKNOWN_USER
        193,  # WRONG_PASSWORD
        194,  # REQUIRED_PASSWORD
        195,  # IP_ADDRESS_NOT_ALLOWED
        497,  # ACCESS_DENIED
        516,  # AUTHENTICATION_FAILED
    }
)

_CODE = re.compile(r"^\s*Code:\s*(\d+)")


@dataclass(frozen=True, slots=True)
class Classified:
    error_class: ErrorClass
    code: int | None
    message: str  # the server's own text (or the client error), at most MAX_MESSAGE characters
    status: int | None  # HTTP status, None for a client-side failure
    finding: Finding | None = None
    #: the request never reached the server (refused, connect timeout, name not resolved): surely not stored
    unsent: bool = False


def parse_code(body: str | bytes | None, headers: Mapping[str, str] | None = None) -> int | None:
    """The ClickHouse error code from the exception header or a ``Code: N`` body; None if neither."""
    if headers:
        for name, value in headers.items():
            if name.lower() == "x-clickhouse-exception-code":
                value = value.strip()
                if value.isdigit():
                    return int(value)
    if body is None:
        return None
    if isinstance(body, bytes | bytearray | memoryview):
        body = bytes(body[:200]).decode("utf-8", "replace")
    m = _CODE.match(body)
    return int(m.group(1)) if m else None


def error_text(body: str | bytes, limit: int = MAX_MESSAGE) -> str:
    """The server's error text on one line, truncated to ``limit`` characters."""
    if isinstance(body, bytes | bytearray | memoryview):
        body = bytes(body[: limit * 4]).decode("utf-8", "replace")
    text = " ".join(body.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def class_of_code(code: int, message: str = "") -> ErrorClass:
    """The class of ClickHouse error ``code``; ``message`` (the server's text) refines the two codes
    that mean two things:

    * 252 is TOO_MANY_PARTS both for "merges are behind" (transient: wait) and for "too many partitions
      for single INSERT block" (spans more than ~100 days apart in one batch: a property of these rows,
      so bisect until each part fits, instead of retrying the same batch forever);
    * 117 is INCORRECT_DATA for a bad value, but "Unknown field found" means the table lacks a column
      every row carries (dropped while the shipper runs): a table problem, not bad rows, so the data
      waits instead of being dead-lettered row by row.
    """
    lowered = message.lower()
    if code == 252 and "partitions for single insert block" in lowered:
        return ErrorClass.BAD_DATA
    if code == 117 and "unknown field found" in lowered:
        return ErrorClass.CONFIG
    if code in BAD_DATA_CODES:
        return ErrorClass.BAD_DATA
    if code in CONFIG_CODES:
        return ErrorClass.CONFIG
    return ErrorClass.TRANSIENT  # TRANSIENT_CODES and unknown codes: keep the data, retry


def _class_of_status(status: int) -> ErrorClass:
    if status in (401, 403, 404, 407):
        return ErrorClass.CONFIG
    if status in (400, 413, 422):
        return ErrorClass.BAD_DATA
    return ErrorClass.TRANSIENT  # 408, 429, 5xx, anything else


def answered_by_clickhouse(headers: Mapping[str, str]) -> bool:
    """True when the answer carries ClickHouse's ``X-ClickHouse-*`` response headers."""
    return any(name.lower().startswith("x-clickhouse-") for name in headers)


def _not_clickhouse(status: int, body: str | bytes) -> Classified:
    if isinstance(body, bytes | bytearray | memoryview):
        body = bytes(body[: 4 * MAX_MESSAGE]).decode("utf-8", "replace")
    page = error_text(re.sub(r"<[^>]*>", " ", body), limit=200)  # an HTML error page, without its tags
    message = f"not ClickHouse: HTTP {status} without X-ClickHouse-* headers" + (f": {page}" if page else "")
    if status == 413:
        error_class = ErrorClass.BAD_DATA  # a proxy's body-size limit: smaller INSERTs get through
    elif status in (408, 429, 500, 502, 503, 504):
        error_class = ErrorClass.TRANSIENT  # a proxy whose upstream (ClickHouse) is down or busy
    else:
        error_class = ErrorClass.CONFIG
    return Classified(error_class, None, message, status, Finding.NOT_CLICKHOUSE)


def classify_response(status: int, headers: Mapping[str, str] | None, body: str | bytes) -> Classified:
    """Classify one HTTP answer to an INSERT. A 2xx carrying an exception is a failure.

    ``headers=None`` skips the check that the answer came from ClickHouse (callers that have none).
    """
    code = parse_code(body, headers)
    if code is None and headers is not None and not answered_by_clickhouse(headers):
        return _not_clickhouse(status, body)
    if 200 <= status < 300 and code is None:
        return Classified(ErrorClass.OK, None, "", status)
    message = error_text(body) or f"HTTP {status} without a body"
    if code is not None:
        return Classified(class_of_code(code, message), code, message, status)
    if 200 <= status < 300:  # pragma: no cover - code None handled above
        return Classified(ErrorClass.OK, None, "", status)
    return Classified(_class_of_status(status), None, message, status)


def classify_exception(exc: BaseException) -> Classified:
    """Classify a client-side failure (``requests`` or ``OSError``): TLS problems are CONFIG, the rest
    (refused, reset, timeouts, DNS hiccups) TRANSIENT."""
    name = type(exc).__name__
    message = error_text(f"{name}: {exc}")
    if isinstance(exc, requests.exceptions.SSLError):
        return Classified(ErrorClass.CONFIG, None, message, None)
    if isinstance(
        exc, requests.exceptions.InvalidURL | requests.exceptions.MissingSchema | requests.exceptions.InvalidSchema
    ):
        return Classified(ErrorClass.CONFIG, None, message, None)
    return Classified(ErrorClass.TRANSIENT, None, message, None, unsent=_never_sent(exc))


def _never_sent(exc: BaseException) -> bool:
    """Whether ``exc`` failed before any byte of the request went out: no connection was made (refused,
    connect timeout, unresolvable name). A reset or read timeout after sending may have stored the body."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    if isinstance(exc, requests.exceptions.ConnectionError):
        cause = exc.args[0] if exc.args else None  # urllib3's MaxRetryError, its reason the first failure
        reason = getattr(cause, "reason", cause)
        # NewConnectionError: refused, unreachable, DNS (NameResolutionError is one); also the connect
        # timeout that requests did not map to ConnectTimeout (a proxy's, or a SOCKS one).
        return isinstance(reason, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError)
    return isinstance(exc, ConnectionRefusedError)
