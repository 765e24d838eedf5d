"""A throwaway systemd, booted with systemd-nspawn on an overlay of this host's root: the package's units
run for real (socket activation, Type=notify, the watchdog, the whole sandbox) on a machine whose
PID 1 is not systemd.

The container sees the host's files (so the package installed on the host, and its users) through a
read-only overlay; whatever it writes lands in a tmpfs that is thrown away. It shares the host's network
(the test ClickHouse on 127.0.0.1 is reachable) and boots to ``basic.target`` only, so none of the host's
enabled services (a system ClickHouse, a database...) start inside it; the socket unit does
(sockets.target is part of basic.target).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

NSPAWN_STATE = Path("/run/systemd/nspawn")
TMPFS_MAGIC = 0x01021994


class ContainerUnavailable(RuntimeError):
    """This host cannot boot a container (no systemd-nspawn, no overlayfs, no privilege): not the package's fault."""


def _is_tmpfs(path: Path) -> bool:
    """statfs f_type via stat -f (os.statvfs has no f_type)."""
    out = subprocess.run(["stat", "-f", "-c", "%t", str(path)], capture_output=True, text=True, check=False)
    return out.returncode == 0 and int(out.stdout.strip() or "0", 16) == TMPFS_MAGIC


def _mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ContainerUnavailable(f"mount {' '.join(args)}: {result.stderr.strip()}")


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
    return found


class SystemdContainer:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.root = workdir / "root"
        self.name = f"at-test-{uuid.uuid4().hex[:8]}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.init_pid = 0
        self._mounts: list[Path] = []
        self.log = workdir.parent / f"{self.name}.log"

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 90.0) -> SystemdContainer:
        if shutil.which("systemd-nspawn") is None:
            raise ContainerUnavailable("systemd-nspawn is missing (Debian package systemd-container)")
        try:
            self._prepare()
            self._boot(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        _mount("-t", "tmpfs", "-o", "size=2G,mode=0755", "tmpfs", str(self.workdir))
        self._mounts.append(self.workdir)
        for name in ("upper", "work", "root"):
            (self.workdir / name).mkdir()
        _mount(
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir=/,upperdir={self.workdir / 'upper'},workdir={self.workdir / 'work'}",
            str(self.root),
        )
        self._mounts.append(self.root)
        # Its own machine id (nspawn refuses the host's), and /run/systemd/nspawn on a tmpfs (nspawn only
        # deletes its state there when it is one; on this kind of host /run is a plain directory).
        (self.root / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
        if not _is_tmpfs(NSPAWN_STATE):
            NSPAWN_STATE.mkdir(parents=True, exist_ok=True)
            _mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(NSPAWN_STATE))
            self._mounts.append(NSPAWN_STATE)

    def _boot(self, timeout: float) -> None:
        argv = [
            "systemd-nspawn",
            "--quiet",
            f"--directory={self.root}",
            f"--machine={self.name}",
            "--boot",
            "--register=no",
            "--keep-unit",
            "--link-journal=no",
            "--console=pipe",
            "--",
            "systemd.unit=basic.target",
        ]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self.init_pid:
            if self.proc.poll() is not None:
                raise ContainerUnavailable(f"systemd-nspawn exited {self.proc.returncode}: {self.log.read_text()}")
            if time.monotonic() > deadline:
                raise ContainerUnavailable(f"no container init after {timeout}s: {self.log.read_text()}")
            self.init_pid = next(
                (p for p in _children(self.proc.pid) if Path(f"/proc/{p}/comm").read_text().strip() == "systemd"), 0
            )
            time.sleep(0.1)
        # Until its bus is up, systemctl cannot even ask: poll until the boot is over.
        state = ""
        while state not in ("running", "degraded"):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise ContainerUnavailable(
                    f"the container's systemd did not finish booting ({state or 'no answer'}):"
                    f" {self.log.read_text()[-2000:]}"
                )
            time.sleep(0.2)
            state = self.run(["systemctl", "is-system-running"], check=False, timeout=30).stdout.strip()

    def stop(self) -> None:
        """Shut the container down (SIGTERM = clean halt), then undo every mount."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for mount in reversed(self._mounts):
            for _attempt in range(50):
                if subprocess.run(["umount", str(mount)], capture_output=True, check=False).returncode == 0:
                    break
                time.sleep(0.1)
        self._mounts.clear()

    def __enter__(self) -> SystemdContainer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ inside
    def run(
        self, argv: list[str], *, check: bool = True, timeout: float = 60.0, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the container (all its namespaces, its root, a clean environment)."""
        clean = ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"]  # nothing from the test run
        result = subprocess.run(
            ["nsenter", f"--target={self.init_pid}", "--all", "--", *clean, *argv],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check:
            assert result.returncode == 0, (
                f"in container: {' '.join(argv)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def path(self, inside: str) -> Path:
        """A path inside the container, as the host sees it (to put files in)."""
        return self.root / inside.lstrip("/")

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run(["systemctl", "show", unit, *(f"--property={p}" for p in props)]).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str) -> str:
        return self.run(["journalctl", "--no-pager", "-o", "cat", "-u", unit], check=False).stdout
