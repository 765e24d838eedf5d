"""Build the Debian package and drive dpkg on this host: shared by tests/packaging.

The tests install the real ``.deb`` with ``dpkg -i`` on the machine running them (as root), so this
module also guards the host: it refuses to touch an ``automagik-telemetry`` installation it did not
make (a real one has a WAL that a purge would delete), and leaves the host purged afterwards.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent.parent
PACKAGE = "automagik-telemetry"
VENV = Path("/usr/lib/automagik-telemetry")
COMMAND = "/usr/bin/automagik-telemetry"
STATE_DIR = Path("/var/lib/automagik-telemetry")
CONF_DIR = Path("/etc/automagik-telemetry")
CONFFILE = CONF_DIR / "agent.toml"
UNIT_DIR = Path("/lib/systemd/system")
SERVICE, SOCKET = f"{PACKAGE}.service", f"{PACKAGE}.socket"
USER, CLIENT_GROUP = "automagik-telemetry", "automagik-telemetry-clients"
#: Written into the state directory by the tests: an installation carrying it is theirs to purge.
TEST_MARKER = STATE_DIR / ".installed-by-packaging-tests"


@dataclass(frozen=True)
class Deb:
    path: Path
    version: str
    arch: str
    build_seconds: float

    def field(self, name: str) -> str:
        return run(["dpkg-deb", "--field", str(self.path), name]).stdout.strip()

    def files(self) -> dict[str, str]:
        """``dpkg-deb --contents``: path ("/usr/bin/x") -> the ls-style mode string ("lrwxrwxrwx", ...)."""
        out: dict[str, str] = {}
        for line in run(["dpkg-deb", "--contents", str(self.path)]).stdout.splitlines():
            mode, _owner, _size, _date, _time, name = line.split(None, 5)
            out["/" + name.split(" -> ")[0].removeprefix("./").rstrip("/")] = mode
        return out

    def control_file(self, name: str) -> str:
        return run(["dpkg-deb", "--info", str(self.path), name]).stdout


def run(argv: list[str], *, check: bool = True, timeout: float = 120.0, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a command, text output captured; on failure (check) the assertion shows both streams."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kw)
    if check:
        assert result.returncode == 0, (
            f"{' '.join(map(str, argv))} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


def build() -> Deb:
    """``make deb`` in the repository; the path is the last line it prints."""
    started = time.monotonic()
    result = run(["make", "--no-print-directory", "deb"], cwd=REPO, timeout=900)
    seconds = time.monotonic() - started
    path = Path(result.stdout.strip().splitlines()[-1])
    match = re.fullmatch(rf"{PACKAGE}_(?P<version>[^_]+)_(?P<arch>[^_]+)\.deb", path.name)
    assert path.is_file() and match, f"make deb did not print the package's path: {result.stdout!r}"
    return Deb(path, match["version"], match["arch"], seconds)


def repack(deb: Deb, version: str, directory: Path) -> Path:
    """The same package with another Version (an upgrade target without a second build); no compression."""
    tree = directory / "tree"
    run(["dpkg-deb", "--raw-extract", str(deb.path), str(tree)])
    control = tree / "DEBIAN" / "control"
    control.write_text(re.sub(r"(?m)^Version: .*$", f"Version: {version}", control.read_text()))
    out = directory / f"{PACKAGE}_{version}_{deb.arch}.deb"
    run(["dpkg-deb", "--root-owner-group", "-Znone", "--build", str(tree), str(out)])
    shutil.rmtree(tree)
    return out


# ---------------------------------------------------------------------------- dpkg on this host
class HostLock:
    """Host-wide lock of the package tests: one test session at a time installs and purges the package
    (another one, e.g. a parallel `pytest tests/`, waits for it instead of purging under it)."""

    PATH = "/tmp/automagik-telemetry-packaging-tests.lock"

    def __init__(self, timeout: float = 1200.0) -> None:
        self.timeout = timeout
        self.fd = -1

    def acquire(self) -> HostLock:
        self.fd = os.open(self.PATH, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(self.fd)
                    raise AssertionError(
                        f"another packaging test session held {self.PATH} for {self.timeout:.0f} s"
                    ) from None
                time.sleep(0.5)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing drops the flock
            self.fd = -1


def status() -> str:
    """dpkg's status of the package: "installed", "config-files" (removed, not purged) or "not-installed"."""
    result = run(["dpkg-query", "--show", "--showformat=${db:Status-Status}", PACKAGE], check=False)
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else "not-installed"


