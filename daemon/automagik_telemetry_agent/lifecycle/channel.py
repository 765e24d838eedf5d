"""The channel between the supervisor and each child: configuration down, heartbeat reports up.

One AF_UNIX SOCK_SEQPACKET socketpair per child process (message boundaries, no framing). The child's
end is inherited; its fd number is in ``$AUTOMAGIK_TELEMETRY_REPORT_FD``. Messages are JSON objects
with ``"v": 1``:

* supervisor -> child, first message and after every SIGHUP that changed a live setting:
  ``{"v": 1, "config": {"values": {key: value}, "sources": {key: source}}}``. A child never reads the
  config file itself: it runs with exactly the configuration the supervisor validated, and a restarted
  child gets the supervisor's current one (settings that need a restart stay as they were).
* child -> supervisor, about once a second (:class:`~.link.Reporter`) and at once when the child becomes ready:
  ``{"v": 1, "child": "ingest"|"shipper", "pid": int, "ready": bool, "loop_age_s": float,
  "metrics": {...}}``. ``loop_age_s`` is how long ago the child's main loop last made progress
  (:class:`~.liveness.Liveness`); ``metrics`` is a metrics dict (``metrics.samples``). A child that cannot go on
  sends one last report with ``"error": "<one line>"`` before it exits (:meth:`~.link.SupervisorLink.fail`);
  the supervisor quotes it when it gives up.

This module is the format and the supervisor's end (:class:`ReportChannel`); the child's end is
:mod:`.link`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Mapping
from typing import Any

from ..config import AgentConfig

log = logging.getLogger(__name__)

REPORT_FD_ENV = "AUTOMAGIK_TELEMETRY_REPORT_FD"
SUPERVISOR_PID_ENV = "AUTOMAGIK_TELEMETRY_SUPERVISOR_PID"
VERSION = 1
MAX_MESSAGE = 256 * 1024  # a report is a few KiB; a larger one is dropped (truncated JSON)


def parse_config_message(data: bytes) -> AgentConfig | None:
    try:
        message = json.loads(data)
        config = message["config"]
        if message.get("v") != VERSION or not isinstance(config["values"], dict):
            return None
        return AgentConfig(dict(config["values"]), dict(config.get("sources") or {}))
    except (ValueError, KeyError, TypeError):
        return None


def config_message(config: Mapping[str, Any]) -> bytes:
    sources = getattr(config, "sources", {})
    return json.dumps(
        {"v": VERSION, "config": {"values": dict(config.items()), "sources": dict(sources)}}, separators=(",", ":")
    ).encode()


def parse_report(data: bytes) -> dict[str, Any] | None:
    """A validated child report, or None (a malformed one is ignored, never trusted)."""
    try:
        report = json.loads(data)
    except ValueError:
        return None
    if (
        not isinstance(report, dict)
        or report.get("v") != VERSION
        or not isinstance(report.get("child"), str)
        or not isinstance(report.get("pid"), int)
        or not isinstance(report.get("ready"), bool)
    ):
        return None
    age = report.get("loop_age_s")
    if isinstance(age, bool) or not isinstance(age, int | float) or not age >= 0:
        return None
    if not isinstance(report.get("metrics"), dict):
        report["metrics"] = {}
    if "error" in report and not isinstance(report["error"], str):
        del report["error"]
    return report


class ReportChannel:
    """The supervisor's end of one child's channel (a new one for every child process)."""

    def __init__(self) -> None:
        self.sock, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.setblocking(False)
        os.set_inheritable(child.fileno(), True)
        self._child: socket.socket | None = child
        self.closed = False

    @property
    def child_fd(self) -> int:
        assert self._child is not None
        return self._child.fileno()

    def spawned(self) -> None:
        """The child has its copy: close ours (so that its death reads as end of file here)."""
        if self._child is not None:
            self._child.close()
            self._child = None

    def fileno(self) -> int:
        return self.sock.fileno()

    def send_config(self, config: Mapping[str, Any]) -> bool:
        try:
            self.sock.send(config_message(config), socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            return True
        except OSError as exc:
            log.warning("cannot send the configuration to a child: %s", exc.strerror)
            return False

    def receive(self) -> list[dict[str, Any]]:
        """Every report waiting (non-blocking); sets :attr:`closed` at end of file."""
        reports = []
        while not self.closed:
            try:
                data = self.sock.recv(MAX_MESSAGE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.closed = True
                break
            if not data:
                self.closed = True
                break
            report = parse_report(data)
            if report is not None:
                reports.append(report)
        return reports

    def close(self) -> None:
        self.spawned()
        self.sock.close()
        self.closed = True
