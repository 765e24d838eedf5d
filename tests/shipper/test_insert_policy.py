"""The fleet insert policy (shipper/insert_policy.py): a model fleet converges on the target insert rate; the
shipper follows the policy, backs off longer on TOO_MANY_PARTS and ends other backoffs when a probe answers."""

from __future__ import annotations

import itertools
import random
import time
from pathlib import Path

import pytest

from automagik_telemetry_agent.clickhouse.errors import ErrorClass
from automagik_telemetry_agent.clickhouse.load import LoadSample, load_sql
from automagik_telemetry_agent.clickhouse.sink import InsertResult
from automagik_telemetry_agent.metrics.catalogue import POLICY_ADJUSTMENTS
from automagik_telemetry_agent.shipper.insert_policy import (
    STATE_FILE,
    Adjustment,
    InsertPolicy,
    PolicyMode,
    PolicySettings,
    load_wait,
    save_wait,
)
from automagik_telemetry_agent.shipper.loop import Shipper
from automagik_telemetry_agent.wal import read_cursor

from .shipper_helpers import ShipperThread, fast_options, span, wait_for, write_wal
from .test_shipper_unit import FakeSink

ENDPOINTS = ("http://a:8123", "http://b:8123")


class Shard:
    """A model shard: N agents, each inserting every ``wait`` seconds; its InsertQuery counter."""

    def __init__(self, agents: int, settings: PolicySettings, parts: int = 0) -> None:
        self.policies = [InsertPolicy(settings, rand=random.Random(i)) for i in range(agents)]
        self.inserts = 0.0
        self.now = 0.0
        self.parts = parts

    def rate(self) -> float:
        return sum(1 / p.wait_s for p in self.policies)

    def step(self, seconds: float = 10.0) -> None:
        """``seconds`` of inserting at every agent's current wait, then every agent reads the shard."""
        self.inserts += self.rate() * seconds
        self.now += seconds
        reading = LoadSample(ENDPOINTS, int(self.inserts), self.parts, 150)
        for p in self.policies:
            p.observe(self.now, reading)


@pytest.mark.parametrize("agents", [50, 1000])
def test_a_fleet_converges_on_the_target_insert_rate(agents: int) -> None:
    settings = PolicySettings(PolicyMode.FLEET, batch_wait_s=1.0, batch_wait_max_s=300.0, target_inserts_per_s=10.0)
    shard = Shard(agents, settings)
    assert shard.rate() == pytest.approx(agents)  # one insert per agent per second before the policy acts
    for _ in range(12):
        shard.step()
    assert 7.0 <= shard.rate() <= 10.0 * 1.05, shard.rate()
    assert shard.policies[0].wait_s == pytest.approx(agents / shard.rate(), rel=0.01)
    assert shard.policies[0].adjustments[Adjustment.BUSY] >= 3


def test_the_wait_stays_inside_its_bounds_and_the_fleet_stays_busy_when_the_cap_is_reached() -> None:
    settings = PolicySettings(PolicyMode.FLEET, batch_wait_s=1.0, batch_wait_max_s=30.0, target_inserts_per_s=10.0)
    shard = Shard(1000, settings)
    for _ in range(20):
        shard.step()
    assert shard.policies[0].wait_s == 30.0  # capped: the latency bound wins over the target
    assert shard.rate() == pytest.approx(1000 / 30)


def test_a_quiet_shard_brings_the_wait_back_to_batch_wait() -> None:
    settings = PolicySettings(PolicyMode.FLEET, batch_wait_s=1.0, batch_wait_max_s=30.0, target_inserts_per_s=10.0)
    shard = Shard(50, settings)
    for _ in range(10):
        shard.step()
    assert shard.policies[0].wait_s > 3.0
    del shard.policies[5:]  # 45 of the 50 agents leave
    for _ in range(15):
        shard.step()
    assert shard.policies[0].wait_s < 2.0
    assert shard.policies[0].adjustments[Adjustment.QUIET] >= 1


