"""Run the real ingest agent as a subprocess and talk to it over its socket: shared by integration tests.

Typical use (the ``agent`` / ``agent_factory`` fixtures in ``tests/agent/conftest.py`` wrap this)::

    agent = AgentProcess(tmp_path, fsync="always", max_connections=5).start()
    with RawClient(agent.socket_path) as client:
        client.send_records([b'{"name":"x"}'], seq=1)
        assert client.wait_ack(1)
    assert agent.stats()["items_received"] == 1
    assert agent.terminate() == 0          # SIGTERM drains and exits 0
    agent.children()                       # {"ingest": pid, "shipper": pid}: the supervisor's children
    code, report = agent.verify()          # `wal verify --json`

Settings are keyword arguments named after the agent's long flags: ``fsync="always"`` becomes
``--fsync always``, ``wal_max_size=131072`` becomes ``--wal-max-size 131072``; ``None`` omits a flag.
Defaults that keep tests deterministic: ``sink="none"`` (ingest only: the WAL keeps everything, unless a
test passes ``sink="clickhouse"`` and the ClickHouse settings), ``wal_min_free=0`` (no free-disk
watermark: the test host's free space must not change behaviour), ``metrics_listen=""`` (no Prometheus
endpoint, so parallel agents never fight over port 9479; metrics tests pass ``"127.0.0.1:0"``) and
``log_level="info"``. The agent
gets an empty config file and an environment without ``AUTOMAGIK_TELEMETRY_*`` variables, so nothing
on the host leaks in.

The agent is a supervisor with child processes (``ingest``, and ``shipper`` unless ``sink="none"``):
:meth:`AgentProcess.stop`/``cont`` freeze and resume the ingest child (the process serving clients),
:meth:`AgentProcess.kill` crashes the whole agent at once (kill -9 of every process, nothing drains),
:meth:`AgentProcess.kill_supervisor` kills only the supervisor (its children get their parent-death signal).

The agent's stderr is drained continuously by a thread (it logs one line per disk-full error, and a
full pipe would block it); read it with :attr:`AgentProcess.stderr_text`.

Only stdlib, tests/managed_process.py (``wait_until``) and the project's own ``automagik_telemetry.protocol``:
the module sets up ``sys.path`` so it imports without the package being installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SOURCE_PATHS = [str(REPO / "client"), str(REPO / "daemon")]
for _p in reversed(SOURCE_PATHS):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from managed_process import wait_until as wait_until  # noqa: E402  (re-exported: tests import it from here)

from automagik_telemetry import protocol  # noqa: E402
from automagik_telemetry.protocol import MessageType, RecordKind  # noqa: E402

#: Resource line RawClient.send_records uses unless told otherwise.
DEFAULT_RESOURCE = b'{"attributes":[{"key":"service.name","value":{"stringValue":"agent-test"}}]}'
#: Settings applied unless the caller overrides them (None removes one).
DEFAULT_SETTINGS: dict[str, Any] = {
    "wal_min_free": 0,
    "log_level": "info",
    "sink": "none",
    "metrics_listen": "",
    "otlp_listen": "",  # tests that receive OTLP pass a free port (tests/otlp)
}
READY_TIMEOUT_S = 15.0
_SUN_PATH_MAX = 100  # AF_UNIX paths are limited to 107 bytes; keep a margin


class AgentStartError(RuntimeError):
    """The agent did not print ``ready``; the message includes its exit code and stderr."""


class AgentClosedConnection(EOFError):
    """The agent closed the connection (recv returned end-of-file)."""


def agent_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for agent subprocesses: PYTHONPATH on the sources, no AUTOMAGIK_TELEMETRY_* leaks."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOMAGIK_TELEMETRY_")}
    env["PYTHONPATH"] = os.pathsep.join(SOURCE_PATHS + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run_cli(
    *args: str, timeout: float = 60.0, env: dict[str, str] | None = None, cwd: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m automagik_telemetry_agent ARGS`` to completion (text output captured); ``env``
    replaces :func:`agent_env` (build on it)."""
    return subprocess.run(
        [sys.executable, "-m", "automagik_telemetry_agent", *args],
        env=env or agent_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
    )


