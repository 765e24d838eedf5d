"""The supervisor and its shipper child against the real ClickHouse 18.16 server (the `clickhouse` fixture):
a killed shipper loses nothing, SIGTERM abandons a stuck batch within its deadline and keeps it in the
WAL, SIGHUP changes the batch size of a running shipper."""

from __future__ import annotations

import gzip
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from agent_process import AgentProcess, RawClient, wait_until
from shipper.fault_proxy import PASS, FaultProxy, Seen, delay
from shipper.shipper_helpers import RESOURCE, apply_schema, count, select_rows, span

from automagik_telemetry_agent.clickhouse.rows import Profile, parse_resource, transform_span

pytestmark = pytest.mark.clickhouse

COMPARED = (
    "trace_id",
    "span_id",
    "parent_span_id",
    "span_name",
    "span_kind",
    "timestamp_ns",
    "duration_ns",
    "status_code",
    "service_name",
    "hostname",
    "attribute_keys",
    "attribute_values",
    "resource_keys",
    "resource_values",
)


def _ship_settings(endpoint: str, database: str, **more: Any) -> dict[str, Any]:
    return {
        "sink": "clickhouse",
        "clickhouse_endpoint": endpoint,
        "database": database,
        "batch_wait": "100ms",
        "retry_base": "100ms",
        "retry_max": "500ms",
        **more,
    }


def _send_spans(client: RawClient, numbers: range, first_seq: int = 1) -> int:
    """One RECORDS message per span (so batch sizes count spans); the last seq used."""
    seq = first_seq - 1
    for seq, i in enumerate(numbers, start=first_seq):
        client.send_records([span(i)], seq=seq, resource=RESOURCE)
    return seq


def _rows_per_insert(seen: list[Seen]) -> list[int]:
    out = []
    for s in seen:
        body = gzip.decompress(s.body) if s.headers.get("content-encoding") == "gzip" else s.body
        out.append(body.count(b"\n"))
    return out


def test_killed_shipper_every_span_reaches_clickhouse_exactly_as_sent(
    supervised: Callable[..., AgentProcess], clickhouse: Any, clickhouse_db: str
) -> None:
    apply_schema(clickhouse, clickhouse_db)
    agent = supervised(**_ship_settings(clickhouse.url, clickhouse_db, batch_size=200)).start()
    with RawClient(agent.socket_path) as client:
        assert client.wait_ack(_send_spans(client, range(0, 1500)), timeout=20)
        wait_until(lambda: count(clickhouse, clickhouse_db) > 0, 30, message="the first rows")
        old = agent.child_pid("shipper")
        os.kill(old, signal.SIGKILL)  # most likely mid-stream: the WAL holds the rest
        assert client.wait_ack(_send_spans(client, range(1500, 3000), first_seq=1501), timeout=20)
    wait_until(lambda: agent.children().get("shipper") not in (None, old), 15, message="a new shipper")
    distinct = f"SELECT uniqExact(span_id) FROM {clickhouse_db}.traces"
    wait_until(lambda: int(clickhouse.query(distinct)) == 3000, 60, message="every span in ClickHouse")
    resource = parse_resource(RESOURCE)
    expected = {}
    for i in range(3000):
        row = transform_span(span(i), resource, Profile.LEGACY)
        expected[row["span_id"]] = tuple(row[k] for k in COMPARED)
    stored = {r["span_id"]: tuple(r[k] for k in COMPARED) for r in select_rows(clickhouse, clickhouse_db)}
    assert stored == expected  # every span, with every compared column exactly as sent
    # 18.16 has no dedup token: a batch in flight at the kill may be stored twice (at-least-once), never more.
    assert count(clickhouse, clickhouse_db) - 3000 <= 200
    assert agent.terminate() == 0


