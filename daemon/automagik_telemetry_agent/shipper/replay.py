"""``automagik-telemetry dead-letter list|replay``: look at the spans the shipper could not ship, retry them.

The file and its format belong to :mod:`.dead_letter`. ``replay`` re-inserts entries into the
configured ClickHouse after the cause was fixed (a column type changed, a constraint relaxed):

* ``rejected`` entries carry the row exactly as it was sent: it is sent again;
* ``transform`` entries carry only the span line: the transform is re-run (with the current code)
  and usually fails again, which is reported; a span that transforms now is inserted only if its
  resource line is still in the WAL (the dead-letter entry does not keep it);
* ``unsupported`` entries (record kinds the shipper does not ship) stay.

Crash-safety: rows are inserted first (bad ones isolated by bisection, like the shipper does), then
the file is rewritten without the inserted entries (temp file, fsync, rename). A crash in between
leaves the entries in the file, so a second replay may insert those rows twice (at least once,
never lost). The file is only read and rewritten under the dead-letter directory's lock, which the
shipper takes for every append: entries the shipper appends during a replay are kept. The network
part runs without that lock, so the shipper never waits on ClickHouse for a replay; a second
``replay`` at the same time is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import exitcodes
from .config import ConfigError, load_config

REPLAY_LOCK_FILE = ".replay.lock"
ERROR_WIDTH = 80


_die = exitcodes.die


def dead_letter_dir(config: Mapping[str, Any]) -> str:
    """``shipper.dead_letter_dir``, else ``<wal.dir>/../dead-letter`` (where the shipper writes)."""
    from .dead_letter import default_dead_letter_dir

    return config["shipper.dead_letter_dir"] or default_dead_letter_dir(config["wal.dir"])


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


# ---------------------------------------------------------------------------- list
def cmd_list(args: argparse.Namespace, flags: dict[str, object]) -> int:
    from .dead_letter import DeadLetter

    try:
        config = load_config(args.config, flags)
    except ConfigError as exc:
        return _die(exitcodes.CONFIG, f"config error: {exc}")
    dl = DeadLetter(dead_letter_dir(config))
    try:
        with dl.locked(shared=True):
            lines = dl.read_lines()
    except OSError as exc:
        return _die(exitcodes.FAILURE, f"cannot read {dl.path}: {exc.strerror}")
    entries = [
        _parse(line) or {"reason": "unreadable", "error": line[:200].decode("utf-8", "replace")} for line in lines
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


# ---------------------------------------------------------------------------- replay
@dataclass
class Candidate:
    index: int  # line number in the snapshot
    body: bytes  # one JSONEachRow line, newline-terminated


@dataclass
class ReplayPlan:
    candidates: list[Candidate] = field(default_factory=list)
    kept: dict[int, str] = field(default_factory=dict)  # index -> why it stays (a short, groupable reason)
    examples: dict[str, str] = field(default_factory=dict)  # reason -> one full message behind it

    def keep(self, index: int, why: str, example: str = "") -> None:
        self.kept[index] = why
        if example:
            self.examples.setdefault(why, example)

    def report(self) -> list[str]:
        """One line per reason: how many entries stay for it, and one example of the server's words."""
        lines = []
        for why, n in Counter(self.kept.values()).most_common():
            example = self.examples.get(why, "")
            if len(example) > 2 * ERROR_WIDTH:
                example = example[: 2 * ERROR_WIDTH - 3] + "..."
            lines.append(f"  {n} kept: {why}" + (f", e.g. {example}" if example else ""))
        return lines