def settings_to_flags(settings: dict[str, Any]) -> list[str]:
    flags: list[str] = []
    for key, value in settings.items():
        if value is None:
            continue
        flags += ["--" + key.replace("_", "-"), str(value)]
    return flags


class AgentProcess:
    """The real agent (``python -m automagik_telemetry_agent agent``) in a subprocess.

    ``tmp_path``: a directory for the socket, the WAL and the config file (created if missing).
    ``wal_dir`` / ``socket_path``: override the default ``tmp_path/wal`` and ``tmp_path/agent.sock``.
    ``preexec_fn``: run in the child before exec (e.g. ``resource.setrlimit``).
    ``env``: extra environment variables (e.g. ``NOTIFY_SOCKET``); ``launcher``: a command the agent's
    command line is appended to (e.g. ``systemd-socket-activate ... --``); ``pass_fds``: fds it inherits.
    ``**settings``: agent flags, see the module docstring.
    """

    def __init__(
        self,
        tmp_path: str | os.PathLike[str],
        *,
        wal_dir: str | os.PathLike[str] | None = None,
        socket_path: str | os.PathLike[str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
        env: dict[str, str] | None = None,
        launcher: Sequence[str] = (),
        pass_fds: Sequence[int] = (),
        **settings: Any,
    ) -> None:
        self.tmp_path = Path(tmp_path)
        self.tmp_path.mkdir(parents=True, exist_ok=True)
        self.wal_dir = str(wal_dir or self.tmp_path / "wal")
        self._short_dir: str | None = None
        sock = str(socket_path or self.tmp_path / "agent.sock")
        if len(sock) > _SUN_PATH_MAX:
            self._short_dir = tempfile.mkdtemp(prefix="at-agent-", dir="/tmp")
            sock = os.path.join(self._short_dir, "agent.sock")
        self.socket_path = sock
        self.config_path = str(self.tmp_path / "agent.toml")
        Path(self.config_path).write_text("# empty: tests pass every setting as a flag\n")
        self.settings = {**DEFAULT_SETTINGS, **settings}
        self.preexec_fn = preexec_fn
        self.extra_env = dict(env or {})
        self.launcher = list(launcher)
        self.pass_fds = tuple(pass_fds)
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self._stderr: list[str] = []
        self._stderr_lock = threading.Lock()
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None
        self._stats_seq = 0

    # ------------------------------------------------------------------ lifecycle
    @property
    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "automagik_telemetry_agent",
            "agent",
            *self._location_flags(),
            *settings_to_flags(self.settings),
        ]

    def _location_flags(self) -> list[str]:
        """Where this agent's config file, socket and WAL are: for the agent and for operator commands."""
        return ["--config", self.config_path, "--socket", self.socket_path, "--wal-dir", self.wal_dir]

    @property
    def pid(self) -> int:
        assert self.proc is not None, "agent not started"
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def stderr_text(self) -> str:
        """Everything the agent wrote on stderr so far (all runs of this object)."""
        with self._stderr_lock:
            return "".join(self._stderr)

    def start(self, timeout: float = READY_TIMEOUT_S, wait: bool = True) -> AgentProcess:
        """Start the agent and wait for ``ready`` on stderr; AgentStartError (with stderr) otherwise.

        ``wait=False`` returns at once (then call :meth:`wait_ready`), e.g. when a launcher waits for a
        client to connect before it starts the agent.
        """
        assert not self.running, "agent already running"
        self._ready.clear()
        self.returncode = None
        argv = [*self.launcher, *self.argv]
        with self._stderr_lock:
            self._stderr.append(f"--- start: {' '.join(argv)}\n")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=agent_env(self.extra_env),
            preexec_fn=self.preexec_fn,
            pass_fds=self.pass_fds,
        )
        self._reader = threading.Thread(
            target=self._drain_stderr, args=(self.proc,), daemon=True, name=f"agent-stderr-{self.proc.pid}"
        )
        self._reader.start()
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> AgentProcess:
        """Wait for ``ready`` on stderr; AgentStartError (with stderr) if it exits or times out first."""
        assert self.proc is not None, "agent not started"
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.02):
            if self.proc.poll() is not None or time.monotonic() >= deadline:
                exited = self.proc.poll()
                if exited is None:
                    self.kill()
                self._join_reader()
                why = f"exited with code {exited}" if exited is not None else f"not ready after {timeout}s"
                raise AgentStartError(f"agent {why}; stderr:\n{self.stderr_text}")
        return self

    def _drain_stderr(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in iter(proc.stderr.readline, b""):
            line = raw.decode("utf-8", "replace")
            with self._stderr_lock:
                self._stderr.append(line)
            if line.strip() == "ready":
                self._ready.set()
        proc.stderr.close()

    def _join_reader(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=5)
            self._reader = None

    def _wait(self, timeout: float) -> int:
        assert self.proc is not None
        self.returncode = self.proc.wait(timeout=timeout)
        self._join_reader()
        return self.returncode

    def wait_exit(self, timeout: float = 30.0) -> int:
        """Wait for the agent to exit on its own; its exit code (TimeoutExpired if it does not)."""
        return self._wait(timeout)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def children(self) -> dict[str, int]:
        """The supervisor's child processes by subcommand (``{"ingest": pid, "shipper": pid}``), from /proc."""
        if self.proc is None or self.proc.poll() is not None:
            return {}
        return child_processes(self.proc.pid)

    def child_pid(self, name: str = "ingest", timeout: float = 10.0) -> int:
        """The pid of the supervisor's ``name`` child, waiting up to ``timeout`` for it to exist."""
        return wait_until(lambda: self.children().get(name), timeout, message=f"the agent's {name} child")

    def _signal_children(self, signum: int) -> None:
        for pid in self.children().values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM (graceful drain) and wait; return the exit code. SIGKILL + error after ``timeout``."""
        assert self.proc is not None, "agent not started"
        if self.proc.poll() is None:
            self.signal(signal.SIGCONT)  # a stopped process would never see the SIGTERM
            self._signal_children(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                return self._wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(
                    f"agent did not exit {timeout}s after SIGTERM; stderr:\n{self.stderr_text}"
                ) from None
        return self._wait(timeout)

    def kill(self) -> int:
        """kill -9 of the whole agent at once (a crash: nothing gets to drain); return the supervisor's code.

        The supervisor is frozen first (so it restarts nothing), its children are SIGKILLed, then it is.
        """
        assert self.proc is not None, "agent not started"
        if self.proc.poll() is None:
            self.signal(signal.SIGSTOP)
            self._signal_children(signal.SIGKILL)
        self.signal(signal.SIGKILL)
        return self._wait(15)

    def kill_supervisor(self) -> int:
        """kill -9 of the supervisor alone (its children get their parent-death signal); its exit code."""
        assert self.proc is not None, "agent not started"
        self.signal(signal.SIGKILL)
        return self._wait(15)

    def stop(self) -> None:
        """SIGSTOP the ingest process: the agent stops serving clients (the kernel keeps queueing their
        messages up to buffer limits). Keep it short of ``heartbeat_timeout`` (30 s), or the supervisor
        replaces the frozen process."""
        os.kill(self.child_pid("ingest"), signal.SIGSTOP)

    def cont(self) -> None:
        """SIGCONT: resume after :meth:`stop`."""
        self._signal_children(signal.SIGCONT)

    def restart(self, timeout: float = READY_TIMEOUT_S) -> AgentProcess:
        """Terminate gracefully if running, then start again on the same socket and WAL directory."""
        if self.running:
            self.terminate()
        return self.start(timeout)

    def cleanup(self, *, graceful: bool = True) -> int | None:
        """Stop the agent if it runs (SIGTERM, or SIGKILL if ``graceful`` is False); remove temp dirs."""
        code = None
        if self.proc is not None:
            if self.running:
                try:
                    code = self.terminate() if graceful else self.kill()
                except AssertionError:
                    code = self.returncode
            else:
                code = self._wait(5)
        if self._short_dir is not None:
            shutil.rmtree(self._short_dir, ignore_errors=True)
            self._short_dir = None
        return code

    def __enter__(self) -> AgentProcess:
        return self if self.running else self.start()

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.cleanup(graceful=exc_type is None)

    # ------------------------------------------------------------------ introspection
    def cli_flags(self, *extra: str) -> list[str]:
        """The flags that make an operator's command (``status``, ``doctor``, ``send-test`` ...) find this
        agent: its config file, socket and WAL, and the settings the harness changes from the defaults."""
        return [
            *self._location_flags(),
            "--wal-min-free",
            "0",
            "--otlp-listen",  # as the agent was started (off unless a test turns it on)
            self.settings.get("otlp_listen") or "",
            *extra,
        ]

    def stats(self, timeout: float = 5.0) -> dict[str, Any]:
        """The agent's STATS (over a fresh connection: it counts as one connection and one message)."""
        with RawClient(self.socket_path, timeout=timeout) as client:
            self._stats_seq += 1
            return client.request_stats(self._stats_seq, timeout=timeout)

    def verify(self) -> tuple[int, dict[str, Any]]:
        """``wal verify DIR --json``: (exit code, report). Exit 0 = clean, 1 = corruption found."""
        result = run_cli("wal", "verify", self.wal_dir, "--json")
        try:
            report = json.loads(result.stdout)
        except ValueError:
            raise AssertionError(
                f"wal verify printed no JSON (exit {result.returncode}): {result.stdout!r} {result.stderr!r}"
            ) from None
        return result.returncode, report

    def dump(self) -> list[dict[str, Any]]:
        """``wal dump DIR``: one dict per WAL item (keys seq, index, kind, record, resource)."""
        result = run_cli("wal", "dump", self.wal_dir)
        assert result.returncode == 0, f"wal dump failed ({result.returncode}): {result.stderr}"
        return [json.loads(line) for line in result.stdout.splitlines() if line]


Reply = tuple[int, int, bytes]  # (type, seq, payload)


class RawClient:
    """A bare protocol client on one SOCK_SEQPACKET connection, with none of the real client's logic.

    Every reply it reads is logged in :attr:`replies`; the highest ACK in :attr:`acked` (the latest in
    :attr:`last_ack`); REJECTs in :attr:`rejected` (msg seq -> reason). :meth:`recv_reply` raises
    :class:`AgentClosedConnection` at EOF.
    """

    def __init__(
        self, path: str, *, timeout: float = 5.0, sndbuf: int | None = None, rcvbuf: int | None = None
    ) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if sndbuf is not None:
            self._setbuf(socket.SO_SNDBUF, getattr(socket, "SO_SNDBUFFORCE", 32), sndbuf)
        if rcvbuf is not None:
            self._setbuf(socket.SO_RCVBUF, getattr(socket, "SO_RCVBUFFORCE", 33), rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.replies: list[Reply] = []
        self.acked = 0  # highest ACK seen
        self.last_ack: int | None = None  # the most recent ACK
        self.rejected: dict[int, str] = {}
        self.eof = False

    def _setbuf(self, option: int, force_option: int, size: int) -> None:
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, force_option, size)  # root may exceed *mem_max
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, option, size)

    # ------------------------------------------------------------------ sending
    def send_raw(self, data: bytes) -> int:
        """Send one message of exactly these bytes (may be anything); return the bytes sent."""
        return self.sock.send(data)

    def send_records(
        self, lines: Iterable[bytes | str], seq: int, *, resource: bytes = DEFAULT_RESOURCE, kind: int = RecordKind.SPAN
    ) -> bytes:
        """Send one valid RECORDS message (newlines are added); return the message bytes."""
        message = encode_records(lines, seq, resource=resource, kind=kind)
        self.sock.send(message)
        return message

    def send_stats_request(self, seq: int) -> None:
        self.sock.send(protocol.encode(MessageType.STATS_REQUEST, seq=seq))

    # ------------------------------------------------------------------ receiving
    def recv_reply(self, timeout: float | None = 5.0) -> Reply | None:
        """The next reply as (type, seq, payload), or None if none arrives within ``timeout``."""
        if self.eof:
            raise AgentClosedConnection(f"agent closed the connection on {self.path}")
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return None
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return None
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            raise AgentClosedConnection(f"agent closed the connection on {self.path}")
        if len(data) < protocol.HEADER_SIZE:
            raise AssertionError(f"agent sent a {len(data)}-byte message: {data!r}")
        magic, version, msg_type, _k, flags, _r, _count, length, seq = protocol.HEADER.unpack_from(data)
        assert (magic, version, flags) == (protocol.MAGIC, protocol.VERSION, 0), f"bad reply {data[:24]!r}"
        assert protocol.HEADER_SIZE + length == len(data), "reply length field disagrees with its size"
        payload = data[protocol.HEADER_SIZE :]
        reply = (msg_type, seq, payload)
        self.replies.append(reply)
        if msg_type == MessageType.ACK:
            self.last_ack = seq
            self.acked = max(self.acked, seq)
        elif msg_type == MessageType.REJECT:
            self.rejected[seq] = payload.decode("ascii")
        return reply

    def drain(self, timeout: float = 0.2) -> list[Reply]:
        """Read replies until none arrives for ``timeout`` seconds (or EOF); return them."""
        got = []
        with contextlib.suppress(AgentClosedConnection):
            while (reply := self.recv_reply(timeout)) is not None:
                got.append(reply)
        return got

    def wait_ack(self, seq: int, timeout: float = 5.0) -> bool:
        """Read replies until an ACK covers ``seq`` (True), a REJECT names it, or the timeout (False)."""
        deadline = time.monotonic() + timeout
        while self.acked < seq:
            if seq in self.rejected:
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.recv_reply(left)
        return True

    def wait_outcome(self, seq: int, timeout: float = 5.0) -> str | None:
        """``"ack"``, the REJECT reason for message ``seq``, or None on timeout."""
        if self.wait_ack(seq, timeout):
            return "ack"
        return self.rejected.get(seq)

    def request_stats(self, seq: int = 1, timeout: float = 5.0) -> dict[str, Any]:
        """STATS_REQUEST on this connection; return the STATS JSON (other replies are logged on the way)."""
        self.send_stats_request(seq)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            reply = self.recv_reply(max(left, 0)) if left > 0 else None
            if reply is None:
                raise AssertionError(f"no STATS reply within {timeout}s")
            if reply[0] == MessageType.STATS and reply[1] == seq:
                return json.loads(reply[2])

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def child_processes(parent: int) -> dict[str, int]:
    """Children of ``parent`` that run ``python -m automagik_telemetry_agent <subcommand>``, by subcommand."""
    found: dict[str, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) != parent or fields[0] == "Z":
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except (OSError, IndexError, ValueError):
            continue
        if "automagik_telemetry_agent" in argv:
            rest = argv[argv.index("automagik_telemetry_agent") + 1 :]
            if rest:
                found[rest[0]] = int(entry)
    return found