def test_a_single_agent_on_its_own_server_keeps_batch_wait() -> None:
    settings = PolicySettings(PolicyMode.FLEET, batch_wait_s=1.0, batch_wait_max_s=30.0, target_inserts_per_s=10.0)
    shard = Shard(3, settings)  # three signals' shippers of one agent: 3 inserts/s
    for _ in range(10):
        shard.step()
    assert all(p.wait_s == 1.0 for p in shard.policies)
    assert sum(shard.policies[0].adjustments.values()) == 0


def test_parts_pressure_doubles_the_wait_and_too_many_parts_jumps_to_the_cap() -> None:
    settings = PolicySettings(PolicyMode.FLEET, batch_wait_s=1.0, batch_wait_max_s=30.0, target_inserts_per_s=10.0)
    policy = InsertPolicy(settings)
    policy.observe(10.0, LoadSample(ENDPOINTS, 0, 76, 150))  # more than half of parts_to_delay_insert
    assert policy.wait_s == 2.0
    policy.observe(20.0, LoadSample(ENDPOINTS, 0, 76, 150))
    assert policy.wait_s == 4.0 and policy.adjustments[Adjustment.PARTS_PRESSURE] == 2
    policy.too_many_parts()
    assert policy.wait_s == 30.0 and policy.adjustments[Adjustment.TOO_MANY_PARTS] == 1


def test_under_parts_pressure_the_rate_is_still_read() -> None:
    policy = InsertPolicy(PolicySettings(PolicyMode.FLEET, target_inserts_per_s=10.0))
    policy.observe(0.0, LoadSample(ENDPOINTS, 0, 100, 150))
    policy.observe(10.0, LoadSample(ENDPOINTS, 300, 100, 150))
    assert policy.server_inserts_per_s == pytest.approx(30.0) and policy.wait_s == 4.0  # doubled twice


def test_a_restarted_shipper_starts_at_the_wait_it_kept_and_keeps_every_change(tmp_path: Path) -> None:
    kept = str(tmp_path / "state" / STATE_FILE)
    assert load_wait(kept) is None
    policy = InsertPolicy(
        PolicySettings(PolicyMode.FLEET, batch_wait_max_s=30.0), on_change=lambda w: save_wait(kept, w)
    )
    policy.too_many_parts()
    assert load_wait(kept) == 30.0
    again = InsertPolicy(PolicySettings(PolicyMode.FLEET, batch_wait_max_s=20.0), initial_wait_s=load_wait(kept))
    assert again.wait_s == 20.0  # clamped into the new bounds
    Path(kept).write_text('{"batch_wait_s": "x"}')
    assert load_wait(kept) is None  # unreadable: start afresh at batch_wait
    Path(kept).write_text("not json")
    assert load_wait(kept) is None


def test_the_first_reading_comes_soon_after_a_start() -> None:
    now = [0.0]
    calls: list[float] = []

    def sampler() -> LoadSample:
        calls.append(now[0])
        return LoadSample(ENDPOINTS, 0, 0, 150)

    policy = InsertPolicy(PolicySettings(PolicyMode.FLEET, sample_interval_s=10.0), sampler, clock=lambda: now[0])
    for t in range(0, 30):
        now[0] = t / 10
        policy.maybe_sample()
    assert len(calls) == 1 and calls[0] <= 2.0


def test_a_reading_of_other_servers_or_a_restarted_counter_gives_no_rate() -> None:
    settings = PolicySettings(PolicyMode.FLEET, target_inserts_per_s=1.0)
    policy = InsertPolicy(settings)
    policy.observe(0.0, LoadSample(ENDPOINTS, 1000, 0, 150))
    policy.observe(10.0, LoadSample(ENDPOINTS[:1], 5000, 0, 150))  # failed over: another set of servers
    assert policy.server_inserts_per_s is None and policy.wait_s == 1.0
    policy.observe(20.0, LoadSample(ENDPOINTS[:1], 10, 0, 150))  # that server restarted: its counter went back
    assert policy.server_inserts_per_s is None and policy.wait_s == 1.0
    policy.observe(30.0, LoadSample(ENDPOINTS[:1], 410, 0, 150))
    assert policy.server_inserts_per_s == pytest.approx(40.0) and policy.wait_s == 2.0  # sqrt(40) capped at x2


