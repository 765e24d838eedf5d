"""A private, real ClickHouse server for the tests: Debian 12's ClickHouse 18.16.1.

``ClickHouseServer`` runs ``clickhouse-server`` (installed by scripts/bootstrap.sh) as its own
instance: a temp dir holds a generated config.xml + users.xml and all data/tmp/log paths; it listens on
127.0.0.1 only, on free HTTP and native-TCP ports; the interserver port is left unconfigured, which
makes 18.16 not open it. The process can be stopped, killed, restarted (same ports, same data) and
frozen (SIGSTOP; ``pause()``/``resume()`` are ``freeze()``/``thaw()``) to simulate outages: that code is
tests/managed_process.py's ``ManagedProcess``, shared with the cluster's ZooKeeper.

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
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

from managed_process import STOP_TIMEOUT, ManagedProcess
from managed_process import free_port as free_port  # re-exported: tests import it from here

EXTERNAL_URL_ENV = "AUTOMAGIK_TELEMETRY_TEST_CLICKHOUSE_URL"
BINARY_ENV = "AUTOMAGIK_TELEMETRY_TEST_CLICKHOUSE_BIN"

AGENT_USER, AGENT_PASSWORD = "agent", "agent-secret"
READONLY_USER, READONLY_PASSWORD = "readonly_user", "readonly-secret"

START_TIMEOUT = 60.0


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


class ClickHouseServer(ManagedProcess, _HTTPMixin):
    """A private clickhouse-server process. See the module docstring; process control (start, stop, kill,
    restart, freeze/thaw, log_tail) is :class:`managed_process.ManagedProcess`'s."""

    supports_process_control = True
    what = "clickhouse-server"
    start_error = ClickHouseStartError
    start_timeout = START_TIMEOUT

    def __init__(
        self,
        base_dir: str | os.PathLike[str] | None = None,
        binary: str | None = None,
        users_d: dict[str, str] | None = None,
    ):
        """``users_d``: extra ``{file name: XML text}`` written to ``users.d/`` next to users.xml, which the
        server merges into it (how deploy/clickhouse/users/ adds the agent's user on 18.16)."""
        super().__init__(base_dir, prefix="clickhouse-test-")
        self.binary = binary or find_binary()
        self.users_d = dict(users_d or {})
        self.http_port = 0
        self.tcp_port = 0
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

    @property
    def log_files(self) -> Sequence[Path]:
        return (self.console_log, self.error_log)

    # -- process control: ManagedProcess's, plus these hooks ------------------------------------
    @property
    def _ports(self) -> tuple[int, ...]:
        return (self.http_port, self.tcp_port)

    @_ports.setter
    def _ports(self, ports: Sequence[int]) -> None:
        self.http_port, self.tcp_port = ports

    def _command(self) -> list[str]:
        self._write_config()
        with contextlib.suppress(FileNotFoundError):
            self.error_log.unlink()  # so a failure report shows only this start's errors
        return [self.binary, f"--config-file={self.base_dir / 'config.xml'}"]

    def _ready(self) -> bool:
        """GET /ping says "Ok." and a query is answered with our display_name (18.16 sends the
        X-ClickHouse-Server-Display-Name header on query answers, not on /ping)."""
        if not self.ping(timeout=1.0):
            return False
        try:
            with urllib.request.urlopen(self.url + "/?query=SELECT%201", timeout=2.0) as r:
                return r.headers.get("X-ClickHouse-Server-Display-Name") == self.display_name
        except (OSError, urllib.error.URLError):
            return False

    def pause(self) -> None:
        """:meth:`freeze` under the name the ``clickhouse`` fixture has (ExternalClickHouse's too)."""
        self.freeze()

    def resume(self) -> None:
        """:meth:`thaw` under the name the ``clickhouse`` fixture has (ExternalClickHouse's too)."""
        self.thaw()


class ExternalClickHouse(_HTTPMixin):
    """An already-running server named by AUTOMAGIK_TELEMETRY_TEST_CLICKHOUSE_URL (not ours to control).

    It must have the same users as the generated users.xml (agent / readonly_user, see above).
    """

    supports_process_control = False

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.base_dir = None
        self.frozen = False

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
