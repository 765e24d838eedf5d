"""The agent on a full disk, and its disk policy: it never crashes, rejects exactly, loses nothing ACKed.

The disk is a real 4 MiB tmpfs mounted for the test (needs root / CAP_SYS_ADMIN). Where mounting is
not possible the tests fall back to RLIMIT_FSIZE on the agent process (writes past the limit fail
with EFBIG, which the agent treats like ENOSPC); they never skip. The mechanism that ran is printed
and, for the fallback, reported as a warning. ``AUTOMAGIK_TELEMETRY_TEST_DISK_FULL=rlimit`` forces
the fallback (to exercise it on a machine that can mount).

What a full disk must never do: crash the agent, ACK a record that is not in the WAL, write a record
twice, count a rejection inexactly, or leave the WAL unverifiable. Disk-policy drops must be counted
exactly: ``dropped_records[reason]`` == the ACKed records no longer in the WAL, each in ``drops.log``.
"""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from agent_process import AgentProcess, RawClient, agent_env, dumped_names, record_line, wait_until

from automagik_telemetry_agent.wal import WalReader

MiB = 1024 * 1024
RLIMIT_FILE_SIZE = 1 * MiB  # the fallback's per-file limit (segments are larger, so each one fills)


# ---------------------------------------------------------------------------------------------- disk
@dataclass
class SmallDisk:
    """A small filesystem for the WAL: a tmpfs (``mode == "tmpfs"``) or the RLIMIT_FSIZE fallback."""

    root: Path
    mode: str
    why: str = ""

    @property
    def wal_dir(self) -> str:
        return str(self.root / "wal")

    @property
    def tmpfs(self) -> bool:
        return self.mode == "tmpfs"

    @property
    def preexec_fn(self) -> Callable[[], None] | None:
        if self.tmpfs:
            return None
        return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (RLIMIT_FILE_SIZE, RLIMIT_FILE_SIZE))

    def agent_settings(self, **settings: Any) -> dict[str, Any]:
        segment = "256KiB" if self.tmpfs else "2MiB"  # fallback: bigger than the file size limit
        return {
            "wal_dir": self.wal_dir,
            "preexec_fn": self.preexec_fn,
            "fsync": "always",
            "segment_size": segment,
            **settings,
        }

    def write_file(self, name: str, size: int) -> str:
        """A filler file of ``size`` bytes on this disk (tmpfs only; in fallback mode it frees nothing)."""
        path = self.root / name
        with open(path, "wb") as f:
            f.write(b"\0" * size)
        return str(path)

    def fill_up(self, name: str = "slack") -> int:
        """Write a file until ENOSPC: afterwards not one page is free (tmpfs). Returns bytes written."""
        if not self.tmpfs:
            return 0
        fd = os.open(self.root / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        written = 0
        try:
            for chunk in (65536, 4096, 512, 1):
                with contextlib.suppress(OSError):
                    while True:
                        written += os.write(fd, b"\0" * chunk)
        finally:
            os.close(fd)
        assert self.free_bytes() < 4096
        return written

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.root / name)

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def cleanup(self) -> None:
        if not self.tmpfs:
            return
        for _ in range(50):
            if subprocess.run(["umount", str(self.root)], capture_output=True).returncode == 0:
                return
            time.sleep(0.1)
        subprocess.run(["umount", "-l", str(self.root)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    root = tmp_path / "disk"
    root.mkdir()
    forced = os.environ.get("AUTOMAGIK_TELEMETRY_TEST_DISK_FULL", "").strip().lower()
    disk = None
    if forced == "rlimit":
        disk = SmallDisk(root, "rlimit_fsize", "forced by AUTOMAGIK_TELEMETRY_TEST_DISK_FULL=rlimit")
    else:
        try:
            result = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(root)],
                capture_output=True,
                text=True,
                timeout=30,
            )
            why = result.stderr.strip() or f"mount exited {result.returncode}"
        except (OSError, subprocess.TimeoutExpired) as exc:
            result, why = None, str(exc)
        if result is not None and result.returncode == 0:
            disk = SmallDisk(root, "tmpfs", "4 MiB tmpfs")
        else:
            disk = SmallDisk(root, "rlimit_fsize", f"cannot mount a tmpfs ({why})")
    if not disk.tmpfs:
        warnings.warn(
            f"disk-full tests ran with RLIMIT_FSIZE={RLIMIT_FILE_SIZE} instead of a full tmpfs: {disk.why}",
            stacklevel=1,
        )
    print(f"disk-full mechanism: {disk.mode} ({disk.why})")
    try:
        yield disk
    finally:
        disk.cleanup()


