"""A private, real ClickHouse server for the tests: Debian 12's ClickHouse 18.16.1.

``ClickHouseServer`` runs ``clickhouse-server`` (installed by scripts/bootstrap.sh) as its own
instance: a temp dir holds a generated config.xml + users.xml and all data/tmp/log paths; it listens on
127.0.0.1 only, on free HTTP and native-TCP ports; the interserver port is left unconfigured, which
makes 18.16 not open it. The process can be stopped, killed, restarted (same ports, same data) and
frozen (SIGSTOP) to simulate outages.

Users (same names must exist on an external server, see below):
    default        no password, full access
    agent          password ``agent-secret`` (plain <password>), full access
    readonly_user  password ``readonly-secret``, profile with readonly=1

If ``AUTOMAGIK_TELEMETRY_TEST_CLICKHOUSE_URL`` is set, ``ExternalClickHouse`` talks to that server
instead: nothing is started or stopped, and process control (kill/pause/restart) calls
``pytest.skip`` with a clear reason -- that is the ONLY situation in which those tests are skipped.

18.16 quirks found while writing this (see docs/clickhouse-compat.md for the HTTP behaviour):
- the root element of both config files is ``<yandex>``;
- the binary is /usr/sbin/clickhouse-server (a small launcher linked to libclickhouse.so.18.16);
  it takes ``--config-file=PATH`` and runs in the foreground; running as root is accepted;
- it writes preprocessed copies of the configs into ``<path>/preprocessed_configs/``;
- ``listen_host`` 127.0.0.1 avoids the IPv6 wildcard; the logger's own ``<console>`` output is only
  used on a tty, and the two "Logging ... to" lines on stderr go to ``console.log`` in the temp dir.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

EXTERNAL_URL_ENV = "AUTOMAGIK_TELEMETRY_TEST_CLICKHOUSE_URL"
BINARY_ENV = "AUTOMAGIK_TELEMETRY_TEST_CLICKHOUSE_BIN"

AGENT_USER, AGENT_PASSWORD = "agent", "agent-secret"
READONLY_USER, READONLY_PASSWORD = "readonly_user", "readonly-secret"

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


class ClickHouseQueryError(Exception):
    """A non-200 answer. ``code`` is the ClickHouse error code parsed from ``Code: N, ...``."""

    def __init__(self, status: int, body: str, sql: str = ""):
        self.status = status
        self.body = body
        self.sql = sql
        self.code: int | None = None
        if body.startswith("Code: "):
            digits = body[6:].split(",", 1)[0].split(".", 1)[0].strip()
            if digits.isdigit():
                self.code = int(digits)
        super().__init__(f"HTTP {status}: {body.strip()[:500]}")


class ClickHouseStartError(RuntimeError):
    pass


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes = field(repr=False)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_binary() -> str:
    candidates = [
        os.environ.get(BINARY_ENV),
        shutil.which("clickhouse-server"),
        "/usr/sbin/clickhouse-server",
        "/usr/bin/clickhouse-server",
    ]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    raise ClickHouseStartError(
        f"clickhouse-server not found: run scripts/bootstrap.sh (Debian package clickhouse-server) or set {BINARY_ENV}"
    )


def _basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class _HTTPMixin:
    """HTTP helpers shared by the local and the external server."""

    url: str
    default_user: str = "default"
    default_password: str = ""

    ensure_running: Callable[[], None]  # each server defines what "running" takes

    @contextlib.contextmanager
    def scratch_database(self, prefix: str = "test") -> Iterator[str]:
        """A fresh, uniquely named database, dropped on exit (after restarting a server a test stopped)."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.query(f"CREATE DATABASE {name}")
        try:
            yield name
        finally:
            self.ensure_running()
            self.query(f"DROP DATABASE IF EXISTS {name}")

    def request(
        self,
        *,
        params: dict[str, str] | None = None,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        user: str | None = None,
        password: str | None = None,
        path: str = "/",
        timeout: float = 30.0,
    ) -> Response:
        """Raw HTTP call; never raises on an HTTP error status (only on connection errors)."""
        url = self.url + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        if isinstance(body, str):
            body = body.encode()
        hdrs = dict(headers or {})
        user = self.default_user if user is None else user
        password = self.default_password if password is None else password
        hdrs.setdefault("Authorization", _basic_auth(user, password))
        method = "POST" if body is not None else "GET"
        req = urllib.request.Request(url, data=body, headers=hdrs, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return Response(r.status, dict(r.headers.items()), r.read())
        except urllib.error.HTTPError as e:
            with e:
                return Response(e.code, dict(e.headers.items()), e.read())

    def query(
        self,
        sql: str,
        *,
        data: bytes | str | None = None,
        user: str | None = None,
        password: str | None = None,
        settings: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> str:
        """Run ``sql``; return the body text. Raises ClickHouseQueryError on a non-200 answer.

        Without ``data`` the SQL is the POST body (so DDL and INSERT ... VALUES work; a GET would be
        readonly). With ``data`` (e.g. ``INSERT ... FORMAT JSONEachRow``) the SQL goes in the
        ``query`` URL parameter and ``data`` is the body. ``settings`` become URL parameters.
        """
        params = {k: str(v) for k, v in (settings or {}).items()}
        if data is None:
            body: bytes | str = sql
        else:
            params["query"] = sql
            body = data
        r = self.request(params=params, body=body, headers=headers, user=user, password=password, timeout=timeout)
        if r.status != 200:
            raise ClickHouseQueryError(r.status, r.text, sql)
        return r.text

    def ping(self, timeout: float = 2.0) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/ping", timeout=timeout) as r:
                return r.status == 200 and r.read() == b"Ok.\n"
        except (OSError, urllib.error.URLError):
            return False

    @property
    def version(self) -> str:
        return self.query("SELECT version()").strip()


class ClickHouseServer(_HTTPMixin):
    """A private clickhouse-server process. See the module docstring."""

    supports_process_control = True

    def __init__(
        self,
        base_dir: str | os.PathLike[str] | None = None,
        binary: str | None = None,
        users_d: dict[str, str] | None = None,
    ):
        """``users_d``: extra ``{file name: XML text}`` written to ``users.d/`` next to users.xml, which the
        server merges into it (how deploy/clickhouse/users/ adds the agent's user on 18.16)."""
        self.binary = binary or find_binary()
        self.users_d = dict(users_d or {})
        self._owns_dir = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="clickhouse-test-"))
        self.http_port = 0
        self.tcp_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        # Sent back by the server as X-ClickHouse-Server-Display-Name: proves that /ping was answered
        # by THIS instance, not by another server that grabbed the port first.
        self.display_name = f"automagik-test-{uuid.uuid4().hex[:12]}"

    # -- layout ---------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def log_dir(self) -> Path:
        return self.base_dir / "log"

    @property
    def error_log(self) -> Path:
        return self.log_dir / "server.err.log"

    @property
    def console_log(self) -> Path:
        return self.log_dir / "console.log"

    def _write_config(self) -> None:
        d = self.base_dir
        for sub in ("data", "tmp", "user_files", "format_schemas", "log"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        p = {
            k: escape(str(v))
            for k, v in {
                "data": f"{d}/data/",
                "tmp": f"{d}/tmp/",
                "uf": f"{d}/user_files/",
                "fs": f"{d}/format_schemas/",
                "log": d / "log/server.log",
                "err": self.error_log,
            }.items()
        }
        (d / "config.xml").write_text(f"""<?xml version="1.0"?>
<yandex>
    <logger>
        <level>warning</level>
        <log>{p["log"]}</log>
        <errorlog>{p["err"]}</errorlog>
        <size>20M</size>
        <count>1</count>
    </logger>
    <display_name>{self.display_name}</display_name>
    <listen_host>127.0.0.1</listen_host>
    <http_port>{self.http_port}</http_port>
    <tcp_port>{self.tcp_port}</tcp_port>
    <!-- no interserver_http_port: 18.16 then opens no interserver listener -->
    <path>{p["data"]}</path>
    <tmp_path>{p["tmp"]}</tmp_path>
    <user_files_path>{p["uf"]}</user_files_path>
    <format_schema_path>{p["fs"]}</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <mark_cache_size>268435456</mark_cache_size>
    <uncompressed_cache_size>0</uncompressed_cache_size>
    <mlock_executable>false</mlock_executable>
    <max_concurrent_queries>100</max_concurrent_queries>
    <keep_alive_timeout>3</keep_alive_timeout>
</yandex>
""")

        def user(name: str, password: str, profile: str) -> str:
            return (
                f"<{name}><password>{escape(password)}</password><networks><ip>::/0</ip></networks>"
                f"<profile>{profile}</profile><quota>default</quota></{name}>"
            )

        if self.users_d:
            (d / "users.d").mkdir(exist_ok=True)
            for name, text in self.users_d.items():
                (d / "users.d" / name).write_text(text)
        (d / "users.xml").write_text(f"""<?xml version="1.0"?>
<yandex>
    <profiles>
        <default><max_memory_usage>2000000000</max_memory_usage></default>
        <readonly><readonly>1</readonly></readonly>
    </profiles>
    <users>
        {user("default", "", "default")}
        {user(AGENT_USER, AGENT_PASSWORD, "default")}
        {user(READONLY_USER, READONLY_PASSWORD, "readonly")}
    </users>
    <quotas>
        <default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
            <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time>
        </interval></default>
    </quotas>
</yandex>
""")

    # -- process control ------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> ClickHouseServer:
        """Start and wait for ``GET /ping`` == "Ok.". First start picks free ports (retrying on a
        collision); later starts (restart) reuse the same ports and data dir."""
        if self.running:
            return self
        if self.http_port:
            self._start_once(timeout)
            return self
        last: Exception | None = None
        for _ in range(5):
            self.http_port, self.tcp_port = free_port(), free_port()
            if self.http_port == self.tcp_port:
                continue
            try:
                self._start_once(timeout)
                return self
            except ClickHouseStartError as e:
                last = e
                if "Address already in use" not in str(e):
                    raise
                self.http_port = self.tcp_port = 0
        raise ClickHouseStartError(f"no free ports after 5 tries: {last}")

    def _start_once(self, timeout: float) -> None:
        self._write_config()
        for f in (self.error_log, self.console_log):
            with contextlib.suppress(FileNotFoundError):
                f.unlink()  # so a failure report shows only this start's errors
        with open(self.console_log, "ab") as out:
            self.proc = subprocess.Popen(
                [self.binary, f"--config-file={self.base_dir / 'config.xml'}"],
                cwd=self.base_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in pytest must not hit the server first
            )
        self.paused = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                rc = self.proc.returncode
                self.proc = None
                raise ClickHouseStartError(f"clickhouse-server exited with {rc} during start\n{self.log_tail()}")
            if self._ours_answers():
                return
            time.sleep(0.05)
        self.kill()
        raise ClickHouseStartError(f"clickhouse-server not ready after {timeout}s\n{self.log_tail()}")

    def _ours_answers(self) -> bool:
        """GET /ping says "Ok." and a query is answered with our display_name (18.16 sends the
        X-ClickHouse-Server-Display-Name header on query answers, not on /ping)."""
        if not self.ping(timeout=1.0):
            return False
        try:
            with urllib.request.urlopen(self.url + "/?query=SELECT%201", timeout=2.0) as r:
                return r.headers.get("X-ClickHouse-Server-Display-Name") == self.display_name
        except (OSError, urllib.error.URLError):
            return False

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for f in (self.console_log, self.error_log):
            try:
                text = f.read_text(errors="replace").splitlines()[-lines:]
            except FileNotFoundError:
                continue
            out.append(f"--- {f} (last {lines} lines) ---\n" + "\n".join(text))
        return "\n".join(out) or "(no server log)"

    def _signal(self, sig: int) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(sig)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Graceful SIGTERM; SIGKILL if it does not exit within ``timeout``."""
        if self.proc is None:
            return
        if self.paused:
            self.resume()
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL (a crash: no flush, no clean shutdown)."""
        if self.proc is None:
            return
        self._signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = None
        self.paused = False

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        """Stop (if running) and start again on the same ports with the same data."""
        self.stop()
        self.start(timeout)

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel but never answered.

        Returns once every thread is stopped: the stop is asynchronous, and a request sent right
        after the signal could otherwise still be answered by a thread running on another core.
        """
        self._signal(signal.SIGSTOP)
        self.paused = True
        assert self.proc is not None
        deadline = time.monotonic() + 5
        while not self._all_threads_stopped(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.005)

    @staticmethod
    def _all_threads_stopped(pid: int) -> bool:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except FileNotFoundError:
            return True
        for tid in tasks:
            try:
                stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            except FileNotFoundError:
                continue
            if stat.rsplit(")", 1)[1].split()[0] not in ("T", "t"):
                return False
        return True

    def resume(self) -> None:
        self._signal(signal.SIGCONT)
        self.paused = False

    def ensure_running(self) -> None:
        """Undo whatever a test left behind (paused or dead) so the shared server stays usable."""
        if self.paused:
            self.resume()
        if not self.running:
            self.start()

    def close(self) -> None:
        """Stop and delete the temp dir (if this object created it)."""
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> ClickHouseServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


class ExternalClickHouse(_HTTPMixin):
    """An already-running server named by AUTOMAGIK_TELEMETRY_TEST_CLICKHOUSE_URL (not ours to control).

    It must have the same users as the generated users.xml (agent / readonly_user, see above).
    """

    supports_process_control = False

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.base_dir = None
        self.paused = False

    @property
    def running(self) -> bool:
        return self.ping()

    def _unsupported(self, what: str) -> None:
        import pytest

        pytest.skip(
            f"{what} needs a server process the tests control; not possible with an external "
            f"server ({EXTERNAL_URL_ENV}={self.url})"
        )

    def start(self, timeout: float = START_TIMEOUT) -> ExternalClickHouse:
        deadline = time.monotonic() + timeout
        while not self.ping():
            if time.monotonic() > deadline:
                raise ClickHouseStartError(f"external ClickHouse at {self.url} does not answer /ping")
            time.sleep(0.2)
        return self

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        pass

    def close(self) -> None:
        pass

    def ensure_running(self) -> None:
        pass

    def kill(self) -> None:
        self._unsupported("kill()")

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        self._unsupported("restart()")

    def pause(self) -> None:
        self._unsupported("pause()")

    def resume(self) -> None:
        self._unsupported("resume()")

    def log_tail(self, lines: int = 40) -> str:
        return "(external server: no log)"


def make_server() -> ClickHouseServer | ExternalClickHouse:
    url = os.environ.get(EXTERNAL_URL_ENV)
    return ExternalClickHouse(url) if url else ClickHouseServer()
