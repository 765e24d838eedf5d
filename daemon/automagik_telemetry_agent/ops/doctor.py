"""The checks behind ``automagik-telemetry doctor``: a host's setup end to end, and how to fix what is wrong.

One line per check, ``ok``, ``warn`` or ``FAIL``, and for the last two one line saying what to do.
Exit 0 when nothing failed (warnings allowed), 1 otherwise. The checks, in order: the configuration
loads; the agent answers on its control socket (its children's states); the runtime facts of
``preflight``; the client socket (exists, mode, group); the WAL directory (exists, free space
against ``wal.min_free``); the sink: for ClickHouse reachability, authentication, version and
features (zstd from 21.1, deduplication tokens from 22.2), the table and its row profile, the
schema version recorded by ``schema apply``, the INSERT privilege (an empty INSERT) -- with several
endpoints or a cluster one line per endpoint instead, with its macros, tables and recorded migrations
compared with the others' (ops/doctor_sink.py); for the embedded sink that chDB imports; finally the
dead-letter file.
"""

from __future__ import annotations

import contextlib
import grp
import http.client
import os
import pwd
import ssl
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..config.values import split_listen
from ..paths import DEAD_LETTER_FILE, control_socket_path, dead_letter_dir
from ..preflight import held_by_systemd, problems, socket_in_use
from ..units import duration_text, size_text
from .doctor_check import FAIL, OK, WARN, Check, Status
from .doctor_sink import check_clickhouse, check_embedded
from .status import fetch_status

__all__ = ["FAIL", "OK", "WARN", "Check", "Doctor", "Status"]


