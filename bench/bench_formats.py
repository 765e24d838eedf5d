"""Server CPU per row by input format: what ClickHouse spends parsing and storing the same span rows
sent as ``JSONEachRow`` (what the shipper sends), ``TabSeparated`` and ``RowBinary``.

The rows are the shipper's own (a backlog of bench_ingest's spans through ``freeze_batch``), rendered
to each format by straightforward encoders here. Each body is POSTed (uncompressed, so only parsing
and storing are measured) once into a MergeTree ``traces`` table made by ``schema apply`` in a fresh
database, and once into a ``Null``-engine copy of it (parsing only: a Null table stores nothing); the
server's CPU time (/proc) is divided by the rows. A checksum over every column proves the three
formats stored the same rows. The encoders' own cost in this process is printed too: a format is only
worth it if the shipper can write it for less than the server saves.

    .venv/bin/python bench/bench_formats.py            # ~30 s
    .venv/bin/python bench/bench_formats.py --quick
"""

from __future__ import annotations

import argparse
import calendar
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import orjson
import requests
from _harness import CpuMeter, machine_line
from bench_shipper import TABLE, Databases, collect, server_cpu, start_clickhouse, write_backlog

from automagik_telemetry_agent.clickhouse.rows import Profile, parse_resource, transform_span
from automagik_telemetry_agent.shipper.options import ShipperOptions
from automagik_telemetry_agent.wal import WalReader

Row = dict[str, Any]


# ------------------------------------------------------------------------------------------ encoders
def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _rb_string(value: str) -> bytes:
    data = value.encode()
    return _varint(len(data)) + data


def _rb_datetime(value: str) -> bytes:
    return struct.pack("<I", calendar.timegm(time.strptime(value, "%Y-%m-%d %H:%M:%S")))


RB: dict[str, Callable[[Any], bytes]] = {
    "String": _rb_string,
    "UInt64": lambda v: struct.pack("<Q", v),
    "Float64": lambda v: struct.pack("<d", v),
    "Array(String)": lambda v: _varint(len(v)) + b"".join(_rb_string(x) for x in v),
}


def _tsv_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def _tsv(kind: str, value: Any) -> str:
    if kind == "Array(String)":
        return "[" + ",".join("'" + _tsv_escape(x).replace("'", "\\'") + "'" for x in value) + "]"
    if kind == "Float64":
        return repr(value)
    return _tsv_escape(value) if isinstance(value, str) else str(value)


def encode(fmt: str, rows: list[Row], columns: list[str], types: dict[str, str]) -> bytes:
    if fmt == "JSONEachRow":
        newline = orjson.OPT_APPEND_NEWLINE
        return b"".join(orjson.dumps({c: r[c] for c in columns}, option=newline) for r in rows)
    if fmt == "TabSeparated":
        return "".join("\t".join(_tsv(types[c], r[c]) for c in columns) + "\n" for r in rows).encode()
    if fmt == "RowBinary":
        encoders = [RB["DateTime"] if types[c].startswith("DateTime") else RB[types[c]] for c in columns]
        return b"".join(b"".join(e(r[c]) for e, c in zip(encoders, columns, strict=True)) for r in rows)
    raise ValueError(fmt)


RB["DateTime"] = _rb_datetime
FORMATS = ("JSONEachRow", "TabSeparated", "RowBinary")


# ------------------------------------------------------------------------------------------ measuring
def shipper_rows(spans: int) -> list[Row]:
    """The legacy-profile rows the shipper makes of a backlog of bench_ingest's spans."""
    with tempfile.TemporaryDirectory() as wal_dir:
        options = ShipperOptions()
        write_backlog(wal_dir, spans, options)
        reader = WalReader(wal_dir)
        rows: list[Row] = []
        while entries := collect(reader, options):
            for entry in entries:
                lines = entry.payload.split(b"\n")[:-1]
                resource = parse_resource(lines[0])
                rows += [transform_span(line, resource, Profile.LEGACY) for line in lines[1:]]
        reader.close()
    return rows


def insert(ch: Any, database: str, fmt: str, columns: list[str], body: bytes) -> float:
    """POST ``body``; the server's CPU seconds for it."""
    cpu0 = server_cpu(ch)
    query = f"INSERT INTO {database}.{TABLE} ({','.join(columns)}) FORMAT {fmt}"
    r = requests.post(ch.url, params={"query": query}, data=body, timeout=300)
    if r.status_code != 200:
        raise RuntimeError(f"{fmt}: HTTP {r.status_code} {r.text[:500]}")
    return server_cpu(ch) - cpu0


