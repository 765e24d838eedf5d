"""Proves the test infrastructure: the real ClickHouse 18.16 server fixture and the chdb fixture.

The HTTP error cases below are the facts recorded in docs/clickhouse-compat.md; if one of these
tests fails, that table is wrong.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import time

import pytest
from clickhouse_server import (
    AGENT_PASSWORD,
    AGENT_USER,
    EXTERNAL_URL_ENV,
    READONLY_PASSWORD,
    READONLY_USER,
    ClickHouseQueryError,
    ClickHouseServer,
    ClickHouseStartError,
    free_port,
)

pytestmark = pytest.mark.clickhouse


def _make_table(ch, db: str) -> str:
    ch.query(f"CREATE TABLE {db}.events (ts UInt64, name String, value Float64) ENGINE = MergeTree ORDER BY ts")
    return f"{db}.events"


def _rows(n: int, start: int = 0) -> bytes:
    return b"".join(
        json.dumps({"ts": i, "name": f"e{i}", "value": i / 2}).encode() + b"\n" for i in range(start, start + n)
    )


def test_version_is_debian_18_16(clickhouse):
    assert clickhouse.version.startswith("18.16"), clickhouse.version


def test_gzip_jsoneachrow_insert_roundtrip(clickhouse, clickhouse_db):
    table = _make_table(clickhouse, clickhouse_db)
    r = clickhouse.request(
        params={"query": f"INSERT INTO {table} FORMAT JSONEachRow"},
        body=gzip.compress(_rows(3)),
        headers={"Content-Encoding": "gzip"},
        user=AGENT_USER,
        password=AGENT_PASSWORD,
    )
    assert (r.status, r.body) == (200, b"")
    out = clickhouse.query(f"SELECT ts, name, value FROM {table} ORDER BY ts FORMAT JSONEachRow")
    # 18.16 quotes 64-bit integers in JSON output (output_format_json_quote_64bit_integers=1).
    assert [json.loads(line) for line in out.splitlines()] == [
        {"ts": "0", "name": "e0", "value": 0},
        {"ts": "1", "name": "e1", "value": 0.5},
        {"ts": "2", "name": "e2", "value": 1},
    ]


def test_query_helper_with_data_and_settings(clickhouse, clickhouse_db):
    table = _make_table(clickhouse, clickhouse_db)
    clickhouse.query(
        f"INSERT INTO {table} FORMAT JSONEachRow",
        data=b'{"ts": 1, "name": "x", "value": 1, "extra": 5}\n',
        settings={"input_format_skip_unknown_fields": 1},
    )
    assert clickhouse.query(f"SELECT count() FROM {table}").strip() == "1"


def test_wrong_password(clickhouse):
    with pytest.raises(ClickHouseQueryError) as ei:
        clickhouse.query("SELECT 1", user=AGENT_USER, password="wrong")
    e = ei.value
    assert e.body.startswith("Code: ")
    assert (e.status, e.code) == (401, 193), e
    assert "Wrong password for user agent" in e.body
    with pytest.raises(ClickHouseQueryError) as ei:
        clickhouse.query("SELECT 1", user="nobody", password="x")
    assert (ei.value.status, ei.value.code) == (401, 192)


def test_agent_user_right_password(clickhouse):
    assert clickhouse.query("SELECT 1", user=AGENT_USER, password=AGENT_PASSWORD).strip() == "1"


def _err(ch, sql, **kw) -> ClickHouseQueryError:
    with pytest.raises(ClickHouseQueryError) as ei:
        ch.query(sql, **kw)
    assert ei.value.body.startswith("Code: "), ei.value.body
    return ei.value


def test_observed_18_16_errors(clickhouse, clickhouse_db):
    """The table in docs/clickhouse-compat.md."""
    ch = clickhouse
    table = _make_table(ch, clickhouse_db)
    ins = f"INSERT INTO {table} FORMAT JSONEachRow"

    e = _err(ch, f"SELECT * FROM {clickhouse_db}.nope")
    assert (e.status, e.code) == (404, 60) and "doesn't exist" in e.body
    e = _err(ch, "SELECT 1 FROM no_such_db.x")
    assert (e.status, e.code) == (404, 81)

    # The setting is unknown to 18.16 (added in 22.x) -> UNKNOWN_SETTING, answered with HTTP 404.
    e = _err(ch, ins, data=_rows(1), settings={"insert_deduplication_token": "x"})
    assert (e.status, e.code) == (404, 115) and "Unknown setting insert_deduplication_token" in e.body
    # ... and `INSERT ... SETTINGS` is not even valid syntax in 18.16.
    e = _err(ch, f"INSERT INTO {table} SETTINGS insert_deduplication_token='x' FORMAT JSONEachRow", data=_rows(1))
    assert (e.status, e.code) == (400, 62) and "Syntax error" in e.body
    # non_replicated_deduplication_window is unknown too.
    e = _err(
        ch,
        f"CREATE TABLE {clickhouse_db}.d (a UInt8) ENGINE = MergeTree ORDER BY a "
        "SETTINGS non_replicated_deduplication_window = 100",
    )
    assert (e.status, e.code) == (500, 36)

    e = _err(ch, ins, data=b"\x28\xb5\x2f\xfd-not-really-zstd", headers={"Content-Encoding": "zstd"})
    assert (e.status, e.code) == (500, 89) and "Unknown Content-Encoding of HTTP request: zstd" in e.body

    # A bad row fails the whole insert: the good row before it is not kept.
    e = _err(ch, ins, data=_rows(1, 100) + b'{"ts": "notanumber", "name": "x", "value": 1}\n')
    assert (e.status, e.code) == (500, 27)
    e = _err(ch, ins, data=_rows(1, 200) + b"{not json}\n")
    assert (e.status, e.code) == (400, 26)
    e = _err(ch, ins, data=b'{"ts": 1, "name": "x", "value": 1, "zz": 1}\n')
    assert (e.status, e.code) == (500, 117)
    assert ch.query(f"SELECT count() FROM {table}").strip() == "0"

    e = _err(ch, ins, data=_rows(1), user=READONLY_USER, password=READONLY_PASSWORD)
    assert (e.status, e.code) == (500, 164) and "readonly mode" in e.body
    assert ch.query("SELECT 1", user=READONLY_USER, password=READONLY_PASSWORD).strip() == "1"


def test_every_query_answer_carries_an_x_clickhouse_header(clickhouse, clickhouse_db):
    """What the shipper relies on to tell ClickHouse from another service on the port (a 200 from something
    else must never count as a stored batch): successes, errors and INSERT answers all carry one."""
    table = _make_table(clickhouse, clickhouse_db)
    answers = [
        clickhouse.request(body="SELECT version()"),
        clickhouse.request(body="SELECT nosuch()"),
        clickhouse.request(body="SELECT 1", password="wrong-password"),
        clickhouse.request(params={"query": f"INSERT INTO {table} FORMAT JSONEachRow"}, body=_rows(1)),
        clickhouse.request(params={"query": f"INSERT INTO {table} FORMAT JSONEachRow"}, body=b"{not json}\n"),
    ]
    assert [a.status == 200 for a in answers] == [True, False, False, True, False]
    for answer in answers:
        assert any(name.lower().startswith("x-clickhouse-") for name in answer.headers), answer


def test_kill_and_restart_keep_data(clickhouse, clickhouse_db):
    table = _make_table(clickhouse, clickhouse_db)
    clickhouse.query(f"INSERT INTO {table} FORMAT JSONEachRow", data=_rows(5))
    port = clickhouse.url
    clickhouse.kill()
    assert not clickhouse.ping()
    clickhouse.restart()
    assert clickhouse.url == port
    assert clickhouse.query(f"SELECT count(), sum(ts) FROM {table}").split() == ["5", "10"]
    clickhouse.stop()
    clickhouse.start()
    assert clickhouse.query(f"SELECT count() FROM {table}").strip() == "5"


def test_pause_blocks_and_resume_recovers(clickhouse):
    clickhouse.pause()
    try:
        t = time.monotonic()
        with pytest.raises(OSError):  # socket.timeout / URLError(timeout) are OSErrors
            clickhouse.query("SELECT 1", timeout=0.5)
        assert time.monotonic() - t < 5
    finally:
        clickhouse.resume()
    assert clickhouse.query("SELECT 1").strip() == "1"


def test_start_failure_reports_server_log(tmp_path):
    if os.environ.get(EXTERNAL_URL_ENV):
        pytest.skip(f"starts a private server; {EXTERNAL_URL_ENV} is set (external server mode)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        server = ClickHouseServer(tmp_path)
        server.http_port, server.tcp_port = s.getsockname()[1], free_port()
        with pytest.raises(ClickHouseStartError, match="Address already in use"):
            server.start(timeout=20)
    assert not server.running


# ---- chdb-core: the embedded modern engine ------------------------------------------------------
# chdb-core's Python API: `chdb.session.Session(path)` opens (creating if needed) a persistent
# database directory and `session.query(sql, fmt="CSV")` returns a result whose str() is the text
# output (errors raise chdb.ChdbError). `chdb.connect(path)` is the DB-API style alternative
# (`.cursor().execute()/fetchall()`, and `.query(sql, fmt)`). One process can have only one
# embedded server path open at a time, hence chdb_session_factory closes the previous session.


@pytest.mark.chdb
def test_chdb_version(chdb_session_factory):
    s = chdb_session_factory()
    assert str(s.query("SELECT version()", "TabSeparated")).strip().startswith("26.")


@pytest.mark.chdb
def test_chdb_insert_deduplication_token(chdb_session_factory):
    s = chdb_session_factory()
    s.query("CREATE DATABASE IF NOT EXISTS t")
    s.query(
        "CREATE TABLE t.events (ts UInt64, name String) ENGINE = MergeTree ORDER BY ts "
        "SETTINGS non_replicated_deduplication_window = 100"
    )
    for _ in range(2):
        s.query(
            'INSERT INTO t.events SETTINGS insert_deduplication_token=\'x\' FORMAT JSONEachRow {"ts": 1, "name": "a"}'
        )
    assert str(s.query("SELECT count() FROM t.events", "TabSeparated")).strip() == "1"
    # A different token is a different block.
    s.query('INSERT INTO t.events SETTINGS insert_deduplication_token=\'y\' FORMAT JSONEachRow {"ts": 1, "name": "a"}')
    assert str(s.query("SELECT count() FROM t.events", "TabSeparated")).strip() == "2"
