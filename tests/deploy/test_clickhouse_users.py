"""deploy/clickhouse/users: the agent's user can ship and nothing more.

* Legacy (18.16, no SQL user management): legacy-agent.xml, rendered by render.sh, is installed in users.d of
  a private 18.16 server; the real shipper ships through the real HTTP sink as that user, while DDL and other
  databases are refused. The one hole 18.16 leaves (allow_ddl as a URL setting) is pinned so that the file's
  comment stays true.
* Modern: chDB cannot run CREATE USER (clickhouse-local has no writable user storage, pinned below), so the
  SQL is parsed by chDB 26.9's own parser (formatQuery) and its grants are checked to be exactly
  INSERT/SELECT on the traces table and SELECT on schema_migrations.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_process import wait_until
from clickhouse_server import EXTERNAL_URL_ENV, ClickHouseQueryError, ClickHouseServer
from shipper.shipper_helpers import (
    BASE_NS,
    ShipperThread,
    apply_schema,
    count,
    fast_options,
    make_sink,
    span,
    write_wal,
)

from automagik_telemetry_agent.clickhouse.rows import Profile
from automagik_telemetry_agent.clickhouse.schema import render_migrations, split_statements
from automagik_telemetry_agent.shipper.loop import Shipper
from automagik_telemetry_agent.wal import read_cursor

from .deploy_helpers import USERS

USER, PASSWORD = "automagik_agent", "s3cret pass'word"
DDL_REFUSED, DATABASE_REFUSED, WRONG_PASSWORD = 392, 291, 193


def render(
    template: str, user: str = USER, password: str | None = PASSWORD, *args: str
) -> subprocess.CompletedProcess[str]:
    """Run render.sh as an operator would (the password on standard input)."""
    return subprocess.run(
        ["sh", str(USERS / "render.sh"), str(USERS / template), user, *args],
        input=None if password is None else password + "\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def rendered(template: str, *args: str) -> str:
    done = render(template, USER, PASSWORD, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


# ------------------------------------------------------------------------------------------- render.sh
def test_render_puts_only_the_password_hash_in_and_leaves_no_placeholder() -> None:
    digest = hashlib.sha256(PASSWORD.encode()).hexdigest()
    for template in ("legacy-agent.xml", "modern-agent.sql", "modern-grafana.sql"):
        text = rendered(template, "tele2", "spans")
        assert digest in text, template
        assert PASSWORD not in text and "{" not in text.replace("{{", ""), template
        assert "tele2" in text and "{database}" not in text, template
    assert "tele2.spans" in rendered("modern-agent.sql", "tele2", "spans")


def test_render_refuses_bad_names_and_a_missing_password() -> None:
    assert render("modern-agent.sql", "bad-name").returncode == 2
    assert render("modern-agent.sql", USER, PASSWORD, "db; DROP").returncode == 2
    done = render("modern-agent.sql", USER, None)
    assert done.returncode == 2 and "no password" in done.stderr


# -------------------------------------------------------------------------------------- legacy (18.16)
@pytest.fixture(scope="module")
def legacy_server() -> Iterator[ClickHouseServer]:
    if os.environ.get(EXTERNAL_URL_ENV):
        pytest.skip(f"installs a users.d file: needs a server the tests start, not {EXTERNAL_URL_ENV}")
    xml = rendered("legacy-agent.xml")
    ET.fromstring(xml)  # well-formed (an XML comment must not contain "--", for one)
    with ClickHouseServer(users_d={"automagik-telemetry-agent.xml": xml}) as server:
        server.query("CREATE DATABASE telemetry")
        server.query("CREATE DATABASE other")
        server.query("CREATE TABLE other.secrets (x UInt8) ENGINE = MergeTree() ORDER BY x")
        apply_schema(server, "telemetry")
        yield server


def as_agent(server: ClickHouseServer, sql: str, **settings: object) -> str:
    return server.query(sql, user=USER, password=PASSWORD, settings=settings or None)


def refused(server: ClickHouseServer, sql: str) -> int | None:
    with pytest.raises(ClickHouseQueryError) as info:
        as_agent(server, sql)
    return info.value.code


@pytest.mark.clickhouse
def test_legacy_agent_user_ships_through_the_real_sink(legacy_server: ClickHouseServer, tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    seqs = write_wal(wal, [[span(i) for i in range(40)], [span(i) for i in range(40, 75)]])
    sink = make_sink(legacy_server, "telemetry", username=USER, password=PASSWORD)
    detected = sink.detect()  # version(), system.columns: what the shipper reads before its first INSERT
    assert detected.profile is not None and detected.profile.value == "legacy"
    shipper = Shipper(str(wal), sink, fast_options(tmp_path))
    with ShipperThread(shipper) as t:
        wait_until(lambda: read_cursor(str(wal)).seq == seqs[-1], 30, message="the WAL shipped as the agent user")
        t.stop()
    assert count(legacy_server, "telemetry") == 75
    assert shipper.stats.rows == 75 and shipper.stats.retries_config == 0
    # The restart probe and doctor's schema check run as this user too.
    assert sink.count_present([f"{i + 1:016x}" for i in range(75)], BASE_NS, BASE_NS + 10**9) == 75
    latest = render_migrations(Profile.LEGACY, "telemetry", "traces", 0)[-1].version
    assert as_agent(legacy_server, "SELECT max(version) FROM telemetry.schema_migrations").strip() == str(latest)
    sink.close()


@pytest.mark.clickhouse
def test_legacy_agent_user_cannot_run_ddl_or_touch_other_databases(legacy_server: ClickHouseServer) -> None:
    assert refused(legacy_server, "DROP TABLE telemetry.traces") == DDL_REFUSED
    assert refused(legacy_server, "TRUNCATE TABLE telemetry.traces") == DDL_REFUSED
    assert refused(legacy_server, "ALTER TABLE telemetry.traces DELETE WHERE 1") == DDL_REFUSED
    assert refused(legacy_server, "CREATE TABLE telemetry.x (x UInt8) ENGINE = Memory") == DDL_REFUSED
    assert refused(legacy_server, "DROP DATABASE telemetry") == DDL_REFUSED
    assert refused(legacy_server, "SET allow_ddl = 1") == DDL_REFUSED
    assert refused(legacy_server, "SELECT count() FROM other.secrets") == DATABASE_REFUSED
    assert refused(legacy_server, "INSERT INTO other.secrets VALUES (1)") == DATABASE_REFUSED
    with pytest.raises(ClickHouseQueryError) as info:
        legacy_server.query("SELECT 1", user=USER, password="not the password")
    assert info.value.code == WRONG_PASSWORD
    assert legacy_server.query("EXISTS TABLE telemetry.traces").strip() == "1"


@pytest.mark.clickhouse
def test_legacy_allow_ddl_url_setting_is_the_known_18_16_hole(legacy_server: ClickHouseServer) -> None:
    """legacy-agent.xml says a client holding the password can pass allow_ddl=1 as a URL parameter: true on
    18.16 (no settings constraints). If a server ever refuses it, update that comment and deploy/README.md."""
    legacy_server.query("CREATE TABLE telemetry.scratch (x UInt8) ENGINE = Memory")
    as_agent(legacy_server, "DROP TABLE telemetry.scratch", allow_ddl=1)
    assert legacy_server.query("EXISTS TABLE telemetry.scratch").strip() == "0"
    assert "allow_ddl=1 as an HTTP URL parameter" in (USERS / "legacy-agent.xml").read_text()


# --------------------------------------------------------------------------------------------- modern
@pytest.fixture(scope="module")
def chdb(chdb_session_factory: Callable[..., Any]) -> Callable[[str], str]:
    session = chdb_session_factory("deploy-users")
    return lambda sql: str(session.query(sql, "TabSeparatedRaw"))


def _literal(sql: str) -> str:
    return "'" + sql.replace("\\", "\\\\").replace("'", "\\'") + "'"


@pytest.mark.chdb
@pytest.mark.parametrize("template", ["modern-agent.sql", "modern-grafana.sql"])
def test_modern_user_sql_parses_on_chdb(chdb: Callable[[str], str], template: str) -> None:
    statements = split_statements(rendered(template))
    assert statements[0].startswith(f"CREATE USER IF NOT EXISTS {USER} IDENTIFIED WITH sha256_hash BY '")
    for statement in statements:
        formatted = chdb(f"SELECT formatQuery({_literal(statement)})").strip()
        assert formatted.split()[0] in ("CREATE", "GRANT"), formatted
    with pytest.raises(RuntimeError, match=r"SYNTAX_ERROR|Syntax error"):  # the check can fail
        chdb(f"SELECT formatQuery({_literal('GRANT INSERT ON telemetry.traces TOO ' + USER)})")


@pytest.mark.chdb
def test_modern_agent_grants_are_exactly_insert_and_select_on_its_tables() -> None:
    statements = split_statements(rendered("modern-agent.sql"))
    grants = sorted(s for s in statements if s.startswith("GRANT"))
    assert grants == [
        f"GRANT INSERT, SELECT ON telemetry.logs TO {USER}",
        f"GRANT INSERT, SELECT ON telemetry.metrics TO {USER}",
        f"GRANT INSERT, SELECT ON telemetry.traces TO {USER}",
        f"GRANT SELECT ON telemetry.schema_migrations TO {USER}",
    ]
    grafana = sorted(s for s in split_statements(rendered("modern-grafana.sql")) if s.startswith("GRANT"))
    assert grafana == [f"GRANT SELECT ON telemetry.{t} TO {USER}" for t in ("logs", "metrics", "traces")]


@pytest.mark.chdb
def test_chdb_cannot_create_users_so_the_modern_grants_are_only_parsed(chdb: Callable[[str], str]) -> None:
    """Why the modern SQL is not executed here. If chDB ever can, execute the grants for real instead."""
    with pytest.raises(RuntimeError, match=r"ACCESS_DENIED|ACCESS_STORAGE_FOR_INSERTION_NOT_FOUND"):
        chdb(split_statements(rendered("modern-agent.sql"))[0])