def installed_version() -> str:
    return run(["dpkg-query", "--show", "--showformat=${Version}", PACKAGE]).stdout.strip()


def dpkg(*args: str) -> subprocess.CompletedProcess[str]:
    """dpkg with no terminal: a conffile prompt would fail instead of waiting forever."""
    return run(["dpkg", *args], stdin=subprocess.DEVNULL, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def install(path: Path) -> subprocess.CompletedProcess[str]:
    """``dpkg -i``. On a host that runs systemd the postinst starts the units for real: they are stopped
    again, so that the agents these tests start by hand own the state directory."""
    result = dpkg("--install", str(path))
    TEST_MARKER.touch()
    if systemd_running():
        run(["systemctl", "stop", SERVICE, SOCKET])
    return result


def purge() -> None:
    if status() != "not-installed":
        dpkg("--purge", PACKAGE)


def foreign_installation() -> str | None:
    """Why this host's package (or its leftover state) is not the tests' to purge; None if it is, or if none."""
    leftovers = [p for p in (STATE_DIR, CONF_DIR) if p.exists()]
    if status() == "not-installed" and not leftovers:
        return None
    if TEST_MARKER.exists():
        return None
    what = f"package {PACKAGE} ({status()})" if status() != "not-installed" else " and ".join(map(str, leftovers))
    return (
        f"{what} is on this host and was not installed by these tests; they install and purge "
        f"{PACKAGE}, which deletes {STATE_DIR} (the WAL): run them on a test machine, or "
        f"`dpkg --purge {PACKAGE}` first if that state is disposable"
    )


def systemd_running() -> bool:
    """The test host boots with systemd (the maintainer scripts then start/stop units for real)."""
    return Path("/run/systemd/system").is_dir()


def tree_digest(root: Path) -> dict[str, str]:
    """Every file below ``root`` -> sha256 of its content (what an upgrade or remove must not change)."""
    digest: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink() and path != TEST_MARKER:
            digest[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


def as_service_user(argv: list[str]) -> list[str]:
    """``argv`` run as the package's user and group (what the unit's User=/Group= do), without systemd."""
    return ["setpriv", f"--reuid={USER}", f"--regid={USER}", "--init-groups", *argv]


def service_user_dir(prefix: str) -> Path:
    """A fresh directory in /tmp that the service user owns (sockets of a hand-run agent)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    shutil.chown(path, USER, USER)
    return path


def unit_settings(text: str) -> dict[str, list[str]]:
    """A unit file's ``Key=value`` lines: key -> every value in order (systemd keys may repeat)."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")) or "=" not in line:
            continue
        key, value = line.split("=", 1)
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


# ---------------------------------------------------------------------------- the installed command
def clean_env(**extra: str) -> dict[str, str]:
    """A service-like environment: no PYTHONPATH (it would put the repository's code before the
    package's) and no AUTOMAGIK_TELEMETRY_* from the test run."""
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", **extra}


def installed_python(
    code: str, *, env: dict[str, str] | None = None, timeout: float = 60.0, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run Python code with the package's own interpreter (its venv, its copy of the libraries)."""
    return run([str(VENV / "bin/python"), "-c", code], env=env or clean_env(), timeout=timeout, check=check)


def installed_setting_env(key: str) -> str | None:
    """The environment variable of setting ``key`` in the INSTALLED code (None: it has no such setting)."""
    code = (
        "from automagik_telemetry_agent.config import SETTINGS_BY_KEY as S; "
        f"s = S.get({key!r}); print(s.env_name if s else '')"
    )
    return installed_python(code).stdout.strip() or None


class InstalledAgent:
    """``/usr/bin/automagik-telemetry agent`` started by hand as the service user (as the unit's User=
    would), with the package's config file plus ``flags``; ready once it prints ``ready`` on stderr."""

    def __init__(self, socket_path: Path, *flags: str, env: dict[str, str] | None = None) -> None:
        self.argv = as_service_user([COMMAND, "agent", "--config", str(CONFFILE), "--socket", str(socket_path), *flags])
        self.env = env or clean_env()
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._ready = threading.Event()

    def start(self, timeout: float = 30.0) -> InstalledAgent:
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"the installed agent did not start; stderr:\n{self.stderr}")
        return self

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if line.strip() == "ready":
                self._ready.set()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait (SIGKILL after ``timeout``); the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(10)

    def __enter__(self) -> InstalledAgent:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