def test_fixed_never_moves_and_starts_at_once() -> None:
    settings = PolicySettings(PolicyMode.FIXED, batch_wait_s=1.5, batch_wait_max_s=30.0, target_inserts_per_s=1.0)
    policy = InsertPolicy(settings, sampler=lambda: pytest.fail("fixed must not read the server"))
    policy.maybe_sample()
    policy.observe(0.0, LoadSample(ENDPOINTS, 0, 299, 150))
    policy.too_many_parts()
    assert policy.wait_s == 1.5 and policy.start_delay() == 0.0


def test_a_restart_at_a_stretched_wait_is_jittered_over_it_and_a_fresh_start_is_not() -> None:
    settings = PolicySettings(PolicyMode.FLEET, batch_wait_s=1.0, batch_wait_max_s=30.0)
    delays = [InsertPolicy(settings, rand=random.Random(i), initial_wait_s=8.0).start_delay() for i in range(200)]
    assert all(0 <= d < 8.0 for d in delays)
    assert max(delays) - min(delays) > 6.0  # spread over the wait, not in lockstep
    assert InsertPolicy(settings).start_delay() == 0.0  # at batch_wait: the first spans go at once


def test_a_steady_shard_is_read_once_per_interval_with_jitter() -> None:
    now = [0.0]
    calls: list[float] = []

    def sampler() -> LoadSample:
        calls.append(now[0])
        return LoadSample(ENDPOINTS, int(now[0] * 8), 0, 150)  # 8 inserts/s: in the dead band of target 10

    policy = InsertPolicy(PolicySettings(PolicyMode.FLEET, sample_interval_s=10.0), sampler, clock=lambda: now[0])
    for t in range(0, 1000):
        now[0] = t / 10
        policy.maybe_sample()
    assert 8 <= len(calls) <= 13
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert 2.6 <= gaps[0] <= 4.1, "the first rate comes a third of an interval after the baseline"
    assert all(7.9 <= g <= 12.1 for g in gaps[1:]), gaps


def test_while_the_wait_rises_the_next_reading_comes_after_two_batches_at_the_new_wait() -> None:
    """50 agents started at once at batch_wait 1 s: with a reading every 10 s and x2 at most per reading,
    the wait took ~40 s to reach 8 s and the parts hit the throw limit first (bench_fleet)."""
    now = [0.0]
    calls: list[tuple[float, float]] = []
    policy: InsertPolicy

    def sampler() -> LoadSample:
        calls.append((now[0], policy.wait_s))
        return LoadSample(ENDPOINTS, int(now[0] * 100), 0, 150)  # 100 inserts/s against a target of 10

    policy = InsertPolicy(
        PolicySettings(PolicyMode.FLEET, sample_interval_s=10.0, batch_wait_max_s=30.0), sampler, clock=lambda: now[0]
    )
    reached: float | None = None
    for t in range(0, 600):
        now[0] = t / 10
        policy.maybe_sample()
        if reached is None and policy.wait_s >= 8.0:
            reached = now[0]
    for (t0, _), (t1, wait) in itertools.pairwise(calls):
        expected = min(10.0, max(10.0 / 3, 2 * wait))
        if wait < 30.0:
            assert 0.8 * expected - 0.1 <= t1 - t0 <= 1.2 * expected + 0.1, (t0, t1, wait)
    assert reached is not None and reached <= 20.0, f"the wait reached 8 s only at t = {reached} s (was ~31 s)"


def test_a_reload_clamps_the_wait_into_the_new_bounds() -> None:
    policy = InsertPolicy(PolicySettings(PolicyMode.FLEET, batch_wait_max_s=30.0))
    policy.too_many_parts()
    policy.update(PolicySettings(PolicyMode.FLEET, batch_wait_max_s=5.0))
    assert policy.wait_s == 5.0