def checksum(ch: Any, database: str, columns: list[str]) -> tuple[str, ...]:
    """count() and one order-independent hash per column."""
    hashes = ", ".join(f"groupBitXor(cityHash64({c}))" for c in columns)
    return tuple(ch.query(f"SELECT count(), {hashes} FROM {database}.{TABLE}").strip().split("\t"))


def differing(sums: dict[str, set[tuple[str, ...]]], fmt: str, columns: list[str]) -> str:
    """Which columns a format stored differently from JSONEachRow (or why they cannot be compared)."""
    if len(sums[fmt]) != 1 or len(sums["JSONEachRow"]) != 1:
        return "DIFFERENT from one repetition to the next"
    (mine,), (json_sums,) = sums[fmt], sums["JSONEachRow"]
    if mine[0] != json_sums[0]:
        return f"DIFFERENT row count {mine[0]} vs {json_sums[0]}"
    names = [c for c, a, b in zip(columns, mine[1:], json_sums[1:], strict=True) if a != b]
    note = " (a Float64: 18.16's text parsers round some doubles differently from Python; binary keeps Python's)"
    return f"same but for {', '.join(names)}" + (note if names == ["duration_ms"] else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.spans, args.repeats = min(args.spans, 30_000), min(args.repeats, 2)
    meter = CpuMeter()
    rows = shipper_rows(args.spans)
    ch = start_clickhouse()
    dbs = Databases(ch)
    try:
        probe = dbs.new("describe")
        described = ch.query(f"DESCRIBE TABLE {probe}.{TABLE}").strip().splitlines()
        types = {line.split("\t")[0]: line.split("\t")[1] for line in described}
        columns = [c for c in rows[0] if c in types]
        bodies, encode_us = {}, {}
        for fmt in FORMATS:
            started = time.process_time()
            bodies[fmt] = encode(fmt, rows, columns, types)
            encode_us[fmt] = 1e6 * (time.process_time() - started) / len(rows)
        stored: dict[str, list[float]] = {f: [] for f in FORMATS}
        parsed: dict[str, list[float]] = {f: [] for f in FORMATS}
        sums: dict[str, set[tuple[str, ...]]] = {f: set() for f in FORMATS}
        for _ in range(args.repeats):
            for fmt in FORMATS:  # interleaved
                database = dbs.new(fmt.lower())
                stored[fmt].append(insert(ch, database, fmt, columns, bodies[fmt]))
                sums[fmt].add(checksum(ch, database, columns))
                null = dbs.new(fmt.lower() + "_null")
                ch.query(f"DROP TABLE {null}.{TABLE}")
                ch.query(f"CREATE TABLE {null}.{TABLE} AS {database}.{TABLE} ENGINE = Null")
                parsed[fmt].append(insert(ch, null, fmt, columns, bodies[fmt]))
        version = ch.version
    finally:
        dbs.drop_all()
        ch.close()
    n = len(rows)
    base = statistics.median(stored["JSONEachRow"]) / n
    print(machine_line())
    print(f"ClickHouse {version}; {n:,} legacy-profile span rows ({len(columns)} columns), median of {args.repeats}")
    print(
        f"\n{'format':<14}{'bytes/row':>10}{'server us/row':>15}{'x JSONEachRow':>15}{'parse only us/row':>19}"
        f"{'encode here us/row':>20}  stored rows"
    )
    for fmt in FORMATS:
        per_row = statistics.median(stored[fmt]) / n
        same = "same as JSONEachRow" if sums[fmt] == sums["JSONEachRow"] else differing(sums, fmt, columns)
        print(
            f"{fmt:<14}{len(bodies[fmt]) / n:>10.0f}{1e6 * per_row:>15.2f}{per_row / base:>15.2f}"
            f"{1e6 * statistics.median(parsed[fmt]) / n:>19.2f}{encode_us[fmt]:>20.2f}  {same}"
        )
    print(
        "(server us/row: the server's CPU time per row for a MergeTree insert; parse only: the same body into a "
        "Null table; encode here: this script's straightforward encoder, from the shipper's row dicts)"
    )
    print(meter.summary() + " (the ClickHouse server is counted as this benchmark)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
