"""Which async_insert settings an INSERT carries, by server version (clickhouse.async_insert)."""

from __future__ import annotations

import logging

import pytest

from automagik_telemetry_agent.clickhouse.http import ClickHouseHttpSink, _version_parts
from automagik_telemetry_agent.clickhouse.sink import Capabilities


def _sink(version: str, async_insert: str = "off") -> ClickHouseHttpSink:
    sink = ClickHouseHttpSink("http://127.0.0.1:1", "db", "t", async_insert=async_insert)
    parts = _version_parts(version)
    sink.capabilities = Capabilities(
        version,
        zstd=parts >= (21, 1),
        dedup_token=parts >= (22, 2),
        async_insert=parts >= (21, 11),
        async_insert_with_token=parts >= (26, 3, 17, 65),
    )
    return sink


def test_a_server_without_async_insert_gets_no_such_setting() -> None:
    params = _sink("18.16.1", "on").insert_params("tok")
    assert not any(k.startswith("async") or k.startswith("wait_for") for k in params)


@pytest.mark.parametrize("version", ["21.11.2.1", "24.8.4.13", "26.3.17.65", "26.9.1.1"])
def test_off_pins_synchronous_inserts_on_every_server_that_knows_the_setting(version: str) -> None:
    assert _sink(version).insert_params("tok")["async_insert"] == "0"


def test_on_asks_for_async_inserts_that_answer_after_the_flush_where_tokens_are_safe() -> None:
    params = _sink("26.3.17.65", "on").insert_params("tok")
    assert params["async_insert"] == "1" and params["wait_for_async_insert"] == "1"
    assert params["async_insert_deduplicate"] == "1" and params["insert_deduplication_token"] == "tok"


def test_on_stays_synchronous_below_the_token_fix_and_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    sink = _sink("26.3.16.4", "on")
    with caplog.at_level(logging.WARNING):
        assert sink.insert_params("a")["async_insert"] == "0"
        assert sink.insert_params("b")["async_insert"] == "0"
    assert sum("26.3.17.65" in r.getMessage() for r in caplog.records) == 1


def test_versions_compare_by_every_number() -> None:
    assert _version_parts("26.3.17.65") > _version_parts("26.3.9.100")
    assert _version_parts("24.8.1.2-lts") == (24, 8, 1, 2)
    assert _version_parts("23.8-beta.x") == (23, 8)
    assert _version_parts("garbage") == ()


def test_an_unknown_async_insert_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="async_insert"):
        ClickHouseHttpSink("http://127.0.0.1:1", "db", "t", async_insert="maybe")
