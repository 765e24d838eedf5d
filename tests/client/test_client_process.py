"""Process lifecycle: fork safety, the atexit flush, and bounded exit when the agent is stuck."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from typing import Any

from fake_agent import FakeAgent

from automagik_telemetry import AutomagikTelemetry

MakeClient = Callable[..., AutomagikTelemetry]


def resource_pid(message: Any) -> int:
    (pid,) = [a["value"]["intValue"] for a in message.resource["attributes"] if a["key"] == "process.pid"]
    return int(pid)


def test_forked_child_sends_its_own_spans_and_never_the_parents(sock_path: str, make_client: MakeClient) -> None:
    with FakeAgent(sock_path) as agent:
        client = make_client(flush_interval=30.0)  # keep the parent's spans queued across the fork
        with client.span("parent-sent"):
            pass
        assert client.flush(5.0)
        for i in range(5):
            with client.span(f"parent-queued{i}"):
                pass
        assert client.stats()["queue_depth"] == 5
        pid = os.fork()
        if pid == 0:  # child: must not inherit the queue, the counters, the thread or the connection
            code = 1
            try:
                stats = client.stats()
                if stats["queue_depth"] == 0 and stats["enqueued_records"] == 0 and not stats["connected"]:
                    with client.span("child-span"):
                        pass
                    code = 0 if client.flush(5.0) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        with client.span("parent-after-fork"):
            pass
        assert client.flush(5.0)  # the parent's connection survived the child's exit
        names = sorted(span["name"] for span in agent.spans())
        assert names == sorted(
            ["parent-sent", "child-span", "parent-after-fork", *(f"parent-queued{i}" for i in range(5))]
        )
        child_messages = [m for m in agent.messages if m.records[0]["name"] == "child-span"]
        assert [resource_pid(m) for m in child_messages] == [pid]
        assert {resource_pid(m) for m in agent.messages if m not in child_messages} == {os.getpid()}
        assert agent.connections == 2
        assert client.stats()["enqueued_records"] == 7


def test_fork_backstop_detects_a_changed_pid_on_the_enqueue_path(make_client: MakeClient) -> None:
    client = make_client()
    old = client._transport
    old.queue.pid = -1  # as if this process had been forked without the at-fork hook running
    with client.span("after-unseen-fork"):
        pass
    assert client._transport is not old
    assert client.stats()["enqueued_records"] == 1 and len(old.queue) == 0


def run_script(body: str, env: dict[str, str], timeout: float = 20.0) -> tuple[subprocess.CompletedProcess[str], float]:
    script = textwrap.dedent(body)
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout)
    return result, time.monotonic() - start


SCRIPT = """
    import sys, time
    from automagik_telemetry import AutomagikTelemetry, TelemetryConfig
    client = AutomagikTelemetry(config=TelemetryConfig(
        project_name="script", version="1", socket_path={path!r}, flush_interval=30.0,
        exit_flush_timeout={exit_timeout}))
    if {warmup}:  # connect and go idle: what follows stays queued (30 s timer, below the wake threshold)
        with client.span("warmup"):
            pass
        assert client.flush(5.0)
    for i in range({count}):
        with client.span("script-span-%d" % i, attributes={{"pad": "x" * {pad}}}):
            pass
    print(time.monotonic(), flush=True)  # the moment the script is done; then the interpreter exits
"""


def test_short_script_spans_arrive_through_the_atexit_flush(sock_path: str, child_env: dict[str, str]) -> None:
    with FakeAgent(sock_path) as agent:
        script = SCRIPT.format(path=sock_path, exit_timeout=5.0, count=3, pad=1, warmup=True)
        result, elapsed = run_script(script, child_env)
        assert result.returncode == 0, result.stderr
        assert sorted(span["name"] for span in agent.spans()) == [*(f"script-span-{i}" for i in range(3)), "warmup"]
        assert elapsed < 5.0  # returned as soon as the ACK came, not at the timeout


def test_script_exits_within_exit_flush_timeout_when_the_agent_is_sigstopped(
    sock_path: str, child_env: dict[str, str], agent_process: Callable[[str], subprocess.Popen[str]]
) -> None:
    agent = agent_process("ack")
    os.kill(agent.pid, signal.SIGSTOP)
    try:
        # 3000 spans of ~1 KiB: far more than the socket buffer takes, so the sender sits on EAGAIN.
        script = SCRIPT.format(path=sock_path, exit_timeout=1.0, count=3000, pad=1000, warmup=False)
        result, _ = run_script(script, child_env)
        exited = time.monotonic()
    finally:
        os.kill(agent.pid, signal.SIGCONT)
    assert result.returncode == 0, result.stderr
    done = float(result.stdout.split()[-1])
    assert exited - done < 1.0 + 1.0, f"exit took {exited - done:.2f}s after the script finished"


def test_script_exits_within_exit_flush_timeout_when_the_agent_never_reads(
    sock_path: str, child_env: dict[str, str]
) -> None:
    with FakeAgent(sock_path, mode="no_read") as agent:
        script = SCRIPT.format(path=sock_path, exit_timeout=0.5, count=3000, pad=1000, warmup=False)
        result, _ = run_script(script, child_env)
        exited = time.monotonic()
        assert result.returncode == 0, result.stderr
        assert exited - float(result.stdout.split()[-1]) < 0.5 + 1.0
        assert agent.connections == 1


def test_script_exits_promptly_when_the_agent_is_absent(sock_path: str, child_env: dict[str, str]) -> None:
    script = SCRIPT.format(path=sock_path, exit_timeout=0.5, count=10, pad=1, warmup=False)
    result, _ = run_script(script, child_env)
    exited = time.monotonic()
    assert result.returncode == 0, result.stderr
    assert exited - float(result.stdout.split()[-1]) < 0.5 + 1.0


def test_client_is_garbage_collected_and_its_sender_thread_stops(sock_path: str) -> None:
    import gc
    import weakref

    from automagik_telemetry import TelemetryConfig

    with FakeAgent(sock_path):
        config = TelemetryConfig(project_name="gc", version="1", socket_path=sock_path, flush_interval=0.05)
        client = AutomagikTelemetry(config=config)
        with client.span("x"):
            pass
        assert client.flush(5.0)
        thread = client._transport._thread
        assert thread is not None and thread.is_alive()
        ref = weakref.ref(client)
        del client
        gc.collect()
        assert ref() is None
        thread.join(2.0)
        assert not thread.is_alive()
        assert all(t is not thread for t in threading.enumerate())


def test_a_forked_child_counts_its_metrics_from_zero_and_the_parent_keeps_its_own(
    sock_path: str, make_client: MakeClient
) -> None:
    with FakeAgent(sock_path) as agent:
        client = make_client()
        jobs = client.counter("jobs")
        jobs.add(5)
        assert client.flush(5.0)
        pid = os.fork()
        if pid == 0:  # child: the instrument is the same object, its series start again at zero
            code = 1
            try:
                jobs.add(1)
                code = 0 if client.flush(5.0) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        jobs.add(1)
        assert client.flush(5.0)
        by_pid: dict[int, list[int]] = {}
        for message in agent.messages:
            if message.kind == 3:
                for metric in message.records:
                    by_pid.setdefault(resource_pid(message), []).append(metric["sum"]["dataPoints"][0]["asInt"])
        assert by_pid == {os.getpid(): [5, 6], pid: [1]}
