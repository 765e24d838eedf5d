"""Runtime checks of a configuration, before anything starts: can this user, on this host, run it?

:mod:`.config` validates values on their own (types, URLs, relations). This module checks the facts a
value points at, which only the host can answer:

* the WAL directory (or, if it does not exist yet, its nearest existing parent) is a directory this
  user can write, and no other agent holds its lock;
* the socket's directory can be written (or created), and the socket path is not held by a live
  listener: a stale socket file (nobody listening) is fine, the agent replaces it, and so is a
  socket systemd listens on (a .socket unit). Skipped under systemd socket activation, where
  systemd owns the path;
* the control socket (``socket.control_path``, default ``control.sock`` next to the socket) is not
  held by a running agent either;
* for a shipping sink: the password file and CA bundle are readable, the dead-letter, shipper-state
  and embedded-store directories are writable or creatable.

:func:`problems` returns every problem found (``doctor`` prints them all); :func:`check` raises
:class:`~.config.ConfigError` with the first, one line naming the setting as the user set it and
what to do (the supervisor and ``config check`` call it; the CLI prints it and exits 2).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import socket
import stat
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .config import ConfigError, origin
from .paths import WAL_LOCK_FILE, control_socket_path, dead_letter_dir, shipper_state_dir

__all__ = ["Problem", "check", "held_by_systemd", "problems", "socket_in_use"]

PROBE_TIMEOUT_S = 1.0


@dataclass(frozen=True, slots=True)
class Problem:
    key: str  # the setting the problem is about
    message: str  # one line: where it was set, what is wrong, what to do

    def __str__(self) -> str:
        return self.message


def check(config: Mapping[str, Any], *, socket_activated: bool | None = None) -> None:
    """Raise :class:`ConfigError` for the first runtime problem of ``config``; return if there is none.

    ``socket_activated``: the listening socket comes from systemd (``LISTEN_FDS``), so its path is
    systemd's business and is not checked; None = decide from ``LISTEN_PID``/``LISTEN_FDS`` in the
    environment.
    """
    found = problems(config, socket_activated=socket_activated)
    if found:
        raise ConfigError(found[0].message)


def problems(
    config: Mapping[str, Any], *, socket_activated: bool | None = None, allow_running: bool = False
) -> list[Problem]:
    """Every runtime problem of ``config``, in a stable order (socket, WAL, shipper).

    ``allow_running``: a running agent on this socket and WAL is expected (``doctor`` on a live host),
    so a live listener or a held WAL lock is not a problem.
    """
    if socket_activated is None:
        socket_activated = _socket_activated()
    sources = getattr(config, "sources", {})
    found: list[Problem] = []

    def add(key: str, problem: str) -> None:
        found.append(Problem(key, f"{origin(key, sources.get(key, 'default'))}: {problem}"))

    # ---- sockets
    sock_path = config["socket.path"]
    if not socket_activated:
        why = _dir_problem(os.path.dirname(os.path.abspath(sock_path)))
        if why:
            add("socket.path", f"cannot create the socket {sock_path}: {why}")
        else:
            why = _socket_path_problem(sock_path, socket.SOCK_SEQPACKET, allow_running)
            if why:
                add("socket.path", why)
    control = control_socket_path(config)
    control_key = "socket.control_path" if config.get("socket.control_path") else "socket.path"
    if os.path.dirname(control) != os.path.dirname(os.path.abspath(sock_path)) or socket_activated:
        why = _dir_problem(os.path.dirname(control))
        if why:
            add(control_key, f"cannot create the control socket {control}: {why}")
    if not any(p.key == "socket.path" for p in found):  # one running agent: report it once
        why = _socket_path_problem(control, socket.SOCK_STREAM, allow_running)
        if why:
            add(control_key, f"control socket {why}")

    # ---- WAL
    wal_dir = config["wal.dir"]
    why = _dir_problem(wal_dir)
    if why:
        add("wal.dir", f"cannot use the WAL directory {wal_dir}: {why}")
    elif not allow_running:
        holder = _flock_holder(os.path.join(wal_dir, WAL_LOCK_FILE))
        if holder is not None:
            add(
                "wal.dir",
                f"the WAL directory {wal_dir} is in use by another running agent{_pid_text(holder)}: "
                "stop it, or give this one its own --wal-dir",
            )

    # ---- shipper
    sink = config.get("sink", "clickhouse")
    if sink != "none":
        dead_dir = dead_letter_dir(config)
        key = "shipper.dead_letter_dir" if config.get("shipper.dead_letter_dir") else "wal.dir"
        why = _dir_problem(dead_dir)
        if why:
            add(key, f"cannot use the dead-letter directory {dead_dir}: {why}")
        why = _dir_problem(shipper_state_dir(wal_dir))
        if why:
            add("wal.dir", f"cannot use the shipper's state directory {shipper_state_dir(wal_dir)}: {why}")
    if sink == "clickhouse":
        for key, what in (("clickhouse.password_file", "password file"), ("clickhouse.ca_bundle", "CA bundle")):
            path = config.get(key)
            if path:
                why = _readable_problem(path)
                if why:
                    add(key, f"cannot read the {what} {path}: {why}")
    if sink == "embedded" and config.get("embedded.dir"):
        why = _dir_problem(config["embedded.dir"])
        if why:
            add("embedded.dir", f"cannot use the embedded store directory {config['embedded.dir']}: {why}")
    return found


# ---------------------------------------------------------------------------- facts
def _socket_activated() -> bool:
    return os.environ.get("LISTEN_PID") == str(os.getpid()) and bool(os.environ.get("LISTEN_FDS"))


def _user() -> str:
    uid = os.geteuid()
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _writable(path: str) -> bool:
    effective = os.access in os.supports_effective_ids
    return os.access(path, os.W_OK | os.X_OK, effective_ids=effective)


def _dir_problem(path: str) -> str | None:
    """None if ``path`` is a directory this user can create files in, or one it could create.

    A missing directory is fine when its nearest existing parent is writable (the agent creates it);
    ``os.access`` answers for this user, a read-only file system and an immutable directory alike.
    """
    path = os.path.abspath(path)
    probe = path
    while True:
        try:
            st = os.stat(probe)
            break
        except (FileNotFoundError, NotADirectoryError):
            parent = os.path.dirname(probe)
            if parent == probe:
                return "no existing parent directory"
            probe = parent
        except PermissionError:
            return f"{probe} cannot be reached by user {_user()} (no search permission on a parent)"
    if not stat.S_ISDIR(st.st_mode):
        return f"{probe} is not a directory: remove it or choose another path"
    if _writable(probe):
        return None
    fix = "make it writable (chown/chmod) or choose another path"
    if probe == path:
        return f"{probe} is not writable by user {_user()}: {fix}"
    return f"cannot create it: {probe} is not writable by user {_user()}: {fix}"


def _readable_problem(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except IsADirectoryError:
        return "it is a directory: name the file"
    except OSError as exc:
        return f"{exc.strerror} for user {_user()}: fix the path or its permissions"
    return None


def socket_in_use(
    path: str, kind: int = socket.SOCK_SEQPACKET, timeout: float = PROBE_TIMEOUT_S
) -> tuple[bool, int | None]:
    """(someone listens on ``path``, their pid if the kernel tells): connect and ask SO_PEERCRED.

    A stale socket file (connection refused) or a missing one is not in use.
    """
    probe = socket.socket(socket.AF_UNIX, kind)
    probe.settimeout(timeout)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False, None
    except OSError as exc:
        if exc.errno == 91:  # EPROTOTYPE: a listener of another socket type
            return True, None
        raise
    else:
        try:
            creds = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid = struct.unpack("3i", creds)[0]
        except OSError:
            pid = 0
        return True, pid or None
    finally:
        probe.close()


def _socket_path_problem(path: str, kind: int, allow_running: bool) -> str | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot inspect {path}: {exc.strerror}"
    if not stat.S_ISSOCK(st.st_mode):
        return f"{path} exists and is not a socket: remove it or choose another path"
    try:
        in_use, pid = socket_in_use(path, kind)
    except PermissionError:
        return (
            f"{path} exists and user {_user()} may not connect to it: if an agent of another user runs "
            "there, stop it; if the file is stale, remove it"
        )
    except OSError as exc:
        return f"cannot probe {path}: {exc.strerror}"
    if in_use and pid is not None and held_by_systemd(pid):
        return None  # a .socket unit listens there: the agent receives the socket by socket activation
    if in_use and not allow_running:
        return (
            f"{path} is in use by a running agent{_pid_text(pid)}: stop it first, or choose another path "
            "(to check a configuration while the agent runs: config check --no-runtime)"
        )
    return None


def held_by_systemd(pid: int) -> bool:
    """Whether ``pid`` (a listener's, from SO_PEERCRED) is systemd: its socket units listen for the agent."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip() == "systemd"
    except OSError:
        return False


def _pid_text(pid: int | None) -> str:
    return f" (pid {pid})" if pid else ""


def _flock_holder(path: str) -> int | None:
    """The pid holding an flock on ``path`` (from /proc/locks), 0 if held by an unknown pid, None if free."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for fields in _proc_locks():
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == wanted:
            return int(fields[4]) if fields[4].isdigit() else 0
    return None


def _proc_locks() -> Iterator[list[str]]:
    with contextlib.suppress(OSError), open("/proc/locks") as f:
        for line in f:
            fields = line.split()
            if fields and fields[1] == "->":  # a waiter: "1: -> FLOCK ..."
                continue
            yield fields
