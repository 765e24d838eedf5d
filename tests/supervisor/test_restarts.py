"""The supervisor restarts a child that dies or hangs, without losing what clients were told is durable,
and gives up (exit 3, one line naming the child and why) on a child that cannot start.

Real processes throughout: ``automagik-telemetry agent`` with its ingest (and shipper) children.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

from agent_process import AgentProcess, RawClient, dumped_names, record_line, wait_until

from .conftest import NotifyListener, freeze, pid_alive


def _send(client: RawClient, names: list[str], first_seq: int) -> int:
    """One RECORDS message per name (one span each); the last seq used."""
    seq = first_seq - 1
    for seq, name in enumerate(names, start=first_seq):
        client.send_records([record_line(name)], seq=seq)
    return seq


def test_killed_ingest_is_restarted_and_spans_acked_before_and_sent_after_are_all_in_the_wal(
    supervised: Callable[..., AgentProcess],
) -> None:
    agent = supervised().start()
    before = [f"before-{i}" for i in range(50)]
    with RawClient(agent.socket_path) as a:
        assert a.wait_ack(_send(a, before, 1))
    old = agent.child_pid("ingest")
    os.kill(old, signal.SIGKILL)
    new = wait_until(
        lambda: (pid := agent.children().get("ingest")) not in (None, old) and pid, 10, message="a new ingest process"
    )
    after = [f"after-{i}" for i in range(50)]
    with RawClient(agent.socket_path) as c:
        assert c.wait_ack(_send(c, after, 1), timeout=10)
    assert agent.children()["ingest"] == new
    assert f"ingest (pid {old}) was killed by SIGKILL; restarting it in 0.0 s" in agent.stderr_text
    assert agent.terminate() == 0
    assert sorted(dumped_names(agent.dump())) == sorted(before + after)  # each exactly once


def test_a_client_queued_while_ingest_is_down_is_served_by_the_next_ingest(
    supervised: Callable[..., AgentProcess],
) -> None:
    """The supervisor owns the listening socket: a connection waiting in its backlog survives ingest."""
    agent = supervised().start()
    old = agent.child_pid("ingest")
    freeze(old)  # this ingest will never accept again
    queued = [f"queued-{i}" for i in range(20)]
    with RawClient(agent.socket_path, timeout=10) as waiting:  # connect() completes in the backlog
        last = _send(waiting, queued, 1)
        os.kill(old, signal.SIGKILL)
        assert waiting.wait_ack(last, timeout=10)  # read, stored and acknowledged by the new ingest
    assert agent.children()["ingest"] != old
    assert agent.terminate() == 0
    assert sorted(dumped_names(agent.dump())) == sorted(queued)


def test_ingest_that_cannot_start_ends_the_supervisor_with_exit_3_and_one_line_why(
    supervised: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    wal = tmp_path / "wal"
    (wal / "LOCK").mkdir(parents=True)  # the WAL lock file is a directory: the WAL cannot be opened
    agent = supervised(wal_dir=wal).start(wait=False)
    assert agent.wait_exit(20) == 3
    lines = [line for line in agent.stderr_text.splitlines() if "cannot start" in line]
    assert len(lines) == 1, agent.stderr_text
    assert "ingest cannot start: exited with code 2: cannot use WAL directory" in lines[0]
    assert "Is a directory" in lines[0] and "giving up (exit 3)" in lines[0]
    assert "\nready\n" not in agent.stderr_text
    assert agent.stderr_text.count("ingest started") == 1  # a configuration error is not retried


def test_shipper_dying_before_ready_is_retried_then_given_up_and_ingest_is_stopped_cleanly(
    supervised: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    wal = tmp_path / "wal"
    (wal / "consumer.lock").mkdir(parents=True)  # every shipper crashes before it holds the WAL
    agent = supervised(wal_dir=wal, sink="clickhouse", clickhouse_endpoint="http://127.0.0.1:9").start()
    started = time.monotonic()
    assert agent.wait_exit(30) == 3
    text = agent.stderr_text
    assert text.count("shipper started") == 3  # RestartPolicy.start_retries
    assert (
        "shipper cannot start: died 3 times in a row before it was ready; last time it exited with code 1: "
        "IsADirectoryError" in text
    )
    assert "ingest (pid" in text and "stopped: exited with code 0" in text  # the other child, stopped cleanly
    assert time.monotonic() - started < 15


def test_a_hung_child_is_killed_and_restarted_and_watchdog_pings_stop_meanwhile(
    supervised: Callable[..., AgentProcess], notify_socket: NotifyListener
) -> None:
    agent = supervised(heartbeat_timeout="3s", env=notify_socket.env(watchdog_usec=400_000)).start()
    wait_until(lambda: len(notify_socket.times("WATCHDOG")) >= 3, 5, message="regular watchdog pings")
    old = agent.child_pid("ingest")
    frozen = time.monotonic()
    freeze(old)  # alive to waitpid(), silent to the supervisor
    new = wait_until(
        lambda: (pid := agent.children().get("ingest")) not in (None, old) and pid,
        15,
        message="the hung ingest to be replaced",
    )
    replaced = time.monotonic()
    wait_until(
        lambda: any(t > replaced for t in notify_socket.times("WATCHDOG")),
        5,
        message="watchdog pings to resume once the new ingest is ready",
    )
    assert not pid_alive(old)
    assert f"ingest (pid {old}) is hung: no progress for 3 s" in agent.stderr_text
    pings = notify_socket.times("WATCHDOG")
    assert max(b - a for a, b in itertools.pairwise(pings) if b > frozen) >= 1.5  # none while unhealthy
    assert not [t for t in pings if frozen + 2.0 < t < replaced - 0.5]  # silent from ~1.5 s in until the kill
    with RawClient(agent.socket_path) as client:
        assert client.wait_ack(_send(client, ["after-hang"], 1))
    assert agent.children()["ingest"] == new
    assert agent.terminate() == 0


def test_kill9_of_the_supervisor_leaves_no_child_behind(supervised: Callable[..., AgentProcess]) -> None:
    agent = supervised(sink="clickhouse", clickhouse_endpoint="http://127.0.0.1:9").start()
    agent.child_pid("shipper")
    children = agent.children()
    assert sorted(children) == ["ingest", "shipper"]
    agent.kill_supervisor()
    wait_until(
        lambda: not any(pid_alive(p) for p in children.values()),
        10,
        message="every child to exit after its supervisor was killed",
    )


def test_sigterm_kills_a_child_that_does_not_stop_by_the_deadline_and_still_exits_0(
    supervised: Callable[..., AgentProcess],
) -> None:
    agent = supervised(sink="clickhouse", clickhouse_endpoint="http://127.0.0.1:9", stop_timeout="1s").start()
    shipper = agent.child_pid("shipper")
    wait_until(
        lambda: f"shipper ready (pid {shipper})" in agent.stderr_text,
        10,
        message="the shipper to report ready (its SIGTERM handler installed)",
    )
    freeze(shipper)  # it cannot act on the SIGTERM
    started = time.monotonic()
    agent.signal(signal.SIGTERM)
    assert agent.wait_exit(15) == 0
    elapsed = time.monotonic() - started
    assert 2.5 < elapsed < 5, f"{elapsed:.1f} s: the deadline is agent.stop_timeout 1 s + 2 s"
    assert f"shipper (pid {shipper}) did not stop within 3 s; killing it" in agent.stderr_text
    assert not pid_alive(shipper)


def test_a_wal_write_error_that_is_not_a_full_disk_stops_the_agent_with_exit_74_and_a_restart_recovers(
    supervised: Callable[..., AgentProcess],
) -> None:
    """EIO, EROFS, or here the WAL directory removed under the running agent: the storage cannot be
    trusted, so ingest stops (one error line, not one per message forever), the agent exits 74 (EX_IOERR,
    which systemd's Restart=on-failure restarts), and the next start has a working WAL again."""
    agent = supervised(segment_size="64KiB").start()
    with RawClient(agent.socket_path) as client:
        assert client.wait_ack(_send(client, ["before"], 1))
        shutil.rmtree(agent.wal_dir)
        seq = 1
        with contextlib.suppress(OSError):  # the agent may be gone before the last send
            while not client.rejected and seq < 100:
                seq += 1  # ~20 KiB a message: the fourth needs a new segment file, in a directory gone
                client.send_records([record_line(f"during-{seq}-{i}", pad=400) for i in range(50)], seq=seq)
                client.wait_ack(seq, timeout=2)
        assert agent.wait_exit(15) == 74
        client.drain()
    assert client.rejected and set(client.rejected.values()) == {"wal_error"}, client.replies
    assert (
        agent.stderr_text.count("automagik_telemetry_agent.ingest.server: WAL write failed") == 1
    )  # not one per message
    assert "ingest: the WAL's storage failed; stopping the agent (exit 74)" in agent.stderr_text
    agent.start()
    with RawClient(agent.socket_path) as client:
        assert client.wait_ack(_send(client, ["after"], 1))
    assert agent.terminate() == 0
    assert dumped_names(agent.dump()) == ["after"]
