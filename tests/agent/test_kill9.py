"""kill -9 of the agent while several client processes write: nothing acknowledged is lost or doubled.

Each writer process sends RECORDS messages of uniquely named records as fast as the agent takes them,
the three signals mixed (spans, log records, metric data points: message seq modulo 3 picks the kind),
and logs every ACK it reads. The agent is SIGKILLed at a random moment, restarted (recovery runs), and
stopped. Then `wal verify` must be clean and every span of every acknowledged message must be in the
WAL exactly once. The matrix repeats with random kill times: `crash_matrix_size` rounds (bounded in
CI, 200 with AUTOMAGIK_TELEMETRY_FULL_MATRIX=1).
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from agent_process import AgentProcess, agent_env

SPANS_PER_MESSAGE = 20
WRITERS = 3

WRITER = r"""
import socket, sys, time
from automagik_telemetry import protocol as p

path, wid, out = sys.argv[1], sys.argv[2], sys.argv[3]
sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
sock.connect(path)
sock.setblocking(True)  # a timeout would make recv(MSG_DONTWAIT) wait: CPython polls first
log = open(out, "w")
resource = b'{"attributes":[]}\n'
seq = 0
try:
    while True:
        seq += 1
        lines = [b'{"name":"%s-%d-%d"}\n' % (wid.encode(), seq, j) for j in range(%(spans)d)]
        sock.send(p.encode_records(resource, lines, seq=seq, kind=p.RecordKind(seq % 3 + 1)))
        time.sleep(0.001)  # keep the WAL small enough to dump quickly; thousands of messages still race the kill
        while True:
            try:
                reply = sock.recv(70000, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            if not reply:
                raise EOFError
            kind, rseq = reply[3], int.from_bytes(reply[16:24], "little")
            log.write(("A%d\n" if kind == 0x81 else "R%d\n") % rseq)
            log.flush()
except (OSError, EOFError):
    pass
""".replace("%(spans)d", str(SPANS_PER_MESSAGE))


def _acked(log: Path) -> tuple[int, set[int]]:
    acked, rejected = 0, set()
    for line in log.read_text().splitlines():
        if line.startswith("A"):
            acked = max(acked, int(line[1:]))
        elif line.startswith("R"):
            rejected.add(int(line[1:]))
    return acked, rejected


def _one_round(tmp_path: Path, fsync: str, kill_after: float) -> tuple[int, int]:
    agent = AgentProcess(tmp_path, fsync=fsync).start()
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    logs = [tmp_path / f"acks-{w}.log" for w in range(WRITERS)]
    writers = [
        subprocess.Popen([sys.executable, str(script), agent.socket_path, f"w{w}", str(logs[w])], env=agent_env())
        for w in range(WRITERS)
    ]
    try:
        deadline = time.monotonic() + 15
        while not all(log.exists() for log in logs) and time.monotonic() < deadline:
            time.sleep(0.01)  # each writer creates its log once connected
        assert all(log.exists() for log in logs), "writers did not connect"
        time.sleep(kill_after)
        agent.kill()
        for proc in writers:
            proc.wait(timeout=30)
        agent.start()  # recovery on the same WAL
        assert agent.terminate() == 0
    finally:
        for proc in writers:
            if proc.poll() is None:
                proc.kill()
        agent.cleanup(graceful=False)

    code, report = agent.verify()
    assert code == 0 and report["clean"], report
    dumped = agent.dump()
    names = Counter(item["record"]["name"] for item in dumped)
    wrong_kind = [i for i in dumped if i["kind"] != int(i["record"]["name"].split("-")[1]) % 3 + 1]
    assert not wrong_kind, f"records stored under another signal: {wrong_kind[:3]}"
    doubled = [name for name, n in names.items() if n > 1]
    assert not doubled, f"records present twice after recovery: {doubled[:5]}"
    acked_spans = 0
    for w, log in enumerate(logs):
        acked, rejected = _acked(log)
        assert not rejected
        missing = [
            f"w{w}-{m}-{j}"
            for m in range(1, acked + 1)
            for j in range(SPANS_PER_MESSAGE)
            if names[f"w{w}-{m}-{j}"] != 1
        ]
        assert not missing, f"acknowledged but lost after kill -9: {missing[:5]} (of {len(missing)})"
        acked_spans += acked * SPANS_PER_MESSAGE
    return acked_spans, sum(names.values())


@pytest.mark.parametrize("fsync", ["always", "interval"])
def test_kill9_during_concurrent_writes_loses_no_acknowledged_record(tmp_path: Path, fsync: str) -> None:
    acked, present = _one_round(tmp_path, fsync, kill_after=1.0)
    assert acked > 1000, "the writers should have been acknowledged thousands of spans before the kill"
    assert present >= acked


@pytest.mark.slow
@pytest.mark.parametrize("fsync", ["always", "interval"])
def test_kill9_matrix_random_kill_times_lose_no_acknowledged_record(
    tmp_path: Path, fsync: str, crash_matrix_size: int
) -> None:
    rng = random.Random(f"kill9-{fsync}")
    rounds = max(2, crash_matrix_size // 3)
    for i in range(rounds):
        acked, present = _one_round(tmp_path / f"round{i}", fsync, kill_after=rng.uniform(0.05, 0.8))
        assert present >= acked
