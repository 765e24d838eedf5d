"""A ClickHouse outage under a steady load, against the real 18.16 server (the `clickhouse` fixture): once the
server answers again the shipper writes to it within about a second (its backoff, grown to many seconds
meanwhile, is cut short by the probe), it probes at about one request per second while the server is down,
and every acknowledged span is stored exactly once.

How it is measured (run with ``-s`` to see the numbers): a thread of the test polls ``/ping`` every 10 ms
and notes when the restarted server first answers; the agent runs at ``log_level = debug``, so its stderr
has a timestamped line for the probe that answered ("answers its probe: retrying now"), for the first
accepted insert ("accepts inserts again"), for every failed insert ("still failing", or the warning) and,
from urllib3, for every connection the shipper opens ("Starting new HTTP connection": while the server is
down every request needs one, so these count the requests it sent).
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from agent_process import AgentProcess, wait_until
from steady_load import SteadyLoad

from shipper.shipper_helpers import apply_schema, count

pytestmark = pytest.mark.clickhouse

OUTAGE_S = 24.0  # long enough for the backoff (1 s base, doubling, full jitter) to reach many seconds
RECOVERY_BOUND_S = 2.0  # the probe interval (1 s) plus a margin for the probe, the re-detection and the insert
VISIBLE_MARGIN_S = 0.5  # from the shipper's accepted insert to a SELECT in the test seeing its rows
_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (\w+)\[\d+\] (\w+) ([\w.]+): (.*)$")


@dataclass(frozen=True)
class LogLine:
    time: float  # epoch seconds (the agent's local-time stamp, millisecond precision)
    process: str
    level: str
    logger: str
    message: str


def log_lines(stderr: str) -> list[LogLine]:
    out = []
    for raw in stderr.splitlines():
        m = _LINE.match(raw)
        if m:
            stamp = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.append(LogLine(stamp, m.group(2), m.group(3), m.group(4), m.group(5)))
    return out


def final_stats(lines: list[LogLine]) -> dict[str, int]:
    """The integer stats of the traces shipper (the one that shipped most rows) from its "shipper stopped"
    line (ShipperStats.to_dict())."""
    found = [
        {k: int(v) for k, v in re.findall(r"'(\w+)': (\d+)\b", ln.message)}
        for ln in lines
        if ln.message.startswith("shipper stopped: ")
    ]
    assert found, "no 'shipper stopped' line"
    return max(found, key=lambda s: s.get("rows", 0))


def _s(seconds: float | None) -> str:
    return "(not seen)" if seconds is None else f"+{seconds:.3f} s"


def first_time(fn: Any, timeout: float, interval: float = 0.01) -> float:
    """The wall-clock time at which ``fn()`` first returned a truthy value (polled every ``interval``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if fn():
                return time.time()
        except Exception:
            pass
        time.sleep(interval)
    raise AssertionError(f"{fn!r} not true within {timeout} s")


class Watch(threading.Thread):
    """Runs :func:`first_time` in a thread (started before the event it waits for)."""

    def __init__(self, fn: Any, timeout: float) -> None:
        super().__init__(daemon=True)
        self.fn, self.timeout = fn, timeout
        self.at: float | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.at = first_time(self.fn, self.timeout)
        except BaseException as exc:
            self.error = exc

    def result(self) -> float:
        self.join(self.timeout + 5)
        if self.error is not None:
            raise self.error
        assert self.at is not None
        return self.at


def test_after_an_outage_the_shipper_writes_within_two_seconds_of_the_server_answering_and_loses_nothing(
    clickhouse: Any, clickhouse_db: str, tmp_path: Path
) -> None:
    if not getattr(clickhouse, "supports_process_control", False):
        pytest.skip("an external ClickHouse server cannot be stopped by the test")
    apply_schema(clickhouse, clickhouse_db)
    agent = AgentProcess(
        tmp_path / "agent",
        sink="clickhouse",
        clickhouse_endpoint=clickhouse.url,
        database=clickhouse_db,
        batch_wait="250ms",
        probe_interval="1s",
        insert_policy="fixed",  # only the shipper's inserts, detections and probes reach the server
        log_level="debug",
    ).start()
    try:
        with SteadyLoad(agent.socket_path) as load:
            wait_until(lambda: count(clickhouse, clickhouse_db) > 500, 30, message="the first rows shipped")
            clickhouse.stop()
            stopped_at = time.time()
            time.sleep(OUTAGE_S)
            answered = Watch(lambda: clickhouse.ping(timeout=0.5), 60)
            answered.start()
            clickhouse.start()
            pinged_at = answered.result()
            before = count(clickhouse, clickhouse_db)  # what was stored before the outage
            counted_at = time.time()
            rows_at = first_time(lambda: count(clickhouse, clickhouse_db) > before, 30)
            time.sleep(2)  # more spans after the recovery
            sent = load.stop()
        distinct = f"SELECT uniqExact(span_id) FROM {clickhouse_db}.traces"
        wait_until(lambda: int(clickhouse.query(distinct)) == sent, 60, message=f"all {sent} spans stored")
        time.sleep(1)  # a duplicate would show up by now
        stored, unique = count(clickhouse, clickhouse_db), int(clickhouse.query(distinct))
    finally:
        agent.cleanup()
    lines = [ln for ln in log_lines(agent.stderr_text) if ln.process == "shipper"]
    outage = [ln for ln in lines if stopped_at <= ln.time < pinged_at]
    after = [ln for ln in lines if ln.time >= pinged_at]
    probed = next((ln.time - pinged_at for ln in after if "answers its probe: retrying now" in ln.message), None)
    # The shipper's first success: an insert accepted, or the batch in flight at the stop found stored by the
    # check that follows a broken connection (18.16 has no dedup tokens) -- then not sent again.
    accepted = next(
        (
            ln.time - pinged_at
            for ln in after
            if "accepts inserts again" in ln.message or "had stored the batch: not resending it" in ln.message
        ),
        None,
    )
    connections = [ln.time for ln in outage if "Starting new HTTP connection" in ln.message]
    failed_inserts = [ln for ln in outage if "still failing" in ln.message or "data is kept in the WAL" in ln.message]
    warnings = [ln.message for ln in outage if ln.level == "WARNING"]
    down_s = pinged_at - stopped_at
    # The test's first count may come after the shipper's first insert (the probe raced it): then the rows it
    # waited for are the next batch's, and only the shipper's own time counts. Nor does the time the rows
    # were seen when the first success was the batch found stored (no new rows then).
    inserted = next((ln.time - pinged_at for ln in after if "accepts inserts again" in ln.message), None)
    first_was_insert = inserted is not None and inserted == accepted
    rows_s = rows_at - pinged_at if first_was_insert and pinged_at + inserted > counted_at else None
    print(
        f"\noutage {down_s:.1f} s: {len(connections)} requests ({len(connections) / down_s:.2f}/s), "
        f"{len(failed_inserts)} failed inserts, {len(warnings)} warnings. After the server answered /ping: its "
        f"probe answered at {_s(probed)}, its first success at {_s(accepted)}, first new rows seen at "
        f"{_s(rows_s)}. {sent} spans sent, {stored} rows, {unique} distinct ({before} stored before the outage); "
        f"shipper stats { {k: v for k, v in final_stats(lines).items() if 'probe' in k or 'retries' in k} }"
    )
    # Exactly once: every acknowledged span, none twice.
    assert unique == sent and stored == sent, (sent, stored, unique)
    # Prompt: within ~1 s of the server answering (the probe interval), not at the end of a long backoff.
    # (The probe usually sees the server first; when a backoff happens to end within the same probe interval
    # the batch's own retry does, and there is no probe line: the bound on the first success is what counts.)
    assert accepted is not None, "\n".join(ln.message for ln in after[:40])
    assert accepted < RECOVERY_BOUND_S, accepted
    if rows_s is not None:
        assert rows_s < RECOVERY_BOUND_S + VISIBLE_MARGIN_S, rows_s
    # The backoff grew: a handful of failed inserts in the whole outage, not one per second...
    assert 2 <= len(failed_inserts) <= 12, [ln.message[:80] for ln in failed_inserts]
    # ...and the probes kept to about one request a second (each failed insert also re-detects: two more).
    assert len(connections) <= down_s * 1.0 + 2 * len(failed_inserts) + 3, (len(connections), down_s)
    # One warning for the outage, not one per attempt.
    assert len(warnings) <= 3, warnings
    # The shipper's own count (its stats, logged as it stops): about one probe per second of outage (at
    # least one per three seconds: it probed rather than waited), and the one that answered, if it was a
    # probe that saw the server first, ended the backoff.
    stats = final_stats(lines)
    assert down_s / 3 <= stats["probes"] <= down_s + 2, stats
    assert stats["probe_recoveries"] >= (1 if probed is not None else 0), stats
