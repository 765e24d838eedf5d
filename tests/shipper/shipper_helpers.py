"""Helpers shared by the shipper tests: WAL writing, a fast-retry shipper in a thread, ClickHouse reads."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import orjson
from agent_process import wait_until

from automagik_telemetry_agent.clickhouse.http import ClickHouseHttpSink
from automagik_telemetry_agent.clickhouse.schema import apply, pick_profile
from automagik_telemetry_agent.shipper.loop import Shipper
from automagik_telemetry_agent.shipper.options import ShipperOptions
from automagik_telemetry_agent.wal import WalOptions, WalWriter

RESOURCE = orjson.dumps(
    {
        "attributes": [
            {"key": "service.name", "value": {"stringValue": "svc"}},
            {"key": "host.name", "value": {"stringValue": "host-1"}},
            {"key": "custom.res", "value": {"stringValue": "r"}},
        ]
    }
)
BASE_NS = 1_700_000_000_000_000_000


def span(i: int, **overrides: Any) -> bytes:
    """A valid OTLP span line numbered ``i`` (span_id derived from i, unique per i)."""
    obj: dict[str, Any] = {
        "traceId": f"{i + 1:032x}",
        "spanId": f"{i + 1:016x}",
        "name": f"op-{i % 7}",
        "kind": 2,
        "startTimeUnixNano": str(BASE_NS + i * 1000),
        "endTimeUnixNano": str(BASE_NS + i * 1000 + 500 + i),
        "attributes": [{"key": "i", "value": {"intValue": str(i)}}, {"key": "tag", "value": {"stringValue": f"t{i}"}}],
        "status": {"code": 1},
    }
    obj.update(overrides)
    return orjson.dumps(obj)


def span_id(i: int) -> str:
    return f"{i + 1:016x}"


def write_wal(wal_dir: str | Path, records: list[list[bytes]], resource: bytes = RESOURCE) -> list[int]:
    """Append one WAL record per list of span lines; return their seqs. The writer is closed after."""
    writer = WalWriter(str(wal_dir), WalOptions(min_free_bytes=0, segment_bytes=1024 * 1024)).open()
    try:
        seqs = [writer.append(resource + b"\n" + b"".join(s + b"\n" for s in spans), len(spans)) for spans in records]
        writer.flush()
        writer.sync()
    finally:
        writer.close()
    return seqs


def fast_options(tmp_path: Path, **kw: Any) -> ShipperOptions:
    defaults: dict[str, Any] = dict(
        batch_wait_s=0.1,
        poll_interval_s=0.01,
        backoff_base_s=0.05,
        backoff_cap_s=0.3,
        config_retry_s=0.2,
        stop_deadline_s=2.0,
        state_dir=str(tmp_path / "shipper"),
        dead_letter_dir=str(tmp_path / "dead-letter"),
    )
    defaults.update(kw)
    return ShipperOptions(**defaults)


def make_sink(clickhouse: Any, database: str, table: str = "traces", **kw: Any) -> ClickHouseHttpSink:
    kw.setdefault("read_timeout", 10.0)
    kw.setdefault("connect_timeout", 2.0)
    return ClickHouseHttpSink(clickhouse.url, database, table, **kw)


def apply_schema(clickhouse: Any, database: str, table: str = "traces") -> None:
    apply(clickhouse.query, pick_profile(clickhouse.version), database, table, 0)


class ShipperThread:
    """``Shipper.run()`` in a thread; ``stop()`` requests a stop and joins."""

    def __init__(self, shipper: Shipper) -> None:
        self.shipper = shipper
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="shipper-test")

    def _run(self) -> None:
        try:
            self.shipper.run()
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def __enter__(self) -> ShipperThread:
        self.thread.start()
        return self

    def stop(self, timeout: float = 15.0) -> None:
        self.shipper.request_stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "shipper did not stop"
        if self.error is not None:
            raise self.error

    def __exit__(self, *exc: object) -> None:
        if self.thread.is_alive():
            self.stop()


def count(clickhouse: Any, database: str, table: str = "traces", where: str = "") -> int:
    return int(clickhouse.query(f"SELECT count() FROM {database}.{table} {where}").strip())


def select_rows(clickhouse: Any, database: str, table: str = "traces") -> list[dict[str, Any]]:
    out = clickhouse.query(
        f"SELECT * FROM {database}.{table} ORDER BY timestamp_ns FORMAT JSONEachRow",
        settings={"output_format_json_quote_64bit_integers": 0},
    )
    return [json.loads(line) for line in out.splitlines() if line]


def wait_for(predicate: Any, timeout: float, message: str = "condition", interval: float = 0.05) -> Any:
    return wait_until(predicate, timeout, interval=interval, message=message)
