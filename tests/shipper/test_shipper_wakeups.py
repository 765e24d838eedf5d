"""When the shipper looks at the WAL: on the writer's writes (an inotify watch), not every few milliseconds.

An idle shipper used to list the WAL directory 20 times a second in each of its three signal threads
(about 1.7 % of a core per agent doing nothing); these tests pin down that it now waits for writes,
still ships at once after a quiet spell, still fills batches under a fast stream, stops promptly, and
falls back to polling where there is no inotify.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from automagik_telemetry_agent.shipper.group import ShipperGroup
from automagik_telemetry_agent.shipper.loop import Shipper
from automagik_telemetry_agent.wal import read_cursor
from automagik_telemetry_agent.wal import watch as watch_module
from automagik_telemetry_agent.wal.reader import WalReader
from automagik_telemetry_agent.wal.signals import Signal

from .shipper_helpers import ShipperThread, fast_options, span, wait_for, write_wal
from .test_shipper_unit import FakeSink


class _CountedReads:
    """Counts WalReader.read calls (all readers of the process)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        original = WalReader.read

        def read(reader: WalReader, *args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return original(reader, *args, **kwargs)

        monkeypatch.setattr(WalReader, "read", read)


def test_an_idle_shipper_looks_at_the_wal_about_once_a_second_not_twenty_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wal = tmp_path / "wal"
    write_wal(wal, [[span(0)]])
    reads = _CountedReads(monkeypatch)
    sink = FakeSink()
    shipper = Shipper(str(wal), sink, fast_options(tmp_path, poll_interval_s=0.05, idle_wait_s=1.0))
    with ShipperThread(shipper) as t:
        wait_for(lambda: len(sink.stored) == 1, 10, "the span shipped")
        time.sleep(0.5)  # its commit, then idle
        before = reads.calls
        time.sleep(3.0)
        idle_reads = reads.calls - before
        t.stop()
    assert idle_reads <= 6, f"{idle_reads} reads in 3 s idle (polling every 50 ms would be ~60)"


def test_a_write_after_a_quiet_spell_wakes_the_shipper_without_any_polling(tmp_path: Path) -> None:
    """Every timed wait is 30 s here: only the watch can make the span go within seconds."""
    wal = tmp_path / "wal"
    wal.mkdir()
    sink = FakeSink()
    options = fast_options(tmp_path, poll_interval_s=30.0, idle_wait_s=30.0, quiet_signal_wait_s=30.0)
    shipper = Shipper(str(wal), sink, options)
    with ShipperThread(shipper) as t:
        wait_for(lambda: shipper.reader is not None, 10, "the shipper reading")
        time.sleep(0.5)  # it has read the empty WAL and waits
        written = time.monotonic()
        write_wal(wal, [[span(1)]])
        wait_for(lambda: len(sink.stored) == 1, 10, "the span sent")
        woke_after = time.monotonic() - written
        t.shipper.request_stop(0.0)
        t.thread.join(5)
    assert woke_after < 3.0


def test_a_stop_ends_a_long_wait_for_a_write_at_once(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    wal.mkdir()
    shipper = Shipper(str(wal), FakeSink(), fast_options(tmp_path, poll_interval_s=30.0, idle_wait_s=30.0))
    t = ShipperThread(shipper).__enter__()
    wait_for(lambda: shipper.reader is not None, 10, "the shipper reading")
    time.sleep(0.3)
    asked = time.monotonic()
    t.stop(timeout=10)
    assert time.monotonic() - asked < 2.0


def test_a_fast_stream_still_fills_batches_long_before_batch_wait(tmp_path: Path) -> None:
    """While a partial batch is collected the loop does not look at every write, but it must still see
    the batch reach half of batch_rows (when it may go) at the rate it is filling, not at batch_wait."""
    wal = tmp_path / "wal"
    first = write_wal(wal, [[span(0)]])
    sink = FakeSink()
    shipper = Shipper(str(wal), sink, fast_options(tmp_path, batch_wait_s=8.0, batch_rows=1000, poll_interval_s=0.05))
    with ShipperThread(shipper) as t:
        wait_for(lambda: read_cursor(str(wal)).seq == first[-1], 10, "the first span committed")
        began = time.monotonic()
        last = 0
        for r in range(9):  # 540 spans in ~0.5 s: the batch may go at 500
            last = write_wal(wal, [[span(1 + r * 60 + i) for i in range(60)]])[-1]
            time.sleep(0.05)
        wait_for(lambda: read_cursor(str(wal)).seq == last, 10, "the stream committed")
        took = time.monotonic() - began
        t.stop()
    assert took < 4.0, f"the half-full batch went after {took:.1f} s (batch_wait 8 s)"
    assert [len(body.splitlines()) for body, _ in sink.sent] == [1, 540]


def test_without_inotify_the_shipper_polls_and_ships_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watch_module.WalWatch, "open", classmethod(lambda cls, wal_dir: None))
    wal = tmp_path / "wal"
    wal.mkdir()
    sink = FakeSink()
    shipper = Shipper(str(wal), sink, fast_options(tmp_path))
    with ShipperThread(shipper) as t:
        wait_for(lambda: shipper.reader is not None, 10, "the shipper reading")
        for r in range(5):
            write_wal(wal, [[span(r * 10 + i) for i in range(10)]])
            time.sleep(0.05)
        wait_for(lambda: len(sink.stored) == 50, 10, "every span sent")
        t.stop()


def test_the_three_signals_share_one_watch_per_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """inotify instances are few (128 per user by default) and a host may run many agents: one each."""
    opened: list[str] = []
    original = watch_module.WalWatch.open.__func__  # type: ignore[attr-defined]

    def counting_open(cls: type[watch_module.WalWatch], wal_dir: str) -> watch_module.WalWatch | None:
        opened.append(wal_dir)
        return original(cls, wal_dir)  # type: ignore[no-any-return]

    monkeypatch.setattr(watch_module.WalWatch, "open", classmethod(counting_open))
    wal = tmp_path / "wal"
    write_wal(wal, [[span(0)]])
    sinks = {signal: FakeSink() for signal in Signal}
    group = ShipperGroup(str(wal), sinks, fast_options(tmp_path))
    runner = threading.Thread(target=group.run, daemon=True)
    runner.start()
    wait_for(lambda: len(sinks[Signal.TRACES].stored) == 1, 10, "the span shipped")
    group.request_stop(0.0)
    runner.join(10)
    assert not runner.is_alive()
    assert opened == [str(wal)]
    assert group.watch is not None and group.watch.closed, "the group closes the watch it opened"