def test_the_load_query_quotes_its_names() -> None:
    sql = load_sql("telemetry", "traces_local")
    assert "database = 'telemetry' AND table = 'traces_local'" in sql and "InsertQuery" in sql


# ------------------------------------------------------------------ the shipper under the policy


class PartsSink(FakeSink):
    """Answers TOO_MANY_PARTS ``refusals`` times, then stores; records every probe asked."""

    def __init__(self, refusals: int) -> None:
        super().__init__()
        self.refusals = refusals
        self.probes: list[InsertResult] = []

    def insert(self, body: bytes, token: str | None = None) -> InsertResult:
        if self.refusals:
            self.refusals -= 1
            self.sent.append((body, token))
            return InsertResult(False, ErrorClass.TRANSIENT, 252, "Code: 252, Too many parts (300)", 500)
        return super().insert(body, token)

    def probe(self, last: InsertResult) -> bool:
        self.probes.append(last)
        return True  # were it asked, the backoff would end at once: the test sees whether it was


def test_too_many_parts_sends_the_policy_to_its_cap_and_waits_out_a_longer_backoff(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    seqs = write_wal(wal, [[span(i) for i in range(20)]])
    sink = PartsSink(refusals=2)
    policy = InsertPolicy(PolicySettings(PolicyMode.FLEET, batch_wait_s=0.1, batch_wait_max_s=5.0))
    options = fast_options(tmp_path, backoff_base_s=0.01, backoff_cap_s=1.0, probe_interval_s=0.01)
    shipper = Shipper(str(wal), sink, options, policy=policy)
    with ShipperThread(shipper) as t:
        wait_for(lambda: read_cursor(str(wal)).seq == seqs[-1], 10, "committed")
        t.stop()
    assert len(sink.stored) == 20 and len(set(sink.sent)) == 1  # the same batch, stored once
    assert policy.wait_s == 5.0 and policy.adjustments[Adjustment.TOO_MANY_PARTS] == 1  # the second: at the cap
    assert sink.probes == []  # a 252 backoff is never cut short by a probe
    assert shipper.batch_wait() == 5.0


def test_probes_cut_a_transient_backoff_short(tmp_path: Path) -> None:
    """A 60 s backoff after a broken connection ends at the first probe that answers."""
    wal = tmp_path / "wal"
    seqs = write_wal(wal, [[span(i) for i in range(5)]])

    class Flaky(FakeSink):
        probed = 0

        def probe(self, last: InsertResult) -> bool:
            self.probed += 1
            return self.probed >= 2

    sink = Flaky(connection_errors=1)
    options = fast_options(tmp_path, backoff_base_s=60.0, backoff_cap_s=60.0, probe_interval_s=0.05)
    shipper = Shipper(str(wal), sink, options)
    started = time.monotonic()
    with ShipperThread(shipper) as t:
        wait_for(lambda: read_cursor(str(wal)).seq == seqs[-1], 10, "committed")
        t.stop()
    assert time.monotonic() - started < 5.0  # not the backoff's up to 60 s
    assert sink.probed == 2 and shipper.stats.probes == 2 and shipper.stats.probe_recoveries == 1


def test_a_reading_the_server_is_too_slow_to_answer_doubles_the_wait() -> None:
    policy = InsertPolicy(PolicySettings(PolicyMode.FLEET, batch_wait_max_s=30.0))
    policy.observe(0.0, LoadSample(ENDPOINTS, 0, 0, 150, slow=True))
    policy.observe(10.0, LoadSample(ENDPOINTS, 0, 0, 150, slow=True))
    assert policy.wait_s == 4.0 and policy.adjustments[Adjustment.SLOW_SERVER] == 2
    assert policy.server_inserts_per_s is None  # a slow reading has no figures to keep


def test_the_adjustment_reasons_the_metrics_initialise_are_the_policys() -> None:
    assert set(POLICY_ADJUSTMENTS) == {a.value for a in Adjustment}
