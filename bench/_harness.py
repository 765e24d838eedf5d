"""Shared helpers of the benchmarks: run a real agent process, ask it for STATS, summarize numbers.

Not a benchmark itself (the leading underscore keeps it apart from ``bench_*.py``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = [str(ROOT / "client"), str(ROOT / "daemon")]
for _source in reversed(SOURCE_DIRS):
    if _source not in sys.path:
        sys.path.insert(0, _source)

from automagik_telemetry import protocol  # noqa: E402  (needs the source dirs on sys.path; re-exported)

READY_TIMEOUT_S = 20.0


#: (method, route, status) of the HTTP-server spans the benches make: names and attributes derive from it.
HTTP_SPAN_SHAPES = (
    ("GET", "/api/items/{id}", 200),
    ("POST", "/api/items", 201),
    ("GET", "/api/search", 200),
    ("PUT", "/api/items/{id}", 204),
    ("GET", "/healthz", 200),
)


def agent_env() -> dict[str, str]:
    """The environment of an agent subprocess: this checkout's sources first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*SOURCE_DIRS, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def terminate_process(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """SIGTERM, wait up to ``timeout``, then SIGKILL; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


class Agent:
    """A real agent process (``python -m automagik_telemetry_agent agent``) in a scratch directory.

    Its stderr goes to ``agent.log`` in ``workdir`` (no pipe and no reader thread, so the benchmark
    process stays single-threaded and can fork its sender processes safely).
    """

    def __init__(
        self, workdir: str, fsync: str = "interval", extra_args: list[str] | None = None, profile_to: str | None = None
    ) -> None:
        self.workdir = workdir
        self.socket_path = os.path.join(workdir, "agent.sock")
        self.wal_dir = os.path.join(workdir, "wal")
        self.log_path = os.path.join(workdir, "agent.log")
        profiler = ["-m", "cProfile", "-o", profile_to] if profile_to else []
        self.args = [
            sys.executable,
            *profiler,
            "-m",
            "automagik_telemetry_agent",
            "agent",
            "--socket",
            self.socket_path,
            "--wal-dir",
            self.wal_dir,
            "--fsync",
            fsync,
            "--wal-min-free",
            "0",
            "--log-level",
            "warning",
            "--sink",
            "none",
            *(extra_args or []),
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    def __enter__(self) -> Agent:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=agent_env(), cwd=self.workdir
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if b"ready" in Path(self.log_path).read_bytes().splitlines():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"the agent did not start: {Path(self.log_path).read_text(errors='replace')}")

    def stats(self) -> dict:
        return request_stats(self.socket_path)

    def stop(self) -> int | None:
        """SIGTERM (the agent drains and exits 0); returns the exit code."""
        if self.proc is None or self.returncode is not None:
            return self.returncode
        self.returncode = terminate_process(self.proc)
        return self.returncode

    def cpu_seconds(self) -> float:
        """User + system CPU time the agent process (all its threads) has used so far."""
        assert self.proc is not None
        return process_cpu_seconds(self.proc.pid)

    def log_text(self) -> str:
        return Path(self.log_path).read_text(errors="replace")


def request_stats(socket_path: str, timeout: float = 5.0) -> dict:
    """One STATS_REQUEST on a fresh connection; the agent's counters as a dict."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.settimeout(timeout)
        sock.connect(socket_path)
        sock.send(protocol.encode(protocol.MessageType.STATS_REQUEST, seq=1))
        while True:
            reply = sock.recv(protocol.MAX_MESSAGE_SIZE)
            header = protocol.decode_header(reply)
            if header.type == protocol.MessageType.STATS:
                return json.loads(reply[protocol.HEADER_SIZE :])


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a running process, from /proc (clock-tick resolution)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and its living descendants (e.g. the agent's supervisor and its children)."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            total += process_cpu_seconds(current)
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    todo += [int(child) for child in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited meanwhile
    return total


def percentile(sorted_values: list[int] | list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return float(sorted_values[index])


def machine_line() -> str:
    """CPU count, Python version and the filesystem the scratch directories live on."""
    fs = "?"
    tmp = os.environ.get("TMPDIR", "/tmp")
    try:
        out = subprocess.run(["df", "-T", tmp], capture_output=True, text=True, check=False).stdout
        fs = out.splitlines()[1].split()[1]
    except (OSError, IndexError):
        pass
    return f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, scratch dir {tmp} on {fs}"


class CpuMeter:
    """CPU seconds the whole machine spent busy, and how much of it was not this benchmark.

    Reads ``/proc/stat`` (all CPUs) and ``os.times()`` (this process and its reaped children:
    agents, senders). Other load on a 2-core machine skews every number, so the report shows it.
    """

    def __init__(self) -> None:
        self._start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        ticks = os.sysconf("SC_CLK_TCK")
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except OSError:
            fields = [0] * 8
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        times = os.times()
        own = times.user + times.system + times.children_user + times.children_system
        return (sum(fields[:8]) - idle) / ticks, sum(fields[:8]) / ticks, own

    def summary(self) -> str:
        busy0, total0, own0 = self._start
        busy1, total1, own1 = self._sample()
        wall_cpu = max(total1 - total0, 1e-9)
        other = max(0.0, (busy1 - busy0) - (own1 - own0))
        note = "" if other / wall_cpu < 0.1 else "  <- other load on the machine: numbers are skewed"
        return (
            f"CPU during the measurements: this benchmark {own1 - own0:.1f} CPU-s, other processes "
            f"{other:.1f} CPU-s ({100 * other / wall_cpu:.0f}% of the machine){note}"
        )


def proc_kb(pid: int, key: str, path: str = "status") -> int:
    """A ``key: N kB`` field of ``/proc/<pid>/<path>`` (``VmRSS``, ``VmHWM``, ``RssAnon`` of ``status``;
    ``Pss`` of ``smaps_rollup``), in KiB; 0 once the process is gone."""
    try:
        with open(f"/proc/{pid}/{path}") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0
