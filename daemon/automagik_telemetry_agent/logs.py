"""Logging for agent processes: structured journald entries under systemd, one line per event on stderr otherwise.

The journal is used when both hold (:func:`journal_wanted`): systemd-python is importable, and stderr
*is* the journal: ``$JOURNAL_STREAM`` (set by systemd for a service whose output goes to journald)
names the device and inode of our stderr. A process started by hand from a shell inside a service, or
with stderr redirected to a file, keeps writing plain lines to stderr. Children inherit the
supervisor's stderr and environment, so each makes the same choice on its own.

Journal fields of every entry: ``MESSAGE``, ``PRIORITY`` (syslog level), ``SYSLOG_IDENTIFIER=
automagik-telemetry``, ``PROCESS`` (supervisor, ingest or shipper), ``LOGGER``, ``THREAD_NAME``,
``CODE_FILE``/``CODE_LINE``/``CODE_FUNC``, and ``EXCEPTION`` (the traceback) when there is one.
Query them with e.g. ``journalctl -t automagik-telemetry PROCESS=shipper -p warning``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, TextIO

SYSLOG_IDENTIFIER = "automagik-telemetry"
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def journal_sender() -> Callable[..., Any] | None:
    """``systemd.journal.send`` if systemd-python is installed, else None."""
    try:
        from systemd import journal
    except ImportError:
        return None
    send: Callable[..., Any] = journal.send
    return send


def journal_wanted(stream: TextIO | None = None, env: Mapping[str, str] | None = None) -> bool:
    """True when ``stream`` (default stderr) is connected to journald: ``$JOURNAL_STREAM`` is its
    ``device:inode`` (systemd.exec(5))."""
    stream = sys.stderr if stream is None else stream
    env = os.environ if env is None else env
    value = env.get("JOURNAL_STREAM", "")
    if not value or stream is None:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return value == f"{st.st_dev}:{st.st_ino}"


class JournalHandler(logging.Handler):
    """A log record -> one journal entry with the fields listed in the module docstring."""

    def __init__(self, process: str, send: Callable[..., Any]) -> None:
        super().__init__()
        self.process = process
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] = {
                "PRIORITY": str(_priority(record.levelno)),
                "SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER,
                "PROCESS": self.process,
                "LOGGER": record.name,
                "THREAD_NAME": record.threadName,
                "CODE_FILE": record.pathname,
                "CODE_LINE": record.lineno,
                "CODE_FUNC": record.funcName,
            }
            if record.exc_info:
                fields["EXCEPTION"] = logging.Formatter().formatException(record.exc_info)
            self._send(record.getMessage(), **fields)
        except Exception:
            self.handleError(record)


def _priority(levelno: int) -> int:
    for level, priority in sorted(_PRIORITY.items(), reverse=True):
        if levelno >= level:
            return priority
    return 7


def setup_logging(
    level: str = "info",
    process: str = "agent",
    *,
    stream: TextIO | None = None,
    env: Mapping[str, str] | None = None,
    sender: Callable[..., Any] | None = None,
) -> str:
    """Send the root logger to the journal or to ``stream`` (default stderr); return "journal" or "stderr".

    ``process`` names this process in every entry (the ``PROCESS`` field, or the line prefix).
    ``sender`` replaces ``systemd.journal.send`` (tests).
    """
    stream = sys.stderr if stream is None else stream
    send = sender or journal_sender()
    handler: logging.Handler
    if send is not None and journal_wanted(stream, env):
        handler, target = JournalHandler(process, send), "journal"
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s {process}[%(process)d] %(levelname)s %(name)s: %(message)s")
        )
        target = "stderr"
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_level(level)
    return target


def set_level(level: str) -> None:
    """Change the log level of this process (``log.level`` is a live setting)."""
    logging.getLogger().setLevel(level.upper())