# ---------------------------------------------------------------------------------------------- client
@dataclass
class Sender:
    """One client sending 3-item messages one at a time and recording each outcome (ACK or REJECT)."""

    agent: AgentProcess
    prefix: str = "m"  # item names are f"{prefix}{seq}-{index}"
    items: int = 3
    pad: int = 3000
    seq: int = 0
    acked: list[str] = field(default_factory=list)  # item names
    rejected: list[str] = field(default_factory=list)
    reject_reasons: Counter[str] = field(default_factory=Counter)
    stats_calls: int = 0
    client: RawClient | None = None

    def __post_init__(self) -> None:
        self.client = RawClient(self.agent.socket_path, timeout=10)

    def send(self) -> str:
        assert self.client is not None
        self.seq += 1
        names = [f"{self.prefix}{self.seq}-{i}" for i in range(self.items)]
        self.client.send_records([record_line(n, pad=self.pad) for n in names], seq=self.seq)
        outcome = self.client.wait_outcome(self.seq, 10)
        assert outcome is not None, f"no reply to message {self.seq}; agent running={self.agent.running}"
        if outcome == "ack":
            self.acked += names
        else:
            self.rejected += names
            self.reject_reasons[outcome] += 1
        return outcome

    def send_until(self, want: str, timeout: float, interval: float = 0.05) -> float:
        """Send until a message gets ``want``; return how long it took. AssertionError after timeout."""
        started = time.monotonic()
        while self.send() != want:
            assert time.monotonic() - started < timeout, f"no {want!r} within {timeout}s"
            time.sleep(interval)
        return time.monotonic() - started

    def stats(self) -> dict[str, Any]:
        """agent.stats(), checked exactly against what this sender saw (the only client)."""
        self.stats_calls += 1
        stats = self.agent.stats()
        n_rejected = sum(self.reject_reasons.values())
        assert {k: v for k, v in stats["rejected_messages"].items() if v} == dict(self.reject_reasons)
        assert {k: v for k, v in stats["rejected_items"].items() if v} == {
            k: v * self.items for k, v in self.reject_reasons.items()
        }
        assert stats["records_received"] == len(self.acked) // self.items
        assert stats["items_received"] == len(self.acked)
        assert stats["messages_received"] == self.seq + self.stats_calls
        assert stats["messages_received"] == stats["records_received"] + n_rejected + self.stats_calls
        return stats

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


def segment_bytes(wal_dir: str) -> int:
    return sum(os.path.getsize(os.path.join(wal_dir, n)) for n in os.listdir(wal_dir) if n.endswith(".seg"))


def consume_all(wal_dir: str) -> list[str]:
    """Read every record like the shipper would, commit the cursor, release the segments: item names."""
    reader = WalReader(wal_dir)
    names: list[str] = []
    last = 0
    try:
        while entries := reader.read(max_records=10_000):
            for entry in entries:
                names += [
                    line.split(b'"name":"', 1)[1].split(b'"', 1)[0].decode()
                    for line in entry.payload.split(b"\n")[1:]
                    if line
                ]
                last = entry.seq
        if last:
            reader.commit(last)
    finally:
        reader.close()
    return names


