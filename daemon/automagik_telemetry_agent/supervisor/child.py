"""One child process of the supervisor: how it is started, signalled and reaped. Nothing else.

The supervisor (:mod:`.supervisor`) decides *when* (its state machine); this module only knows *how*:

* ``python -m automagik_telemetry_agent <command> [args]``, in its own session (a Ctrl-C in a terminal
  reaches the supervisor only, which stops the children in order);
* with its end of a :class:`~..lifecycle.channel.ReportChannel` (fd number in ``$AUTOMAGIK_TELEMETRY_REPORT_FD``),
  the supervisor's pid (for the parent-death signal the child arms itself, ``lifecycle.link.connect``),
  and any extra fds it must inherit (ingest: the listening socket);
* without systemd's per-service variables (``NOTIFY_SOCKET``, ``LISTEN_*``, ``WATCHDOG_*``): those are
  the supervisor's alone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from ..lifecycle.channel import REPORT_FD_ENV, SUPERVISOR_PID_ENV, ReportChannel

#: Environment variables a child must not inherit (systemd addresses them to the main process only).
SUPERVISOR_ONLY_ENV = ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC", "WATCHDOG_PID")


class ChildProcess:
    """A started child: its Popen, its channel, and the helpers to signal and reap it."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], channel: ReportChannel) -> None:
        self.name = name
        self.proc = proc
        self.channel = channel

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    def spawn(cls, name: str, args: Sequence[str], pass_fds: Sequence[int] = ()) -> ChildProcess:
        """Start ``automagik-telemetry <args>``; the caller sends the configuration on :attr:`channel`."""
        channel = ReportChannel()
        env = {k: v for k, v in os.environ.items() if k not in SUPERVISOR_ONLY_ENV}
        env[REPORT_FD_ENV] = str(channel.child_fd)
        env[SUPERVISOR_PID_ENV] = str(os.getpid())
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "automagik_telemetry_agent", *args],
                env=env,
                stdin=subprocess.DEVNULL,
                pass_fds=(channel.child_fd, *pass_fds),
                start_new_session=True,
            )
        except BaseException:
            channel.close()
            raise
        channel.spawned()
        return cls(name, proc, channel)

    def signal(self, signum: int) -> None:
        """Send ``signum`` unless the process is already reaped (a reaped pid may belong to someone else)."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def poll(self) -> int | None:
        """The exit code once the process has ended (reaping it), else None. A signal N reads as -N."""
        return self.proc.poll()

    def close(self) -> None:
        self.channel.close()


def stop_all(processes: Sequence[ChildProcess], timeout: float) -> None:
    """SIGTERM every process, give them ``timeout`` seconds in all, then SIGKILL and reap each one left."""
    for process in processes:
        process.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        process.kill()
        process.poll()