class Doctor:
    """Runs the checks in order; each appends to :attr:`checks` and may stop the ones that depend on it."""

    def __init__(self, config: Mapping[str, Any], emit: Callable[[Check], None]) -> None:
        self.config = config
        self.emit = emit
        self.checks: list[Check] = []
        self.status: dict[str, Any] | None = None
        self.agent_running = False

    def add(self, status: Status, name: str, detail: str, fix: str = "") -> Check:
        check = Check(status, name, detail, fix)
        self.checks.append(check)
        self.emit(check)
        return check

    @property
    def failed(self) -> bool:
        return any(c.status == FAIL for c in self.checks)

    def run(self) -> None:
        self.check_agent()
        self.check_preflight()
        self.check_socket()
        self.check_otlp()
        self.check_wal()
        sink = self.config["sink"]
        if sink == "clickhouse":
            self.check_clickhouse()
        elif sink == "embedded":
            self.check_embedded()
        else:
            self.add(OK, "sink", "none: the agent only ingests; the WAL keeps everything")
        self.check_dead_letters()

    # ------------------------------------------------------------------ agent
    def check_agent(self) -> None:
        try:
            self.status = fetch_status(self.config, timeout=3.0)
        except RuntimeError as exc:
            self.add(WARN, "agent", f"cannot read its status: {exc}")
        if self.status is not None:
            self.agent_running = True
            s = self.status
            self.add(
                OK,
                "agent",
                f"{s.get('state', 'running')}, pid {s.get('pid', '?')}, up {duration_text(s.get('uptime_s'))}",
            )
            for name, child in sorted((s.get("children") or {}).items()):
                child = child or {}
                state, restarts = child.get("state", "?"), child.get("restarts", 0)
                if state != "running":
                    self.add(
                        FAIL,
                        f"agent {name}",
                        f"{state} ({restarts} restarts)",
                        "read the agent's log (journalctl -u automagik-telemetry) for the child's last error",
                    )
                elif restarts:
                    self.add(
                        WARN,
                        f"agent {name}",
                        f"running, but restarted {restarts} times",
                        "read the agent's log for why it exited",
                    )
                else:
                    self.add(OK, f"agent {name}", "running")
            last_error = (s.get("metrics") or {}).get("last_error")
            if last_error:
                self.add(WARN, "agent last error", last_error, "see `automagik-telemetry status` and the log")
            return
        try:
            live, pid = socket_in_use(self.config["socket.path"])
        except OSError:
            live, pid = False, None
        if live and pid is not None and held_by_systemd(pid):
            self.add(
                FAIL,
                "agent",
                "not running; systemd listens on its socket (socket activation)",
                "`systemctl start automagik-telemetry` (or it starts on the first client connection)",
            )
            return
        if live:  # an agent without a control socket (or one this user may not reach)
            self.agent_running = True
            self.add(
                WARN,
                "agent",
                f"the socket answers{f' (pid {pid})' if pid else ''} but the control socket "
                f"{control_socket_path(self.config)} does not",
                "if the agent runs as another user, run doctor "
                "as root; else restart it (an agent without a control socket is an older version)",
            )
            return
        self.add(
            FAIL,
            "agent",
            "not running",
            "start it: `systemctl start automagik-telemetry` (or `automagik-telemetry agent` in the foreground)",
        )

    # ------------------------------------------------------------------ host
    def check_preflight(self) -> None:
        found = problems(self.config, allow_running=self.agent_running)
        for problem in found:
            self.add(FAIL, f"setup {problem.key}", problem.message)
        if not found:
            self.add(OK, "setup", "WAL, socket, dead-letter directories and files usable by this user")

    def check_socket(self) -> None:
        path = self.config["socket.path"]
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if self.agent_running:
                self.add(
                    FAIL,
                    "socket",
                    f"{path} does not exist although the agent runs",
                    "is the agent configured with another --socket? clients use AUTOMAGIK_TELEMETRY_SOCKET",
                )
            return  # not running: already a FAIL above
        except OSError as exc:
            self.add(FAIL, "socket", f"cannot inspect {path}: {exc.strerror}", "fix the permissions of its directory")
            return
        if not stat.S_ISSOCK(st.st_mode):
            self.add(FAIL, "socket", f"{path} is not a socket", "remove it and restart the agent")
            return
        mode = stat.S_IMODE(st.st_mode)
        owner, group = _user_name(st.st_uid), _group_name(st.st_gid)
        detail = f"{path} mode {mode:04o} owner {owner} group {group}"
        if not mode & 0o022:
            self.add(
                WARN,
                "socket",
                f"{detail}: only {owner} can connect",
                f'set socket.mode = "0660" and add the applications\' users to group {group}',
            )
        elif mode & 0o002:
            self.add(
                WARN,
                "socket",
                f"{detail}: every local user can send spans",
                "set socket.mode = \"0660\" and add the applications' users to the socket's group",
            )
        elif mode != self.config["socket.mode"]:
            self.add(
                WARN,
                "socket",
                f"{detail}, but socket.mode is {self.config['socket.mode']:04o}",
                "a systemd .socket unit sets the mode itself (SocketMode=): make the two agree",
            )
        else:
            self.add(OK, "socket", f"{detail}: applications in group {group} can connect")

    def check_otlp(self) -> None:
        """The OTLP/HTTP receiver answers an empty export (nothing is written) on ``otlp.listen``."""
        listen = self.config["otlp.listen"]
        if not listen:
            self.add(OK, "OTLP", 'off (otlp.listen = "")')
            return
        host, port = split_listen(listen)
        scheme = "https" if self.config["otlp.tls_cert"] else "http"
        headers = {"Content-Type": "application/json"}
        token_file = self.config["otlp.token_file"]
        if token_file:
            try:
                headers["Authorization"] = "Bearer " + Path(token_file).read_text().strip()
            except OSError as exc:
                self.add(
                    FAIL, "OTLP", f"cannot read otlp.token_file {token_file}: {exc.strerror}", "fix its permissions"
                )
                return
        connection: http.client.HTTPConnection = (
            http.client.HTTPSConnection(host, port, timeout=5, context=ssl._create_unverified_context())
            if scheme == "https"
            else http.client.HTTPConnection(host, port, timeout=5)
        )
        try:
            connection.request("POST", "/v1/traces", body=b"{}", headers=headers)
            status = connection.getresponse().status
        except (OSError, http.client.HTTPException) as exc:
            level = FAIL if self.agent_running else WARN
            self.add(
                level, "OTLP", f"{scheme}://{listen} does not answer: {exc}", "start the agent; check --otlp-listen"
            )
            return
        finally:
            connection.close()
        if status != 200:
            self.add(FAIL, "OTLP", f"{scheme}://{listen} answered {status} to an empty export", "see the agent's log")
            return
        secured = bool(token_file or self.config["otlp.tls_cert"])
        if host not in ("127.0.0.1", "::1", "localhost") and not secured:
            self.add(
                WARN,
                "OTLP",
                f"{scheme}://{listen} answers, beyond loopback without a token or TLS",
                "set otlp.token_file or otlp.tls_cert/otlp.tls_key",
            )
            return
        self.add(OK, "OTLP", f"{scheme}://{listen} answers (POST /v1/traces: 200)")

    def check_wal(self) -> None:
        wal_dir = self.config["wal.dir"]
        if not os.path.isdir(wal_dir):
            status = FAIL if self.agent_running else WARN
            self.add(status, "WAL", f"{wal_dir} does not exist", "the agent creates it at start; check --wal-dir")
            return
        try:
            vfs = os.statvfs(wal_dir)
        except OSError as exc:
            self.add(FAIL, "WAL", f"cannot stat {wal_dir}: {exc.strerror}", "check the file system")
            return
        free = vfs.f_bavail * vfs.f_frsize
        size = 0
        with contextlib.suppress(OSError), os.scandir(wal_dir) as it:
            for entry in it:
                if entry.name.endswith(".seg"):
                    with contextlib.suppress(OSError):
                        size += entry.stat().st_size
        min_free, max_size = self.config["wal.min_free"], self.config["wal.max_size"]
        detail = f"{wal_dir}: {size_text(size)} of segments, {size_text(free)} free on its file system"
        if min_free and free < min_free:
            self.add(
                FAIL,
                "WAL",
                f"{detail}, below wal.min_free ({size_text(min_free)}): the disk policy "
                f"({self.config['wal.disk_policy']}) is losing spans",
                "free disk space, or lower --wal-min-free",
            )
        elif min_free and free < 2 * min_free:
            self.add(
                WARN,
                "WAL",
                f"{detail}, close to wal.min_free ({size_text(min_free)})",
                "free disk space before the disk policy starts dropping spans",
            )
        elif max_size and size > 0.8 * max_size:
            self.add(
                WARN,
                "WAL",
                f"{detail}, over 80% of wal.max_size ({size_text(max_size)})",
                "the shipper is behind: check ClickHouse (`automagik-telemetry status`)",
            )
        else:
            self.add(OK, "WAL", detail)

    # ------------------------------------------------------------------ sinks (doctor_sink)
    def check_clickhouse(self) -> None:
        check_clickhouse(self.config, self.add)

    def check_embedded(self) -> None:
        check_embedded(self.config, self.add)

    def check_dead_letters(self) -> None:
        path = os.path.join(dead_letter_dir(self.config), DEAD_LETTER_FILE)
        try:
            with open(path, "rb") as f:
                count = sum(1 for line in f if line.strip())
        except FileNotFoundError:
            count = 0
        except OSError as exc:
            self.add(WARN, "dead letters", f"cannot read {path}: {exc.strerror}", "run doctor as the agent's user")
            return
        if count:
            self.add(
                WARN,
                "dead letters",
                f"{count} spans in {path}",
                "see `automagik-telemetry dead-letter list`; "
                "once the cause is fixed, `automagik-telemetry dead-letter replay`",
            )
        else:
            self.add(OK, "dead letters", "none")


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
