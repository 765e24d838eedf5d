"""Unit tests of automagik_telemetry_agent.clickhouse.errors (no server)."""

from __future__ import annotations

import pytest
import requests

from automagik_telemetry_agent.clickhouse.errors import (
    ErrorClass,
    classify_exception,
    classify_response,
    error_text,
    parse_code,
)

FROM_CLICKHOUSE = {"X-ClickHouse-Server-Display-Name": "ch1"}  # on every answer, also from 18.16
LEGACY_60 = "Code: 60, e.displayText() = DB::Exception: Table default.nope doesn't exist., e.what() = DB::Exception\n"
MODERN_60 = "Code: 60. DB::Exception: Table default.nope does not exist. (UNKNOWN_TABLE) (version 25.3.1.1)\n"


@pytest.mark.parametrize("body", [LEGACY_60, MODERN_60, b"Code: 60. x", "  Code:60, x"])
def test_parse_code_both_formats(body: str | bytes) -> None:
    assert parse_code(body) == 60


def test_parse_code_header_wins_and_absent() -> None:
    assert parse_code("", {"X-ClickHouse-Exception-Code": "241"}) == 241
    assert parse_code("Code: 60. x", {"x-clickhouse-exception-code": "193"}) == 193
    assert parse_code("Ok.\n") is None
    assert parse_code(None) is None
    assert parse_code("error Code: 60") is None  # only at the start


@pytest.mark.parametrize(
    ("status", "body", "expected", "code"),
    [
        (200, b"", ErrorClass.OK, None),
        (200, MODERN_60, ErrorClass.CONFIG, 60),  # exception written after the headers went out
        (404, LEGACY_60, ErrorClass.CONFIG, 60),
        (404, "Code: 81, e.displayText() = DB::Exception: Database nodb doesn't exist", ErrorClass.CONFIG, 81),
        (404, "Code: 115, e.displayText() = DB::Exception: Unknown setting x", ErrorClass.CONFIG, 115),
        (401, "Code: 193, e.displayText() = DB::Exception: Wrong password for user agent", ErrorClass.CONFIG, 193),
        (401, "Code: 192, e.displayText() = DB::Exception: Unknown user nobody", ErrorClass.CONFIG, 192),
        (
            500,
            "Code: 164, e.displayText() = DB::Exception: Cannot insert into table in readonly mode",
            ErrorClass.CONFIG,
            164,
        ),
        (403, "Code: 516. DB::Exception: Authentication failed", ErrorClass.CONFIG, 516),
        (500, "Code: 27, e.displayText() = DB::Exception: Cannot parse input", ErrorClass.BAD_DATA, 27),
        (400, "Code: 26, e.displayText() = DB::Exception: Cannot parse JSON string", ErrorClass.BAD_DATA, 26),
        (500, "Code: 117, e.displayText() = DB::Exception: Unknown field found", ErrorClass.CONFIG, 117),  # table
        (500, "Code: 117. DB::Exception: Cannot parse JSON object here", ErrorClass.BAD_DATA, 117),  # a row
        (400, "Code: 53. DB::Exception: Type mismatch", ErrorClass.BAD_DATA, 53),
        (500, "Code: 252. DB::Exception: Too many parts", ErrorClass.TRANSIENT, 252),
        (
            500,
            "Code: 252. DB::Exception: Too many partitions for single INSERT block (more than 100).",
            ErrorClass.BAD_DATA,
            252,
        ),  # the rows span too many days: bisect, do not retry the same block
        (500, "Code: 241. DB::Exception: Memory limit", ErrorClass.TRANSIENT, 241),
        (503, "Code: 209. DB::Exception: Timeout", ErrorClass.TRANSIENT, 209),
        (500, "Code: 89, e.displayText() = DB::Exception: Unknown Content-Encoding", ErrorClass.TRANSIENT, 89),
        (500, "Code: 4242. something new", ErrorClass.TRANSIENT, 4242),  # unknown: keep data, retry
        (502, "<html>Bad gateway</html>", ErrorClass.TRANSIENT, None),
        (429, "", ErrorClass.TRANSIENT, None),
        (401, "", ErrorClass.CONFIG, None),
        (413, "too large", ErrorClass.BAD_DATA, None),
    ],
)
def test_classify_response(status: int, body: str | bytes, expected: ErrorClass, code: int | None) -> None:
    c = classify_response(status, FROM_CLICKHOUSE, body)
    assert c.error_class is expected
    assert c.code == code
    assert c.status == status
    if expected is not ErrorClass.OK:
        assert c.message


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, b"OK", ErrorClass.CONFIG),  # another service took the POST: never a success, the cursor stays
        (200, b"", ErrorClass.CONFIG),
        (400, b"<html><body><h1>400 Bad Request</h1></body></html>", ErrorClass.CONFIG),  # not a row verdict
        (404, b"Not Found", ErrorClass.CONFIG),
        (501, b"<p>Unsupported method ('POST')</p>", ErrorClass.CONFIG),
        (502, b"<html>Bad gateway</html>", ErrorClass.TRANSIENT),  # a proxy whose ClickHouse is down
        (503, b"", ErrorClass.TRANSIENT),
        (429, b"slow down", ErrorClass.TRANSIENT),
        (413, b"<h1>413 Request Entity Too Large</h1>", ErrorClass.BAD_DATA),  # bisecting gets under the limit
    ],
)
def test_an_answer_without_clickhouse_headers_is_never_ok_and_never_a_verdict_on_the_rows(
    status: int, body: bytes, expected: ErrorClass
) -> None:
    c = classify_response(status, {"Content-Type": "text/html", "Server": "nginx"}, body)
    assert (c.error_class, c.code, c.status) == (expected, None, status)
    assert c.message.startswith(f"not ClickHouse: HTTP {status} without X-ClickHouse-* headers")
    assert "<" not in c.message  # an HTML page is shown as its text


def test_a_code_body_counts_as_clickhouse_even_without_headers() -> None:
    c = classify_response(500, {}, "Code: 27, e.displayText() = DB::Exception: Cannot parse input")
    assert (c.error_class, c.code) == (ErrorClass.BAD_DATA, 27)


def test_2xx_with_exception_header_is_failure() -> None:
    c = classify_response(200, {"X-ClickHouse-Exception-Code": "241"}, b"partial output")
    assert c.error_class is ErrorClass.TRANSIENT and c.code == 241


def test_error_text_truncated_to_500_and_one_line() -> None:
    text = error_text("Code: 1. " + "x\n" * 1000)
    assert len(text) == 500 and "\n" not in text and text.endswith("...")


def test_classify_exceptions() -> None:
    assert classify_exception(requests.ConnectionError("refused")).error_class is ErrorClass.TRANSIENT
    assert classify_exception(requests.ReadTimeout("slow")).error_class is ErrorClass.TRANSIENT
    assert classify_exception(ConnectionResetError()).error_class is ErrorClass.TRANSIENT
    assert classify_exception(requests.exceptions.SSLError("bad cert")).error_class is ErrorClass.CONFIG