def encode_records(
    lines: Iterable[bytes | str], seq: int, *, resource: bytes = DEFAULT_RESOURCE, kind: int = RecordKind.SPAN
) -> bytes:
    """A valid RECORDS message from record lines (bytes or str, with or without the trailing newline)."""
    body = [_line(x) for x in lines]
    payload = _line(resource) + b"".join(body)
    return (
        protocol.HEADER.pack(
            protocol.MAGIC, protocol.VERSION, MessageType.RECORDS, kind, 0, 0, len(body), len(payload), seq
        )
        + payload
    )


def record_line(ident: str, pad: int = 0) -> bytes:
    """A small OTLP-shaped span line carrying ``ident`` (find it again in `wal dump` as record["name"])."""
    return json.dumps(
        {
            "name": ident,
            "traceId": "0" * 32,
            "spanId": "0" * 16,
            "attributes": [{"key": "pad", "value": {"stringValue": "x" * pad}}],
        },
        separators=(",", ":"),
    ).encode()


def dumped_names(dump: Sequence[dict[str, Any]]) -> list[str]:
    """The ``name`` of every record in a :meth:`AgentProcess.dump` (order kept, duplicates kept)."""
    return [item["record"]["name"] for item in dump if "record" in item]


def _line(value: bytes | str) -> bytes:
    data = value.encode() if isinstance(value, str) else bytes(value)
    return data if data.endswith(b"\n") else data + b"\n"
