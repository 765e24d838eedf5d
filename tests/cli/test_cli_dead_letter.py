"""`dead-letter list|replay` against the real ClickHouse server, on entries the real shipper wrote.

The dead letters come from a table whose ``status_message`` column is a UInt8: the server refuses
the rows whose message is not a small whole number ("1.5", "boom"), the shipper bisects and
dead-letters them; a span with a broken trace id fails the transform. Then the table is fixed and
the CLI replays.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from agent_process import run_cli
from shipper.shipper_helpers import ShipperThread, count, fast_options, make_sink, span, span_id, wait_for, write_wal

from automagik_telemetry_agent.clickhouse.rows import Profile
from automagik_telemetry_agent.clickhouse.schema import render_migrations
from automagik_telemetry_agent.shipper.dead_letter import DeadLetter, DeadLetterEntry
from automagik_telemetry_agent.shipper.loop import Shipper
from automagik_telemetry_agent.wal import read_cursor

pytestmark = pytest.mark.clickhouse

N = 20


def produce_dead_letters(
    clickhouse: Any, db: str, tmp_path: Path, messages: dict[int, str], bad_trace: frozenset[int] = frozenset()
) -> list[dict[str, Any]]:
    """Ship N spans into a table refusing non-numeric status messages; return the dead-letter entries."""
    (ddl,) = render_migrations(Profile.LEGACY, db, "traces", 0)[0].statements
    clickhouse.query(ddl.replace("status_message   String", "status_message   UInt8"))
    lines = [span(i, status={"code": 2, "message": messages.get(i, str(i % 10))}) for i in range(N)]
    for i in bad_trace:
        lines[i] = span(i, traceId="not-a-trace-id")
    wal = tmp_path / "wal"
    seqs = write_wal(wal, [lines])
    shipper = Shipper(str(wal), make_sink(clickhouse, db), fast_options(tmp_path))
    with ShipperThread(shipper) as t:
        wait_for(lambda: read_cursor(str(wal)).seq == seqs[-1], 20, "the batch committed after bisection")
        t.stop()
    entries = DeadLetter(str(tmp_path / "dead-letter")).read()
    assert len(entries) == len(messages) + len(bad_trace)
    return entries


def cli(clickhouse: Any, db: str, tmp_path: Path, *args: str) -> Any:
    return run_cli(
        "dead-letter",
        *args,
        "--config",
        "/dev/null",
        "--wal-dir",
        str(tmp_path / "wal"),
        "--clickhouse-endpoint",
        clickhouse.url,
        "--database",
        db,
    )


def span_ids(clickhouse: Any, db: str) -> set[str]:
    return set(clickhouse.query(f"SELECT span_id FROM {db}.traces FORMAT TabSeparated").split())


def test_list_shows_every_entry_with_reason_and_code(clickhouse: Any, clickhouse_db: str, tmp_path: Path) -> None:
    produce_dead_letters(clickhouse, clickhouse_db, tmp_path, {3: "boom", 11: "boom"}, frozenset({7}))
    result = cli(clickhouse, clickhouse_db, tmp_path, "list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["time", "reason", "code", "error"]
    rejected = [line for line in lines if " rejected " in line]
    assert len(rejected) == 2 and all(" 27  Code: 27" in line for line in rejected)
    assert any("transform" in line and "invalid traceId" in line for line in lines)
    assert all(len(line.split("  error")[0]) < 200 for line in lines)  # errors cut to 80 characters
    assert lines[-1].startswith("3 entries in ") and "(2 rejected, 1 transform)" in lines[-1]
    as_json = json.loads(cli(clickhouse, clickhouse_db, tmp_path, "list", "--json").stdout)
    assert as_json["count"] == 3 and {e["reason"] for e in as_json["entries"]} == {"rejected", "transform"}


def test_replay_after_fixing_the_table_lands_every_row_and_empties_the_file(
    clickhouse: Any, clickhouse_db: str, tmp_path: Path
) -> None:
    bad = {2: "boom", 9: "1.5", 15: "boom"}
    produce_dead_letters(clickhouse, clickhouse_db, tmp_path, bad)
    assert span_ids(clickhouse, clickhouse_db) == {span_id(i) for i in range(N) if i not in bad}

    refused = cli(clickhouse, clickhouse_db, tmp_path, "replay")  # table not fixed yet: rows stay
    assert refused.returncode == 1
    assert "replayed 0 of 3" in refused.stdout
    assert "3 kept: ClickHouse still refuses it (code 27), e.g. Code: 27" in refused.stdout
    assert len(DeadLetter(str(tmp_path / "dead-letter")).read()) == 3

    clickhouse.query(f"ALTER TABLE {clickhouse_db}.traces MODIFY COLUMN status_message String")
    dry = cli(clickhouse, clickhouse_db, tmp_path, "replay", "--dry-run")
    assert dry.returncode == 0 and "would send 3 of 3" in dry.stdout
    assert count(clickhouse, clickhouse_db) == N - 3  # a dry run inserts nothing

    result = cli(clickhouse, clickhouse_db, tmp_path, "replay")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "replayed 3 of 3 dead-lettered spans" in result.stdout and "0 left" in result.stdout
    assert span_ids(clickhouse, clickhouse_db) == {span_id(i) for i in range(N)}
    assert count(clickhouse, clickhouse_db) == N  # each exactly once
    rows = clickhouse.query(
        f"SELECT status_message FROM {clickhouse_db}.traces WHERE span_id IN "
        f"('{span_id(2)}', '{span_id(9)}') ORDER BY status_message FORMAT TabSeparated"
    )
    assert rows.split() == ["1.5", "boom"]  # the rows as the shipper sent them
    assert (tmp_path / "dead-letter" / "dead-letter.jsonl").read_bytes() == b""
    again = cli(clickhouse, clickhouse_db, tmp_path, "replay")
    assert again.returncode == 0 and "nothing to replay" in again.stdout


def test_replay_keeps_rows_still_refused_and_transform_failures(
    clickhouse: Any, clickhouse_db: str, tmp_path: Path
) -> None:
    produce_dead_letters(clickhouse, clickhouse_db, tmp_path, {4: "1.5", 12: "boom", 13: "2.25"}, frozenset({6}))
    clickhouse.query(f"ALTER TABLE {clickhouse_db}.traces MODIFY COLUMN status_message Float64")  # "boom" still bad
    result = cli(clickhouse, clickhouse_db, tmp_path, "replay")
    assert result.returncode == 1
    assert "replayed 2 of 4" in result.stdout and "2 left" in result.stdout
    assert "1 kept: ClickHouse still refuses it (code " in result.stdout
    assert "1 kept: transform still fails: invalid traceId" in result.stdout
    assert {span_id(4), span_id(13)} <= span_ids(clickhouse, clickhouse_db)
    left = DeadLetter(str(tmp_path / "dead-letter")).read()
    assert sorted((e["reason"], e.get("row", {}).get("span_id")) for e in left) == [
        ("rejected", span_id(12)),
        ("transform", None),
    ]


def test_replay_keeps_entries_the_shipper_appends_meanwhile(
    clickhouse: Any,
    clickhouse_db: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The shipper appends (under the directory lock) while a replay is inserting: nothing is lost, and the
    shipper is not blocked by the replay's network round trips (it would deadlock here if it were)."""
    from automagik_telemetry_agent.clickhouse.http import ClickHouseHttpSink

    produce_dead_letters(clickhouse, clickhouse_db, tmp_path, {1: "boom", 5: "boom"})
    clickhouse.query(f"ALTER TABLE {clickhouse_db}.traces MODIFY COLUMN status_message String")
    shipper_side = DeadLetter(str(tmp_path / "dead-letter"))
    real_insert = ClickHouseHttpSink.insert

    def insert_while_shipper_appends(self: ClickHouseHttpSink, body: bytes, token: str | None = None) -> Any:
        writer = threading.Thread(
            target=shipper_side.write,
            daemon=True,
            args=([DeadLetterEntry("transform", "appended meanwhile", 99, raw=b"x")],),
        )
        writer.start()
        writer.join(10)
        assert not writer.is_alive(), "the shipper's append waited for the replay"
        return real_insert(self, body, token)

    monkeypatch.setattr(ClickHouseHttpSink, "insert", insert_while_shipper_appends)
    from automagik_telemetry_agent.cli import build_parser

    parsed = build_parser().parse_args(
        [
            "dead-letter",
            "replay",
            "--config",
            "/dev/null",
            "--wal-dir",
            str(tmp_path / "wal"),
            "--clickhouse-endpoint",
            clickhouse.url,
            "--database",
            clickhouse_db,
        ]
    )
    code = parsed.func(parsed)
    left = shipper_side.read()
    assert [e["error"] for e in left] == ["appended meanwhile"]  # the two replayed rows left, the new one kept
    assert code == 0  # every entry of this replay landed; the new one was not part of it
    out = capsys.readouterr().out
    assert "replayed 2 of 2 " in out and "0 left in " in out
    assert "(plus 1 added by the shipper meanwhile, not replayed)" in out
    assert count(clickhouse, clickhouse_db) == N


def test_replay_when_clickhouse_is_unreachable_changes_nothing(
    clickhouse: Any, clickhouse_db: str, tmp_path: Path
) -> None:
    produce_dead_letters(clickhouse, clickhouse_db, tmp_path, {8: "boom"})
    before = (tmp_path / "dead-letter" / "dead-letter.jsonl").read_bytes()
    result = run_cli(
        "dead-letter",
        "replay",
        "--config",
        "/dev/null",
        "--wal-dir",
        str(tmp_path / "wal"),
        "--clickhouse-endpoint",
        "http://127.0.0.1:9",
        "--database",
        clickhouse_db,
        "--connect-timeout",
        "1s",
    )
    assert result.returncode == 1 and "nothing replayed" in result.stderr and "unavailable" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert (tmp_path / "dead-letter" / "dead-letter.jsonl").read_bytes() == before


def test_list_without_dead_letters(tmp_path: Path) -> None:
    result = run_cli("dead-letter", "list", "--config", "/dev/null", "--wal-dir", str(tmp_path / "wal"))
    assert result.returncode == 0 and "no dead-lettered spans" in result.stdout
