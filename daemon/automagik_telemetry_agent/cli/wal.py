"""``automagik-telemetry wal verify|dump DIR``: inspect a write-ahead log directory (read-only)."""

from __future__ import annotations

import argparse
import json
import sys

from automagik_telemetry.protocol import COMPACT_SPANS, expand_compact_span

from .. import exitcodes
from ..wal.inspect import dump, verify
from .options import Subparsers

_die = exitcodes.die


def cmd_wal_verify(args: argparse.Namespace) -> int:
    try:
        report = verify(args.dir)
    except FileNotFoundError:
        return _die(exitcodes.CONFIG, f"WAL directory {args.dir} does not exist")
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        for key, value in report.to_dict().items():
            print(f"{key}: {value}")
    return exitcodes.OK if report.clean else exitcodes.FAILURE


def cmd_wal_dump(args: argparse.Namespace) -> int:
    try:
        for seq, kind, payload in dump(args.dir, start_after=args.after):
            # Strip only the final newline: an empty record line is a record (the shipper dead-letters it).
            resource, *records = (payload[:-1] if payload.endswith(b"\n") else payload).split(b"\n")
            compact = b'"lineFormat":"' + COMPACT_SPANS.encode() + b'"' in resource
            for index, record in enumerate(records):
                line: dict[str, object] = {"seq": seq, "index": index, "kind": kind}
                try:
                    decoded = json.loads(record)
                    # A compact span line is shown in its OTLP/JSON spelling (docs/protocol.md).
                    expanded = expand_compact_span(decoded) if compact else None
                    line["record"] = decoded if expanded is None else expanded
                    line["resource"] = json.loads(resource)
                except ValueError:
                    line["raw"] = record.decode("utf-8", "replace")
                sys.stdout.write(json.dumps(line, separators=(",", ":")) + "\n")
    except FileNotFoundError:
        return _die(exitcodes.CONFIG, f"WAL directory {args.dir} does not exist")
    except BrokenPipeError:
        return exitcodes.OK
    return exitcodes.OK


def add_parser(sub: Subparsers) -> None:
    wal = sub.add_parser("wal", help="inspect a write-ahead log directory (read-only)")
    wal_sub = wal.add_subparsers(dest="wal_command", required=True)
    verify_cmd = wal_sub.add_parser("verify", help="check every segment; exit 1 if corruption is found")
    verify_cmd.add_argument("dir")
    verify_cmd.add_argument("--json", action="store_true", help="print one JSON object")
    verify_cmd.set_defaults(func=cmd_wal_verify)
    dump_cmd = wal_sub.add_parser("dump", help="print every record as a JSON line")
    dump_cmd.add_argument("dir")
    dump_cmd.add_argument("--after", type=int, default=0, help="only records with a sequence number above this")
    dump_cmd.set_defaults(func=cmd_wal_dump)
