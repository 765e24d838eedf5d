"""``automagik-telemetry dead-letter list|replay``: look at the spans the shipper could not ship, retry them
(how a replay works and why it is crash-safe: ``shipper.replay``)."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import TYPE_CHECKING

from .. import exitcodes
from ..config import ConfigError
from ..paths import dead_letter_dir
from .options import AGENT, Subparsers, add_setting_flags, load

if TYPE_CHECKING:
    from ..shipper.replay import ReplayPlan

_die = exitcodes.die


def cmd_list(args: argparse.Namespace) -> int:
    # The agent extra (orjson, requests, zstandard) is optional: imported when the command runs, so that a
    # client-only install fails here with one line (cli.main) instead of at start-up.
    from ..shipper.dead_letter import DeadLetter
    from ..shipper.replay import ERROR_WIDTH, parse_entry

    config = load(args)
    if isinstance(config, int):
        return config
    dl = DeadLetter(dead_letter_dir(config))
    try:
        with dl.locked(shared=True):
            lines = dl.read_lines()
    except OSError as exc:
        return _die(exitcodes.FAILURE, f"cannot read {dl.path}: {exc.strerror}")
    entries = [
        parse_entry(line) or {"reason": "unreadable", "error": line[:200].decode("utf-8", "replace")} for line in lines
    ]
    if args.json:
        print(json.dumps({"path": dl.path, "count": len(entries), "entries": entries}))
        return exitcodes.OK
    if not entries:
        print(f"no dead-lettered spans ({dl.path} is empty or absent)")
        return exitcodes.OK
    print(f"{'time':<24}  {'reason':<11}  {'code':>4}  error")
    for e in entries:
        code = "" if e.get("error_code") is None else str(e["error_code"])
        error = " ".join(str(e.get("error", "")).split())
        if len(error) > ERROR_WIDTH:
            error = error[: ERROR_WIDTH - 3] + "..."
        print(f"{e.get('time', '?'):<24}  {e.get('reason', '?'):<11}  {code:>4}  {error}")
    reasons = Counter(str(e.get("reason", "?")) for e in entries)
    print(f"{len(entries)} entries in {dl.path} ({', '.join(f'{n} {r}' for r, n in sorted(reasons.items()))})")
    return exitcodes.OK


def cmd_replay(args: argparse.Namespace) -> int:
    # The agent extra (orjson, requests, zstandard) is optional: imported when the command runs, so that a
    # client-only install fails here with one line (cli.main) instead of at start-up.
    from ..clickhouse.errors import ErrorClass
    from ..clickhouse.factory import insert_table, sink_from_config
    from ..clickhouse.sink import SinkError
    from ..shipper.dead_letter import DeadLetter
    from ..shipper.replay import ReplayPlan, insert_candidates, parse_entry, plan_replay, replay_lock, signal_of
    from ..shipper.signals import SHIPMENTS
    from ..wal.signals import Signal

    config = load(args)
    if isinstance(config, int):
        return config
    if config["sink"] == "embedded":
        return _die(
            exitcodes.FAILURE,
            "dead-letter replay into the embedded store is not supported yet; "
            "`dead-letter list --json` shows the entries",
        )
    dl = DeadLetter(dead_letter_dir(config))
    with replay_lock(dl.dir) as mine:
        if not mine:
            return _die(exitcodes.FAILURE, f"another dead-letter replay is running on {dl.dir}: wait for it")
        with dl.locked():
            snapshot = dl.read_lines()
        if not snapshot:
            print(f"nothing to replay: no dead-lettered spans in {dl.path}")
            return exitcodes.OK
        entries = [parse_entry(line) for line in snapshot]
        try:
            sink = sink_from_config(config)
        except ConfigError as exc:
            return _die(exitcodes.CONFIG, f"config error: {exc}")
        plan, inserted, abort, explain, targets = ReplayPlan(), [], None, sink.explain, []
        try:
            # One plan per signal, into its own table: spans (and unreadable lines) first.
            present = sorted({signal_of(e) for e in entries}, key=lambda s: (s != "traces", s))
            for name in present:
                try:
                    shipment = SHIPMENTS[Signal(name)]
                except ValueError:
                    for index, e in enumerate(entries):
                        if signal_of(e) == name:
                            plan.keep(index, f"unknown signal {name!r}")
                    continue
                table = (
                    sink
                    if shipment.signal is Signal.TRACES
                    else sink.for_table(insert_table(config, config[shipment.table_setting]), shipment.row_keys)
                )
                try:
                    try:
                        detected = table.detect()
                    except SinkError as exc:
                        code = exitcodes.CONFIG if exc.result.error_class is ErrorClass.CONFIG else exitcodes.FAILURE
                        return _die(code, f"nothing replayed: {exc}")
                    sub = plan_replay(entries, detected.profile, config["wal.dir"], shipment)
                    plan.merge(sub)
                    targets.append(table.target)
                    if not args.dry_run:
                        done_here, abort = insert_candidates(table.insert, sub.candidates, plan)
                        inserted += done_here
                        explain = table.explain
                finally:
                    if table is not sink:
                        table.close()
                if abort is not None:
                    break
            if args.dry_run:
                _report_plan(plan, len(snapshot), ", ".join(targets), dl.path)
                return exitcodes.OK
        finally:
            sink.close()
        done = set(inserted)
        if done:
            with dl.locked():
                current = dl.read_lines()
                if current[: len(snapshot)] != snapshot:
                    return _die(
                        exitcodes.FAILURE,
                        f"{dl.path} changed during the replay (edited by hand?): "
                        f"{len(done)} rows were inserted but their entries were left in place; "
                        "remove them by hand, or a later replay inserts them again",
                    )
                dl.rewrite([line for i, line in enumerate(snapshot) if i not in done] + current[len(snapshot) :])
        else:
            current = snapshot
    left = len(snapshot) - len(done)
    added = len(current) - len(snapshot)
    meanwhile = f" (plus {added} added by the shipper meanwhile, not replayed)" if added > 0 else ""
    print(
        f"replayed {len(done)} of {len(snapshot)} dead-lettered spans into {', '.join(targets)}; {left} left in "
        f"{dl.path}{meanwhile}"
    )
    if plan.kept:
        print("\n".join(plan.report()))
    if abort is not None:
        return _die(exitcodes.FAILURE, f"stopped: {explain(abort)}")
    return exitcodes.OK if left == 0 else exitcodes.FAILURE


def _report_plan(plan: ReplayPlan, total: int, target: str, path: str) -> None:
    print(
        f"dry run: would send {len(plan.candidates)} of {total} dead-lettered spans to {target}; "
        f"{len(plan.kept)} would stay in {path}"
    )
    if plan.kept:
        print("\n".join(plan.report()))


def add_parser(sub: Subparsers) -> None:
    dead = sub.add_parser("dead-letter", help="list or replay the spans the shipper could not ship")
    dead_sub = dead.add_subparsers(dest="dead_letter_command", required=True)
    listing = dead_sub.add_parser("list", help="one line per dead-lettered span (time, reason, code, error)")
    add_setting_flags(listing, AGENT)
    listing.add_argument("--json", action="store_true", help="print one JSON object with every entry")
    listing.set_defaults(func=cmd_list)
    replay = dead_sub.add_parser("replay", help="insert the dead-lettered rows again; remove those that land")
    add_setting_flags(replay, AGENT)
    replay.add_argument("--dry-run", action="store_true", help="say what would be sent, change nothing")
    replay.set_defaults(func=cmd_replay)