def test_sigterm_abandons_a_stuck_batch_within_the_deadline_exits_0_and_the_wal_keeps_it(
    supervised: Callable[..., AgentProcess], clickhouse: Any, clickhouse_db: str
) -> None:
    apply_schema(clickhouse, clickhouse_db)
    with FaultProxy(clickhouse.url) as proxy:
        proxy.mode = delay(30)  # ClickHouse that never answers an INSERT in time
        agent = supervised(**_ship_settings(proxy.url, clickhouse_db, stop_timeout="2s")).start()
        with RawClient(agent.socket_path) as client:
            assert client.wait_ack(_send_spans(client, range(0, 20)))
            wait_until(lambda: proxy.inserts(), 15, message="an INSERT in flight")
            last = _send_spans(client, range(20, 30), first_seq=21)  # sent, not yet acknowledged
            started = time.monotonic()
            agent.signal(signal.SIGTERM)
            assert client.wait_ack(last, timeout=5)  # ingest drained them before it exited
            assert agent.wait_exit(15) == 0
        elapsed = time.monotonic() - started
        assert elapsed < 2 + 2, f"took {elapsed:.1f} s (agent.stop_timeout 2 s + the supervisor's 2 s margin)"
        assert "abandoning the batch in flight" in agent.stderr_text
        assert count(clickhouse, clickhouse_db) == 0
        assert len(agent.dump()) == 30  # nothing committed: every span still in the WAL
        proxy.mode = PASS
        agent.start()
        wait_until(lambda: count(clickhouse, clickhouse_db) >= 30, 30, message="the kept spans, after a restart")
        assert int(clickhouse.query(f"SELECT uniqExact(span_id) FROM {clickhouse_db}.traces")) == 30
        assert agent.terminate() == 0


def test_sighup_applies_a_changed_batch_size_to_the_running_shipper(
    supervised: Callable[..., AgentProcess], clickhouse: Any, clickhouse_db: str, tmp_path: Path
) -> None:
    apply_schema(clickhouse, clickhouse_db)
    with FaultProxy(clickhouse.url) as proxy:
        agent = supervised(**_ship_settings(proxy.url, clickhouse_db))
        Path(agent.config_path).write_text("[shipper]\nbatch_size = 10\n")
        agent.start()
        shipper = agent.child_pid("shipper")
        with RawClient(agent.socket_path) as client:
            # Hold one INSERT for a second so that everything after it is in the WAL before the next batch
            # is collected: the batches then come out at the full batch size.
            proxy.push(delay(1.0))
            seq = _send_spans(client, range(0, 1))
            wait_until(lambda: proxy.inserts(), 15, message="the held INSERT")
            seq = _send_spans(client, range(1, 31), first_seq=seq + 1)
            wait_until(lambda: count(clickhouse, clickhouse_db) == 31, 30, message="31 rows")
            before = _rows_per_insert(proxy.inserts())

            Path(agent.config_path).write_text("[shipper]\nbatch_size = 25\n")
            agent.signal(signal.SIGHUP)
            wait_until(
                lambda: "applied shipper.batch_size = 25" in agent.stderr_text,
                10,
                message="the shipper to apply the new batch size",
            )
            assert "configuration reloaded: shipper.batch_size = 25" in agent.stderr_text
            proxy.push(delay(1.0))
            seq = _send_spans(client, range(31, 32), first_seq=seq + 1)
            wait_until(lambda: len(proxy.inserts()) > len(before), 15, message="the held INSERT")
            _send_spans(client, range(32, 82), first_seq=seq + 1)
            wait_until(lambda: count(clickhouse, clickhouse_db) == 82, 30, message="82 rows")
            after = _rows_per_insert(proxy.inserts())[len(before) :]
        assert max(before) == 10 and sum(before) == 31
        assert max(after) == 25 and sum(after) == 51
        assert agent.children()["shipper"] == shipper  # applied live: no restart
        assert agent.terminate() == 0


def test_a_slow_insert_within_its_timeouts_is_not_taken_for_a_hang(
    supervised: Callable[..., AgentProcess], clickhouse: Any, clickhouse_db: str
) -> None:
    """heartbeat_timeout 2 s, an INSERT that takes 4 s (read_timeout 10 s): the wait is declared, so the
    shipper is not killed, while its main thread waits for that INSERT with the next batch ready."""
    apply_schema(clickhouse, clickhouse_db)
    with FaultProxy(clickhouse.url) as proxy:
        agent = supervised(
            **_ship_settings(proxy.url, clickhouse_db, batch_size=10, heartbeat_timeout="2s", read_timeout="10s")
        )
        agent.start()
        shipper = agent.child_pid("shipper")
        proxy.push(delay(4.0))
        with RawClient(agent.socket_path) as client:
            assert client.wait_ack(_send_spans(client, range(0, 30)))
        wait_until(lambda: count(clickhouse, clickhouse_db) == 30, 30, message="30 rows after the slow INSERT")
        assert agent.children()["shipper"] == shipper
        assert "is hung" not in agent.stderr_text
        assert agent.terminate() == 0