def drops_ledger(wal_dir: str) -> list[dict[str, str]]:
    try:
        with open(os.path.join(wal_dir, "drops.log")) as f:
            return [dict(p.split("=", 1) for p in line.split()[1:]) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def check_wal(agent: AgentProcess, acked: list[str], rejected: list[str], consumed: list[str] = ()) -> list[str]:  # type: ignore[assignment]
    """After the agent stopped: every ACKed item is in the WAL exactly once (or was consumed and its
    segment deleted), nothing rejected is anywhere, and `wal verify` is clean. Returns the dump names."""
    names = dumped_names(agent.dump())
    counts = Counter(names)
    twice = [n for n, c in counts.items() if c > 1]
    assert not twice, f"records written twice: {twice}"
    missing = [n for n in acked if n not in counts and n not in set(consumed)]
    assert not missing, f"{len(missing)} ACKed items lost, e.g. {missing[:5]}"
    assert not set(rejected) & (set(names) | set(consumed)), "a rejected record is in the WAL"
    assert set(names) <= set(acked), "the WAL holds records that were never ACKed"
    code, report = agent.verify()
    assert code == 0 and report["clean"], report
    return names


# ---------------------------------------------------------------------------------------------- tests
def test_disk_full_rejects_exactly_loses_nothing_acked_and_recovers(small_disk: SmallDisk, agent_factory: Any) -> None:
    """Filling the disk: the agent keeps running; every message it could not write got REJECT disk_full
    (counted exactly, items too); what it ACKed is in the WAL once; the WAL size it reports is the size
    on disk; once space is freed (a file deleted, or records consumed and committed) it accepts again
    within a few seconds; `wal verify` is clean."""
    disk = small_disk
    if disk.tmpfs:
        disk.write_file("filler", 512 * 1024)
        disk.write_file("cursor-reserve", 16 * 1024)
    agent = agent_factory(**disk.agent_settings())
    sender = Sender(agent)
    try:
        # 1. Fill the disk.
        fill_time = sender.send_until("disk_full", timeout=20, interval=0)
        first_full = len(sender.acked)
        assert first_full > 100, "the disk filled before anything was written"
        disk.fill_up()  # not one free page left: the retries below must all fail, creating segments too
        # 2. Keep sending while full for 2.5 s: the agent retries the disk about once a second.
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            outcome = sender.send()
            if disk.tmpfs:
                assert outcome == "disk_full"
            time.sleep(0.05)
        assert agent.running, agent.stderr_text[-3000:]
        stats = sender.stats()
        assert stats["rejected_messages"]["disk_full"] >= 10
        assert stats["wal"]["write_errors"] >= (3 if disk.tmpfs else 1)
        assert stats["wal"]["bytes"] == segment_bytes(disk.wal_dir), "reported WAL size != bytes on disk"
        # 3. Free space by deleting files: it accepts again within a few seconds.
        disk.remove("slack")
        disk.remove("filler")
        recovered_after_delete = sender.send_until("ack", timeout=5, interval=0.1)
        sender.send_until("disk_full", timeout=20, interval=0)  # ...and fills up again
        disk.fill_up("slack2")
        sender.send()
        # 4. Free space by consuming: the shipper's commit lets the agent delete segments.
        disk.remove("cursor-reserve")  # room for the cursor file itself (see the report)
        consumed = consume_all(disk.wal_dir)
        assert len(consumed) == len(sender.acked)
        recovered_after_consume = sender.send_until("ack", timeout=5, interval=0.1)
        if disk.tmpfs:  # more than all the files freed (~1 MiB): consumed segments were deleted
            for _ in range(100):
                assert sender.send() == "ack"
        stats = sender.stats()
        assert stats["wal"]["dropped_records"] == {}
        assert stats["wal"]["bytes"] == segment_bytes(disk.wal_dir)
    finally:
        sender.close()
    assert agent.terminate() == 0
    check_wal(agent, sender.acked, sender.rejected, consumed)
    print(
        f"[{disk.mode}] full after {first_full} items in {fill_time:.2f}s; rejected "
        f"{dict(sender.reject_reasons)}; accepted again {recovered_after_delete:.2f}s after deleting "
        f"files, {recovered_after_consume:.2f}s after consuming"
    )


def test_agent_restarts_on_a_full_disk_and_recovers(small_disk: SmallDisk, agent_factory: Any) -> None:
    """An agent (re)started on a completely full disk still starts (ready, answering), rejects with
    disk_full instead of leaving clients without a socket, and accepts once space is freed."""
    disk = small_disk
    if disk.tmpfs:
        disk.write_file("filler", 256 * 1024)
    agent = agent_factory(**disk.agent_settings())
    sender = Sender(agent)
    sender.send_until("disk_full", timeout=20, interval=0)
    sender.close()
    assert agent.terminate() == 0
    disk.fill_up()
    agent.start()  # AgentStartError (with its stderr) if it refuses to start on a full disk
    sender2 = Sender(agent, prefix="after-restart-")
    try:
        if disk.tmpfs:
            assert sender2.send() == "disk_full"
            disk.remove("slack")
            disk.remove("filler")
            sender2.send_until("ack", timeout=5, interval=0.1)
        else:
            sender2.send_until("ack", timeout=5, interval=0.1)
        sender2.stats()
    finally:
        sender2.close()
    assert agent.terminate() == 0
    check_wal(agent, sender.acked + sender2.acked, sender.rejected + sender2.rejected)


def test_full_disk_with_drop_oldest_watermark_drops_counted_and_never_crashes(
    small_disk: SmallDisk, agent_factory: Any
) -> None:
    """drop_oldest with a free-space watermark on a disk filled to the last page (the drop ledger
    itself cannot be written before a segment is deleted): the agent keeps running, frees space by
    dropping the oldest segments, counts each dropped record exactly (= ACKed records no longer in
    the WAL), logs each drop in drops.log, accepts again, and the WAL verifies clean."""
    disk = small_disk
    if disk.tmpfs:
        reason = "disk_free_watermark"
        settings = disk.agent_settings(disk_policy="drop_oldest", wal_min_free="512KiB")
    else:  # no small disk to watch: the size cap drops instead (segments below the file size limit)
        reason = "wal_size_cap"
        settings = disk.agent_settings(disk_policy="drop_oldest", segment_size="256KiB", wal_max_size="1MiB")
    agent = agent_factory(**settings)
    sender = Sender(agent, pad=6000)
    try:
        if disk.tmpfs:
            sender.send_until("disk_full", timeout=20, interval=0)  # faster than the once-a-second policy
            disk.fill_up()
            wait_until(lambda: agent.stats()["wal"]["dropped_records"], 5, message="a drop")
        else:
            for _ in range(150):  # ~2.7 MB, paced over > 1 s so that maintain() drops meanwhile
                sender.send()
                time.sleep(0.008)
        assert agent.running, agent.stderr_text[-3000:]
        sender.send_until("ack", timeout=5, interval=0.1)
        time.sleep(1.2)  # let one more maintain() run, then stop
    finally:
        sender.close()
    stats = agent.stats()
    assert agent.terminate() == 0
    assert {k: v for k, v in stats["rejected_messages"].items() if v} == dict(sender.reject_reasons)
    assert stats["records_received"] * sender.items == len(sender.acked)
    names = dumped_names(agent.dump())
    counts = Counter(names)
    assert max(counts.values()) == 1
    lost = [n for n in sender.acked if n not in counts]
    dropped = stats["wal"]["dropped_records"]
    assert lost and dropped == {reason: len(lost) // sender.items}, (dropped, len(lost))
    assert stats["wal"]["dropped_items"] == {reason: len(lost)}
    ledger = drops_ledger(agent.wal_dir)
    assert sum(int(e["records"]) for e in ledger) == len(lost) // sender.items
    assert all(e["reason"] == reason for e in ledger)
    # Oldest first: everything lost precedes everything kept.
    seq_of = {n: int(n[1:].split("-")[0]) for n in sender.acked}
    assert max(seq_of[n] for n in lost) < min(seq_of[n] for n in names)
    assert not set(sender.rejected) & set(names)
    code, report = agent.verify()
    assert code == 0 and report["clean"], report


# ---------------------------------------------------------------------------------------------- policy
def test_drop_oldest_size_cap_drops_oldest_segments_counted_exactly(agent_factory: Any) -> None:
    """--wal-max-size with drop_oldest: nothing is rejected; the oldest segments are deleted;
    dropped_records["wal_size_cap"] == exactly the ACKed records no longer in the WAL, each range in
    drops.log; a consumer reading from the start counts the same gap; the WAL verifies clean."""
    agent = agent_factory(fsync="always", segment_size="64KiB", wal_max_size="256KiB", disk_policy="drop_oldest")
    sender = Sender(agent, items=2, pad=2000)
    try:
        for _ in range(250):  # ~1 MiB: 4x the cap
            assert sender.send() == "ack"
            time.sleep(0.004)
        time.sleep(1.2)  # one more maintain() after the last write
        stats = sender.stats()
    finally:
        sender.close()
    assert stats["wal"]["bytes"] <= 256 * 1024
    assert agent.terminate() == 0
    names = dumped_names(agent.dump())
    assert max(Counter(names).values()) == 1
    lost = [n for n in sender.acked if n not in set(names)]
    lost_records = len(lost) // sender.items
    assert lost_records > 0
    assert stats["wal"]["dropped_records"] == {"wal_size_cap": lost_records}
    assert stats["wal"]["dropped_items"] == {"wal_size_cap": len(lost)}
    assert sorted(lost) == sorted(sender.acked[: len(lost)]), "dropped records are not the oldest ones"
    ledger = drops_ledger(agent.wal_dir)
    assert ledger and all(e["reason"] == "wal_size_cap" for e in ledger)
    covered = sorted(s for e in ledger for s in range(int(e["first_seq"]), int(e["last_seq"]) + 1))
    assert covered == list(range(1, lost_records + 1)), "drops.log does not cover exactly the lost seqs"
    reader = WalReader(agent.wal_dir)
    try:
        while reader.read(max_records=10_000):
            pass
        assert reader.stats.gap_records == lost_records
        assert reader.stats.corrupt_records_skipped == 0
    finally:
        reader.close()
    code, report = agent.verify()
    assert code == 0 and report["clean"], report


def test_reject_new_size_cap_rejects_new_exactly_and_drops_nothing(agent_factory: Any) -> None:
    """--wal-max-size with reject_new: nothing is ever dropped; once over the cap new messages get
    REJECT disk_full (counted exactly, items too); every ACKed record stays in the WAL; after the
    consumer commits, the agent deletes consumed segments and accepts again within a few seconds."""
    agent = agent_factory(fsync="always", segment_size="64KiB", wal_max_size="256KiB", disk_policy="reject_new")
    sender = Sender(agent, items=2, pad=2000)
    try:
        started = time.monotonic()
        while sender.reject_reasons["disk_full"] < 20:
            sender.send()
            time.sleep(0.004)
            assert time.monotonic() - started < 15, "never rejected"
        stats = sender.stats()
        assert stats["wal"]["dropped_records"] == {} and not stats["wal"]["accepting"]
        overshoot = stats["wal"]["bytes"] - 256 * 1024
        consumed = consume_all(agent.wal_dir)
        assert sorted(consumed) == sorted(sender.acked)
        recovered = sender.send_until("ack", timeout=5, interval=0.1)
        stats = sender.stats()
        assert stats["wal"]["dropped_records"] == {}
    finally:
        sender.close()
    assert agent.terminate() == 0
    check_wal(agent, sender.acked, sender.rejected, consumed)
    print(
        f"reject_new: {dict(sender.reject_reasons)} rejected; the WAL overshot the cap by {overshoot} "
        f"bytes before the once-a-second check; accepting again {recovered:.2f}s after the commit"
    )


LEDGER_APPEND = r"""
import signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past RLIMIT_FSIZE: EFBIG, like the agent
from automagik_telemetry_agent.wal.durable import append_line_durably
try:
    append_line_durably(sys.argv[1], "2 first_seq=2 last_seq=9 records=8 items=8 reason=" + "y" * 60)
except OSError as exc:
    print("error", exc.errno)
else:
    print("ok")
"""


def test_drop_ledger_line_is_all_or_nothing_on_a_full_disk(small_disk: SmallDisk) -> None:
    """A drops.log line that only partly fits (the disk fills mid-line) is rolled back and reported as
    an error, never left torn: a torn line would glue onto the next one and hide a drop from verify."""
    disk = small_disk
    first = "1 first_seq=1 last_seq=1 records=1 items=1 reason="
    first += "x" * (4096 - 30 - len(first) - 1) + "\n"  # 30 bytes left in the file's first page
    path = disk.root / "drops.log"
    path.write_text(first)
    disk.fill_up()
    limit = os.path.getsize(path) + 30  # fallback: the file may grow by 30 bytes only

    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run(
        [sys.executable, "-c", LEDGER_APPEND, str(path)],
        capture_output=True,
        text=True,
        env=agent_env(),
        timeout=30,
        preexec_fn=None if disk.tmpfs else preexec,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "error", f"a line that did not fit was written: {result.stdout}"
    assert path.read_text() == first, "a torn line was left in the ledger"
