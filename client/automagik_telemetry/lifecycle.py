"""``ClientLifecycle``: a client's state and its life, the part of ``AutomagikTelemetry`` under the API.

A client is made (settings, 0.1.4's ids, its metrics registry and ``Transport``), records through
``_enqueue`` (the hot path's one hand-off, swapped as the client changes state), is flushed, shut
down, disabled and enabled again (0.1.4's control API), reset in a forked child, and collected.

This module also owns the process lifecycle: one ``atexit`` hook flushes (bounded by
``exit_flush_timeout``) and shuts down every live client, and one ``os.register_at_fork`` hook gives
every client a fresh transport in a forked child. Both hooks hold clients through a ``WeakSet``, so
clients can be garbage collected.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import time
import uuid
import weakref
from collections.abc import Callable
from pathlib import Path

from .metrics import MetricsRegistry
from .resource import SDK_VERSION, build_resource_line
from .settings import TelemetryConfig, opt_out_file
from .transport import Record, Transport

#: Bound on joining the sender thread at shutdown (it never blocks longer than one short poll).
_JOIN_TIMEOUT = 0.5

_CLIENTS: weakref.WeakSet[ClientLifecycle] = weakref.WeakSet()


def _user_id_file() -> Path:
    """Where 0.1.4 kept the anonymous user id: ``~/.automagik/user_id``."""
    return Path.home() / ".automagik" / "user_id"


def _get_or_create_user_id() -> str:
    """0.1.4's anonymous user id: read from ``~/.automagik/user_id``, else a new UUID4 stored there
    (kept in memory only if the file cannot be written)."""
    try:
        stored = _user_id_file().read_text().strip()
        if stored:
            return stored
    except Exception:
        pass
    user_id = str(uuid.uuid4())
    with contextlib.suppress(Exception):
        path = _user_id_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(user_id)
    return user_id


class ClientLifecycle:
    """The state a client records into and every change of it; ``AutomagikTelemetry`` adds the API."""

    def __init__(
        self,
        project_name: str | TelemetryConfig | None = None,
        version: str | None = None,
        *,
        config: TelemetryConfig | None = None,
    ) -> None:
        """``AutomagikTelemetry(config)`` (0.1.4's form, positional or ``config=``), or
        ``AutomagikTelemetry(project_name, version)`` for the defaults."""
        if isinstance(project_name, TelemetryConfig):
            if config is not None or version is not None:
                raise ValueError("AutomagikTelemetry takes one config, positional or config=, not both")
            config, project_name = project_name, None
        if config is None:
            if project_name is None or version is None:
                raise ValueError("AutomagikTelemetry needs config=TelemetryConfig(...), or project_name and version")
            config = TelemetryConfig(project_name=project_name, version=version)
        elif not isinstance(config, TelemetryConfig):
            raise ValueError(f"config must be a TelemetryConfig, got {type(config).__name__}")
        self.config = config
        self._enabled = bool(config.enabled)
        self._max_attribute_length = config.max_attribute_length
        self._shut_down = False
        #: 0.1.4's ids: a session per client; the persisted anonymous user id only with opt_in_required.
        self.session_id = str(uuid.uuid4())
        self.user_id: str | None = _get_or_create_user_id() if config.opt_in_required else None
        self._resource_extra: dict[str, object] = {}
        if config.opt_in_required:
            self._resource_extra = {
                "service.version": config.version,
                "service.organization": config.organization,
                "user.id": self.user_id,
                "session.id": self.session_id,
            }
        self._metrics = MetricsRegistry(config.max_metric_series)
        self._transport = self._new_transport()
        self._holder: list[Transport[Record]] = [self._transport]
        self._finalizer: weakref.finalize[..., ClientLifecycle] | None = None
        #: The hot path's hand-off (spans, log records, data points); swapped for a counting no-op at shutdown.
        self._enqueue: Callable[[Record], None] = self._transport.queue.put if self._enabled else _discard
        if self._enabled:
            self._register()

    def _register(self) -> None:
        """Join the exit and fork hooks; on garbage collection stop the sender thread (which holds
        only the transport)."""
        _CLIENTS.add(self)
        if self._finalizer is None:
            self._finalizer = weakref.finalize(self, _stop_transport, self._holder)
            self._finalizer.atexit = False  # exit is handled by the flushing atexit hook below

    @property
    def enabled(self) -> bool:
        return self._enabled

    # -- delivery -------------------------------------------------------------------------------

    def flush(self, timeout: float = 2.0) -> bool:
        """True iff every span finished before this call is durably stored by the agent (ACKed).

        "Every span" means those not yet settled when the call is made: spans whose fate was already
        decided earlier (e.g. a rejected message acknowledged-as-failed before) do not fail later
        flushes; spans dropped because the queue was full were never enqueued. Returns False when
        ``timeout`` seconds pass first (e.g. the agent is down), or as soon as one of those spans is
        dropped, rejected or left unconfirmed. Never waits longer than ``timeout``.
        """
        if not self._enabled:
            return True
        try:
            self._export_metrics()
            return self._transport.flush(float(timeout))
        except Exception:
            self._internal_error()
            return False

    def shutdown(self, timeout: float | None = None) -> None:
        """Flush (at most ``timeout``, default ``exit_flush_timeout`` seconds), stop the sender, close."""
        if self._shut_down or not self._enabled:
            return
        self._shut_down = True
        try:
            transport = self._transport
            self._export_metrics()
            transport.flush(self.config.exit_flush_timeout if timeout is None else float(timeout))
            self._enqueue = transport.queue.drop_after_shutdown
            transport.stop(_JOIN_TIMEOUT)
            _CLIENTS.discard(self)
        except Exception:
            self._internal_error()

    # -- 0.1.4's control API ---------------------------------------------------------------------

    def enable(self) -> None:
        """Start recording (0.1.4): also removes ``~/.automagik-no-telemetry`` if it exists."""
        with contextlib.suppress(Exception):
            opt_out_file().unlink(missing_ok=True)
        if self._enabled:
            return
        try:
            if self._shut_down:  # the old sender is stopped: start afresh
                self._transport = self._new_transport()
                self._holder[0] = self._transport
                self._shut_down = False
            self._enqueue = self._transport.queue.put
            self._enabled = True
            self._register()
        except Exception:
            self._internal_error()

    async def disable(self) -> None:
        """Flush what was recorded (bounded by ``exit_flush_timeout``), then stop recording and create
        ``~/.automagik-no-telemetry`` (0.1.4), so later clients of every Automagik tool stay disabled.

        The flush and the sender's stop run in a worker thread (``asyncio.to_thread``)."""
        try:
            await asyncio.to_thread(self._flush_then_disable)
        except Exception:
            self._internal_error()
        with contextlib.suppress(Exception):
            opt_out_file().touch()

    def _flush_then_disable(self) -> None:
        if self._enabled:
            self.shutdown()  # flush first, then stop the sender
        self._enabled = False
        self._enqueue = _discard

    def is_enabled(self) -> bool:
        """Whether this client records (0.1.4)."""
        return self._enabled

    # -- internals ------------------------------------------------------------------------------

    def _new_transport(self) -> Transport[Record]:
        config, extra = self.config, self._resource_extra
        return Transport(
            config,
            lambda: build_resource_line(config, SDK_VERSION, extra),
            self._on_fork_detected,
            self._metrics.collect,
        )

    def _export_metrics(self) -> None:
        """Queue one data point per series of every instrument (before a flush, and at exit)."""
        for point in self._metrics.collect():
            self._enqueue(point)

    def _internal_error(self) -> None:
        with contextlib.suppress(Exception):
            self._transport.count_internal_error()

    def _on_fork_detected(self, record: Record) -> None:
        """Backstop for a fork the at-fork hook did not see: reset, then queue ``record`` anew."""
        self._reset_after_fork()
        self._enqueue(record)

    def _reset_after_fork(self) -> None:
        """In a forked child: a fresh transport (queue, locks, counters, resource line, no thread).

        The parent's queued spans are not inherited (the parent sends them) and the parent's
        connection is left alone: only this process's copy of the socket fd is closed.
        """
        old = self._transport
        old.abandon_in_child()
        self._metrics.reset_after_fork()
        self._transport = self._new_transport()
        self._holder[0] = self._transport
        if not self._enabled:
            self._enqueue = _discard
        elif not self._shut_down:
            self._enqueue = self._transport.queue.put
        else:
            self._enqueue = self._transport.queue.drop_after_shutdown


def _discard(record: Record) -> None:
    pass


def _stop_transport(holder: list[Transport[Record]]) -> None:
    holder[0].stop(0.0)


def _after_fork_in_child() -> None:
    for client in list(_CLIENTS):
        with contextlib.suppress(Exception):
            client._reset_after_fork()


def _shutdown_all_at_exit() -> None:
    """Flush and close every live client, all within the largest ``exit_flush_timeout``."""
    clients = [client for client in list(_CLIENTS) if not client._shut_down]
    if not clients:
        return
    deadline = time.monotonic() + max(client.config.exit_flush_timeout for client in clients)
    for client in clients:
        remaining = max(0.0, deadline - time.monotonic())
        client.shutdown(min(client.config.exit_flush_timeout, remaining))


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_shutdown_all_at_exit)