@contextlib.contextmanager
def _replay_lock(directory: str) -> Iterator[bool]:
    """One replay at a time per dead-letter directory; yields False if another one holds it."""
    try:
        fd = os.open(os.path.join(directory, REPLAY_LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except FileNotFoundError:
        yield True  # no directory: nothing to replay
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _wal_resources(wal_dir: str, seqs: set[int]) -> dict[int, bytes]:
    """The resource line of each WAL record in ``seqs`` still on disk (one pass over the WAL)."""
    from .wal.inspect import dump

    found: dict[int, bytes] = {}
    if not seqs or not os.path.isdir(wal_dir):
        return found
    with contextlib.suppress(OSError):
        for seq, _kind, payload in dump(wal_dir, start_after=min(seqs) - 1):
            if seq in seqs:
                found[seq] = payload.split(b"\n", 1)[0]
            if seq >= max(seqs):
                break
    return found


def plan_replay(entries: list[dict[str, Any] | None], profile: Any, wal_dir: str) -> ReplayPlan:
    """Which entries to send again (and their row bytes), and why the others stay."""
    import orjson

    from .transform import TransformError, parse_resource, transform_span

    plan = ReplayPlan()
    transform_seqs = {
        e["wal_seq"] for e in entries if e and e.get("reason") == "transform" and isinstance(e.get("wal_seq"), int)
    }
    resources = _wal_resources(wal_dir, transform_seqs)
    for index, e in enumerate(entries):
        reason = e.get("reason") if e else None
        if e is None:
            plan.keep(index, "unreadable line")
        elif reason == "rejected" and isinstance(e.get("row"), dict):
            plan.candidates.append(Candidate(index, orjson.dumps(e["row"], option=orjson.OPT_APPEND_NEWLINE)))
        elif reason == "rejected" and isinstance(e.get("row_raw"), str):
            plan.candidates.append(Candidate(index, e["row_raw"].encode().rstrip(b"\n") + b"\n"))
        elif reason == "transform" and isinstance(e.get("raw"), str):
            if "raw_length" in e:
                plan.keep(index, "span line was truncated when dead-lettered")
                continue
            resource_line = resources.get(e.get("wal_seq", -1))
            try:
                resource = parse_resource(resource_line or b'{"attributes":[]}')
                row = transform_span(e["raw"].encode(), resource, profile)
            except TransformError as exc:
                plan.keep(index, f"transform still fails: {exc.reason}")
                continue
            if resource_line is None:
                plan.keep(index, "transforms now, but its resource line is no longer in the WAL")
                continue
            plan.candidates.append(Candidate(index, orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE)))
        elif reason == "unsupported":
            plan.keep(index, "record kind not shipped")
        else:
            plan.keep(index, f"nothing to replay (reason {reason!r})")
    return plan


class _Abort(Exception):
    """ClickHouse failed for a reason that is not the rows' (down, auth, missing table)."""


def insert_bisecting(
    insert: Callable[[bytes, str], Any], candidates: list[Candidate], plan: ReplayPlan
) -> tuple[list[int], Any]:
    """Insert ``candidates``: (indexes inserted, the failed result that stopped it or None).

    A group ClickHouse refuses as bad data is split in halves until the refused rows are alone; each
    is kept in ``plan`` with the server's message. Any other failure (down, auth, missing table) stops
    at once: what was inserted so far is returned with it. Each body carries a deduplication token
    derived from its bytes, so a replay repeated after a crash is deduplicated where the server can.
    """
    from .clickhouse_errors import ErrorClass

    inserted: list[int] = []

    def attempt(group: list[Candidate]) -> None:
        body = b"".join(c.body for c in group)
        result = insert(body, "replay:" + hashlib.sha256(body).hexdigest()[:32])
        if result.ok:
            inserted.extend(c.index for c in group)
        elif result.error_class is not ErrorClass.BAD_DATA:
            raise _Abort(result)
        elif len(group) == 1:
            plan.keep(group[0].index, f"ClickHouse still refuses it (code {result.code})", result.message)
        else:
            attempt(group[: len(group) // 2])
            attempt(group[len(group) // 2 :])

    try:
        if candidates:
            attempt(candidates)
    except _Abort as abort:
        return inserted, abort.args[0]
    return inserted, None


def cmd_replay(args: argparse.Namespace, flags: dict[str, object]) -> int:
    from .dead_letter import DeadLetter
    from .shipper_cli import sink_from_config
    from .sink_http import SinkError

    try:
        config = load_config(args.config, flags)
    except ConfigError as exc:
        return _die(exitcodes.CONFIG, f"config error: {exc}")
    if config["sink"] == "embedded":
        return _die(
            exitcodes.FAILURE,
            "dead-letter replay into the embedded store is not supported yet; "
            "`dead-letter list --json` shows the entries",
        )
    dl = DeadLetter(dead_letter_dir(config))
    with _replay_lock(dl.dir) as mine:
        if not mine:
            return _die(exitcodes.FAILURE, f"another dead-letter replay is running on {dl.dir}: wait for it")
        with dl.locked():
            snapshot = dl.read_lines()
        if not snapshot:
            print(f"nothing to replay: no dead-lettered spans in {dl.path}")
            return exitcodes.OK
        entries = [_parse(line) for line in snapshot]
        try:
            sink = sink_from_config(config)
        except ConfigError as exc:
            return _die(exitcodes.CONFIG, f"config error: {exc}")
        try:
            try:
                detected = sink.detect()
            except SinkError as exc:
                code = exitcodes.CONFIG if exc.result.error_class.value == "config" else exitcodes.FAILURE
                return _die(code, f"nothing replayed: {exc}")
            plan = plan_replay(entries, detected.profile, config["wal.dir"])
            if args.dry_run:
                _report_plan(plan, len(snapshot), sink.target, dl.path)
                return exitcodes.OK
            inserted, abort = insert_bisecting(sink.insert, plan.candidates, plan)
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
        f"replayed {len(done)} of {len(snapshot)} dead-lettered spans into {sink.target}; {left} left in "
        f"{dl.path}{meanwhile}"
    )
    if plan.kept:
        print("\n".join(plan.report()))
    if abort is not None:
        return _die(exitcodes.FAILURE, f"stopped: {sink.explain(abort)}")
    return exitcodes.OK if left == 0 else exitcodes.FAILURE


def _report_plan(plan: ReplayPlan, total: int, target: str, path: str) -> None:
    print(
        f"dry run: would send {len(plan.candidates)} of {total} dead-lettered spans to {target}; "
        f"{len(plan.kept)} would stay in {path}"
    )
    if plan.kept:
        print("\n".join(plan.report()))


def add_parser(
    sub: Any,
    add_setting_flags: Callable[[argparse.ArgumentParser], None],
    flags: Callable[[argparse.Namespace], dict[str, object]],
) -> None:
    dead = sub.add_parser("dead-letter", help="list or replay the spans the shipper could not ship")
    dead_sub = dead.add_subparsers(dest="dead_letter_command", required=True)
    listing = dead_sub.add_parser("list", help="one line per dead-lettered span (time, reason, code, error)")
    add_setting_flags(listing)
    listing.add_argument("--json", action="store_true", help="print one JSON object with every entry")
    listing.set_defaults(func=lambda a: cmd_list(a, flags(a)))
    replay = dead_sub.add_parser("replay", help="insert the dead-lettered rows again; remove those that land")
    add_setting_flags(replay)
    replay.add_argument("--dry-run", action="store_true", help="say what would be sent, change nothing")
    replay.set_defaults(func=lambda a: cmd_replay(a, flags(a)))
