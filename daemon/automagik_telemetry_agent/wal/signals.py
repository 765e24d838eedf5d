"""The signals the WAL carries: each one has its own consumer and its own durable cursor (docs/wal.md).

Every WAL record stores its protocol :class:`~automagik_telemetry.protocol.RecordKind`; a signal is the
consumer side of one kind. A :class:`~.reader.WalReader` reads one signal's records only and commits to
that signal's cursor file, so one signal's consumer stalling never stops another's. ``TRACES`` keeps
the cursor file every WAL had before there were signals (``cursor``), so an existing WAL, and the
tools that read its cursor, keep working.
"""

from __future__ import annotations

import enum

from automagik_telemetry.protocol import RecordKind

from .format import CURSOR_FILE


class Signal(enum.StrEnum):
    TRACES = "traces"
    LOGS = "logs"
    METRICS = "metrics"

    @property
    def kind(self) -> RecordKind:
        """The record kind this signal's consumer reads."""
        return _KINDS[self]

    @property
    def cursor_file(self) -> str:
        """The name of this signal's cursor file in the WAL directory."""
        return _CURSOR_FILES[self]

    @classmethod
    def of_kind(cls, kind: int) -> Signal | None:
        """The signal that consumes records of ``kind`` (None for a kind no signal reads)."""
        return _BY_KIND.get(kind)


_KINDS = {Signal.TRACES: RecordKind.SPAN, Signal.LOGS: RecordKind.LOG, Signal.METRICS: RecordKind.METRIC}
_CURSOR_FILES = {
    Signal.TRACES: CURSOR_FILE,  # the one cursor of WALs older than signals: unchanged
    Signal.LOGS: CURSOR_FILE + ".logs",
    Signal.METRICS: CURSOR_FILE + ".metrics",
}
_BY_KIND: dict[int, Signal] = {int(kind): signal for signal, kind in _KINDS.items()}
