"""Where everything of one agent lives on disk: the one place that knows the state-directory layout.

An agent's state is the WAL directory and its siblings (``wal.dir`` is ``/var/lib/automagik-telemetry/wal``
by default, so the siblings are in ``/var/lib/automagik-telemetry``)::

    <state>/wal/              the write-ahead log (docs/wal.md); LOCK is held by the one ingest writing it,
                              consumer.lock by the one shipper reading it
    <state>/shipper/          the shipper's own state: inflight.json (the batch being sent)
    <state>/dead-letter/      dead-letter.jsonl: rows that can never be shipped (shipper.dead_letter_dir)
    <socket dir>/control.sock the supervisor's control socket (socket.control_path), next to socket.path

Every module that needs one of these paths asks here; nothing else rebuilds them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

#: In the WAL directory: held (flock) by the one ingest process appending to the WAL.
WAL_LOCK_FILE = "LOCK"
#: In the WAL directory: held (flock) by the one shipper reading the WAL for spans (one cursor, one
#: reader); the log and metric consumers hold ``consumer.logs.lock`` and ``consumer.metrics.lock``.
CONSUMER_LOCK_FILE = "consumer.lock"
#: In the shipper's state directory: the batch of spans in flight (its WAL range and dedup token); the
#: other signals' are ``inflight.logs.json`` and ``inflight.metrics.json``.
INFLIGHT_FILE = "inflight.json"


def consumer_lock_file(signal: str) -> str:
    """The consumer lock of one signal (``traces``, ``logs``, ``metrics``): traces keep the old name."""
    return CONSUMER_LOCK_FILE if signal == "traces" else f"consumer.{signal}.lock"


def inflight_file(signal: str) -> str:
    """The in-flight record of one signal's shipper: traces keep the old name."""
    return INFLIGHT_FILE if signal == "traces" else f"inflight.{signal}.json"


#: In the dead-letter directory.
DEAD_LETTER_FILE = "dead-letter.jsonl"
CONTROL_SOCKET_NAME = "control.sock"


def state_root(wal_dir: str) -> str:
    """The directory holding the WAL directory and its siblings."""
    return os.path.dirname(os.path.abspath(wal_dir))


def shipper_state_dir(wal_dir: str) -> str:
    """``<state>/shipper``: the shipper's in-flight record."""
    return os.path.join(state_root(wal_dir), "shipper")


def default_dead_letter_dir(wal_dir: str) -> str:
    """``<state>/dead-letter``, used when ``shipper.dead_letter_dir`` is unset."""
    return os.path.join(state_root(wal_dir), "dead-letter")


def dead_letter_dir(config: Mapping[str, Any]) -> str:
    """``shipper.dead_letter_dir``, else ``<state>/dead-letter`` (where the shipper writes)."""
    return str(config.get("shipper.dead_letter_dir") or default_dead_letter_dir(config["wal.dir"]))


def control_socket_path(config: Mapping[str, Any]) -> str:
    """``socket.control_path``, or ``control.sock`` in the directory of ``socket.path`` when unset."""
    path = str(config.get("socket.control_path") or "")
    return path or os.path.join(os.path.dirname(os.path.abspath(config["socket.path"])), CONTROL_SOCKET_NAME)
