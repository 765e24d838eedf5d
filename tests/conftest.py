"""Shared pytest fixtures. Sections: run mode / ClickHouse server / chdb (embedded engine).

Append new fixtures in a section of their own at the end; keep the ones here stable.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # make tests/clickhouse_server.py importable

from clickhouse_server import EXTERNAL_URL_ENV, ClickHouseServer, ExternalClickHouse, make_server


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


IN_CI = _env_flag("CI")
FULL_MATRIX = os.environ.get("AUTOMAGIK_TELEMETRY_FULL_MATRIX") == "1"


# ---- run mode -----------------------------------------------------------------------------------
def pytest_report_header(config: pytest.Config) -> list[str]:
    server = os.environ.get(EXTERNAL_URL_ENV) or "private 18.16 server"
    return [f"automagik-telemetry: CI={IN_CI} full_matrix={FULL_MATRIX} clickhouse={server}"]


@pytest.fixture(scope="session")
def crash_matrix_size() -> int:
    """How many cases a `slow` crash matrix runs: 200 with AUTOMAGIK_TELEMETRY_FULL_MATRIX=1, else 12.

    Tests marked `slow` always run (never skipped); they use this to bound themselves.
    """
    return 200 if FULL_MATRIX else 12


# ---- ClickHouse 18.16 server (tests/clickhouse_server.py) ---------------------------------------
@pytest.fixture(scope="session")
def clickhouse() -> Iterator[ClickHouseServer | ExternalClickHouse]:
    """One real ClickHouse server for the whole session (or the external one from the env)."""
    server = make_server()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(autouse=True)
def _clickhouse_left_running(request: pytest.FixtureRequest) -> Iterator[None]:
    """After any test that used `clickhouse`, resume/restart it if the test left it paused or dead."""
    yield
    server = getattr(request.node, "funcargs", {}).get("clickhouse")
    if server is not None:
        server.ensure_running()


@pytest.fixture
def clickhouse_db(clickhouse: ClickHouseServer | ExternalClickHouse) -> Iterator[str]:
    """A fresh, uniquely named database on `clickhouse`; dropped after the test."""
    with clickhouse.scratch_database() as name:
        yield name


# ---- chdb (chdb-core, the embedded modern engine) -----------------------------------------------
@pytest.fixture(scope="session")
def chdb_session_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., object]]:
    """Returns ``make(name="db") -> chdb.session.Session`` on a fresh dir under the session's tmp.

    chdb runs ONE embedded server per process, bound to one path at a time: opening a session on a
    second path while another is open raises "EmbeddedServer already initialized with path ...".
    So `make` closes the session it made before. Missing chdb: skip locally, FAIL under CI.
    """
    try:
        import chdb.session
    except ImportError as e:
        if IN_CI:
            pytest.fail(f"chdb-core is not importable under CI ({e}); scripts/bootstrap.sh installs it")
        pytest.skip(f"chdb-core not installed ({e})")

    current: list[object] = []

    def make(name: str = "db") -> chdb.session.Session:
        while current:
            current.pop().close()
        session = chdb.session.Session(str(tmp_path_factory.mktemp("chdb") / name))
        current.append(session)
        return session

    yield make
    while current:
        current.pop().close()


#: Test files that need no server, no root and no agent process (`make unit` runs them in seconds).
UNIT_FILES = frozenset(
    {
        "test_architecture.py",
        "test_async_insert_settings.py",
        "test_cli_help.py",
        "test_failover_unit.py",
        "test_client_attributes.py",
        "test_client_config.py",
        "test_client_transport_parts.py",
        "test_logs.py",
        "test_metrics_unit.py",
        "test_otlp_decode.py",
        "test_redact_rules.py",
        "test_insert_policy.py",
        "test_report_unit.py",
        "test_schema_cluster_render.py",
        "test_shipper_errors.py",
        "test_shipper_unit.py",
        "test_states.py",
        "test_systemd_protocols_unit.py",
        "test_transform.py",
        "test_v014_config.py",
        "test_v014_events.py",
        "test_v014_opt_in.py",
        "test_v014_privacy.py",
        "test_wal_model.py",
        "test_wal_recovery.py",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in UNIT_FILES:
            item.add_marker(pytest.mark.unit)
