"""The group committer (``wal/syncer.py``): every write is made durable within one interval (at once after a
quiet spell or past ``max_bytes``), a stream of writes gets at most one fsync per interval, and an idle
committer sleeps instead of ticking."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import pytest

from automagik_telemetry_agent.wal import WalOptions, WalWriter
from automagik_telemetry_agent.wal.syncer import GroupCommitter


class Recorder:
    def __init__(self) -> None:
        self.durable: list[int] = []
        self.changed = threading.Condition()

    def __call__(self, seq: int) -> None:
        with self.changed:
            self.durable.append(seq)
            self.changed.notify_all()

    def wait_for(self, seq: int, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: bool(self.durable) and self.durable[-1] >= seq, timeout)


def _writer(tmp_path: Path) -> WalWriter:
    return WalWriter(str(tmp_path / "wal"), WalOptions(min_free_bytes=0)).open()


def _append(writer: WalWriter, committer: GroupCommitter) -> int:
    payload = b'{"resource":{}}\n{"name":"x"}\n'
    seq = writer.append(payload, 1)
    writer.flush()
    committer.written(len(payload))
    return seq


def test_every_write_becomes_durable_within_one_interval(tmp_path: Path) -> None:
    writer = _writer(tmp_path)
    durable = Recorder()
    committer = GroupCommitter(writer, 0.05, 1 << 30, durable)
    committer.start()
    try:
        for _ in range(5):
            started = time.monotonic()
            seq = _append(writer, committer)
            assert durable.wait_for(seq, 2.0), f"seq {seq} never reported durable"
            assert time.monotonic() - started < 0.05 + 0.5  # one interval plus scheduling slack
            assert writer.durable_seq >= seq
            time.sleep(0.12)  # let it go idle between writes
    finally:
        committer.stop()
        writer.close()


def _counting_syncs(writer: WalWriter, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The monotonic times at which ``writer.sync`` was called."""
    calls: list[float] = []
    real_sync = writer.sync
    monkeypatch.setattr(writer, "sync", lambda: calls.append(time.monotonic()) or real_sync())
    return calls


def test_an_idle_committer_does_not_sync_and_a_write_after_a_quiet_spell_is_synced_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = _writer(tmp_path)
    durable = Recorder()
    committer = GroupCommitter(writer, 5.0, 1 << 30, durable)  # a 5 s interval: "at once" is far below it
    syncs = _counting_syncs(writer, monkeypatch)
    committer.start()
    try:
        time.sleep(0.3)  # nothing written
        assert syncs == []
        started = time.monotonic()
        seq = _append(writer, committer)
        assert durable.wait_for(seq, 2.0)
        assert time.monotonic() - started < 0.5, "a write after a quiet spell waited for a timer"
        time.sleep(0.3)  # idle again: no further syncs
        assert len(syncs) == 1
    finally:
        committer.stop()
        writer.close()


def test_a_continuous_stream_is_synced_at_most_once_per_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = _writer(tmp_path)
    durable = Recorder()
    interval = 0.1
    committer = GroupCommitter(writer, interval, 1 << 30, durable)
    syncs = _counting_syncs(writer, monkeypatch)
    committer.start()
    try:
        started = time.monotonic()
        seq = 0
        while time.monotonic() - started < 0.6:  # a write every ~2 ms
            seq = _append(writer, committer)
            time.sleep(0.002)
        assert durable.wait_for(seq, 2.0)
    finally:
        committer.stop()
        writer.close()
    gaps = [b - a for a, b in itertools.pairwise(syncs)]
    assert 3 <= len(syncs) <= 0.6 / interval + 2, syncs
    assert min(gaps) >= interval * 0.9, gaps  # grouped: never two fsyncs within one interval


def test_max_bytes_syncs_at_once_without_waiting_for_the_interval(tmp_path: Path) -> None:
    writer = _writer(tmp_path)
    durable = Recorder()
    committer = GroupCommitter(writer, 30.0, 1, durable)  # a 30 s interval: only max_bytes can explain a sync
    committer.start()
    try:
        seq = _append(writer, committer)
        assert durable.wait_for(seq, 2.0)
    finally:
        committer.stop()
        writer.close()


def test_stop_wakes_an_idle_committer_promptly(tmp_path: Path) -> None:
    writer = _writer(tmp_path)
    committer = GroupCommitter(writer, 30.0, 1 << 30, Recorder())
    committer.start()
    time.sleep(0.05)
    started = time.monotonic()
    committer.stop()
    assert time.monotonic() - started < 2.0
    assert not committer._thread.is_alive()
    writer.close()
