"""``AutomagikTelemetry``: the application-facing API.

Recording calls (``span``, ``track_event``, ``track_error``, ``trace``) build a ``Span`` and hand it
to the ``Transport``'s queue; they never block and never raise. The client is its spans'
``SpanOwner`` (span.py): all a span asks of it is ``_enqueue``, ``_internal_error`` and
``_max_attribute_length``.

This module also owns the process lifecycle: one ``atexit`` hook flushes (bounded by
``exit_flush_timeout``) and shuts down every live client, and one ``os.register_at_fork`` hook gives
every client a fresh transport in a forked child. Both hooks hold clients through a ``WeakSet``, so
clients can be garbage collected.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import inspect
import os
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast, overload

from .attributes import safe_str
from .logs import LogRecord, LogSeverity, severity_of
from .metrics import (
    Counter,
    Gauge,
    Histogram,
    Instrument,
    MetricsRegistry,
    MetricType,
    UpDownCounter,
    metric_type_of,
    single_point,
)
from .resource import SDK_VERSION, build_resource_line
from .settings import ENV_ENABLED, TelemetryConfig, opt_out_file
from .span import NOOP_SPAN, NoOpSpan, Span, SpanKind, StatusCode, exception_attributes
from .transport import Record, Transport

F = TypeVar("F", bound=Callable[..., Any])
InstrumentT = TypeVar("InstrumentT", bound=Instrument)

#: Bound on joining the sender thread at shutdown (it never blocks longer than one short poll).
_JOIN_TIMEOUT = 0.5

_CLIENTS: weakref.WeakSet[AutomagikTelemetry] = weakref.WeakSet()

#: 0.1.4's truncation of ``error_message`` in ``track_error``.
_ERROR_MESSAGE_LENGTH = 500
#: The span ``track_error`` records, named as 0.1.4 named it.
ERROR_SPAN_NAME = "automagik.error"


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


class AutomagikTelemetry:
    """Records spans and ships them to the local agent from one background thread."""

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
        self._finalizer: weakref.finalize[..., AutomagikTelemetry] | None = None
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

    # -- recording ------------------------------------------------------------------------------

    def span(
        self, name: str, attributes: Mapping[str, object] | None = None, kind: SpanKind | int = SpanKind.INTERNAL
    ) -> Span | NoOpSpan:
        """A span, started now; use it as a context manager (it becomes the parent of nested spans)."""
        if not self._enabled:
            return NOOP_SPAN
        try:
            return Span(self, name, attributes, kind)
        except Exception:
            self._internal_error()
            return NOOP_SPAN

    def track_event(self, name: str, attributes: Mapping[str, object] | None = None) -> None:
        """Record a zero-duration span called ``name``."""
        if not self._enabled:
            return
        try:
            span = Span(self, name, attributes)
            span.end(span._start)
        except Exception:
            self._internal_error()

    def track_error(self, error: BaseException, context: Mapping[str, object] | None = None) -> None:
        """Record a zero-duration span called ``automagik.error`` (0.1.4's name, which queries and dashboards
        written for 0.1.4 select on) with status ERROR and an exception event.

        Its attributes are 0.1.4's ``error_type`` (the class name) and ``error_message`` (``str(error)``,
        first 500 characters), then ``context`` (which wins on a clash)."""
        if not self._enabled:
            return
        try:
            attributes: dict[str, object] = {
                "error_type": type(error).__name__,
                "error_message": safe_str(error)[:_ERROR_MESSAGE_LENGTH],
            }
            if context:
                attributes.update(context)
            span = Span(self, ERROR_SPAN_NAME, attributes)
            span.add_event(
                "exception", exception_attributes(error, self._max_attribute_length), timestamp_ns=span._start
            )
            span.set_status(StatusCode.ERROR, safe_str(error))
            span.end(span._start)
        except Exception:
            self._internal_error()

    def track_log(
        self,
        message: object,
        severity: LogSeverity | str = LogSeverity.INFO,
        attributes: Mapping[str, object] | None = None,
    ) -> None:
        """Record a log record (0.1.4's signature): ``severity`` a ``LogSeverity`` or its name; inside a span
        it carries that span's trace and span ids."""
        if not self._enabled:
            return
        try:
            level = severity_of(severity)
            self._record_log(message, level, level.name, dict(attributes) if attributes else None)
        except Exception:
            self._internal_error()

    def _record_log(
        self,
        body: object,
        severity: LogSeverity,
        severity_text: str,
        attributes: dict[str, object] | None,
        time_unix_ns: int | None = None,
    ) -> None:
        """Queue one log record (``track_log`` and ``LoggingHandler``); may raise, callers count it."""
        if self._enabled:
            self._enqueue(LogRecord(body, severity.value, severity_text, attributes, time_unix_ns))

    def track_metric(
        self,
        metric_name: str,
        value: float,
        metric_type: MetricType | str = MetricType.GAUGE,
        attributes: Mapping[str, object] | None = None,
    ) -> None:
        """Record one data point now (0.1.4's meaning): a gauge, a counter's increment as a monotonic
        sum, or a one-value histogram. For many measurements use the instruments (``counter`` ...)."""
        if not self._enabled:
            return
        try:
            point = single_point(str(metric_name), value, metric_type_of(metric_type), dict(attributes or {}))
            self._enqueue(point)
        except Exception:
            self._internal_error()

    def counter(self, name: str, unit: str = "", description: str = "") -> Counter:
        """A monotonic counter (``add(value, attributes)``), aggregated here, exported every metrics_interval."""
        return self._instrument(Counter, name, unit, description)

    def up_down_counter(self, name: str, unit: str = "", description: str = "") -> UpDownCounter:
        """A sum that may go down (``add(value, attributes)``)."""
        return self._instrument(UpDownCounter, name, unit, description)

    def gauge(self, name: str, unit: str = "", description: str = "") -> Gauge:
        """The last value per attribute set (``set(value, attributes)``)."""
        return self._instrument(Gauge, name, unit, description)

    def histogram(
        self, name: str, unit: str = "", boundaries: Sequence[float] | None = None, description: str = ""
    ) -> Histogram:
        """An explicit-bucket histogram (``record(value, attributes)``); ``boundaries`` default to OpenTelemetry's.

        Raises ValueError for boundaries that are not finite and strictly increasing (a programming error,
        found when the instrument is created).
        """
        return self._instrument(Histogram, name, unit, description, boundaries=boundaries)

    def _instrument(
        self, cls: type[InstrumentT], name: str, unit: str, description: str, **extra: object
    ) -> InstrumentT:
        found = self._metrics.get(cls, name, unit, description, **extra)
        assert isinstance(found, cls)
        return found

    @overload
    def trace(self, func: F, /) -> F: ...

    @overload
    def trace(
        self,
        func_or_name: str | None = None,
        /,
        *,
        name: str | None = None,
        attributes: Mapping[str, object] | None = None,
        kind: SpanKind | int = SpanKind.INTERNAL,
    ) -> Callable[[F], F]: ...

    def trace(
        self,
        func_or_name: F | str | None = None,
        /,
        *,
        name: str | None = None,
        attributes: Mapping[str, object] | None = None,
        kind: SpanKind | int = SpanKind.INTERNAL,
    ) -> F | Callable[[F], F]:
        """Decorator running each call in a span: ``@client.trace`` or ``@client.trace("name", ...)``.

        Works for plain and ``async def`` functions (the span covers the awaited call).
        """
        if callable(func_or_name):
            return self._decorate(func_or_name, name, attributes, kind)
        span_name = func_or_name if isinstance(func_or_name, str) else name

        def decorator(func: F) -> F:
            return self._decorate(func, span_name, attributes, kind)

        return decorator

    def _decorate(self, func: F, name: str | None, attributes: Mapping[str, object] | None, kind: SpanKind | int) -> F:
        if not self._enabled:
            return func
        span_name = name or getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or "call"
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with self.span(span_name, attributes, kind):
                    return await func(*args, **kwargs)

            return cast(F, async_wrapper)  # called like func, and wraps() copied its metadata

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self.span(span_name, attributes, kind):
                return func(*args, **kwargs)

        return cast(F, wrapper)

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

    def stats(self) -> dict[str, Any]:
        """Cumulative counters of this client (in this process), the queue depth and ``connected``.

        Values typed ``Any`` (as they always were) so that callers can use a counter as an ``int``.
        """
        try:
            metrics = {"metric_series_overflow": self._metrics.overflowed(), "metric_errors": self._metrics.errors()}
            return {**self._transport.snapshot(), **metrics, "enabled": self._enabled}  # disabled: all zero
        except Exception:
            self._internal_error()
            return {"enabled": self._enabled, "internal_errors": 1}

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

    def get_status(self) -> dict[str, Any]:
        """0.1.4's status keys (``endpoint`` & co. now name the agent's socket; ``queue_sizes`` counts
        all records under ``traces``, the queue being shared), plus this client's settings and ``stats``."""
        try:
            config = self.config
            stats = self.stats()
            agent = "unix://" + config.socket_path
            return {
                "enabled": self._enabled,
                "user_id": self.user_id,
                "session_id": self.session_id,
                "project_name": config.project_name,
                "project_version": config.version,
                "endpoint": agent,
                "metrics_endpoint": agent,
                "logs_endpoint": agent,
                "opt_out_file_exists": _exists(opt_out_file),
                "env_var": os.getenv(ENV_ENABLED),
                "verbose": os.getenv("AUTOMAGIK_TELEMETRY_VERBOSE", "false").lower() == "true",
                "batch_size": config.batch_size,
                "compression_enabled": config.compression_enabled,
                "queue_sizes": {"traces": len(self._transport.queue), "metrics": 0, "logs": 0},
                "service_name": config.service_name,
                "environment": config.environment,
                "socket_path": config.socket_path,
                "opt_in_required": config.opt_in_required,
                "privacy_enabled": config.privacy is not None,
                "sdk_version": SDK_VERSION,
                # why records are not delivered, if they are not (also logged once, at WARNING)
                "last_error": stats.get("last_connect_error") or stats.get("last_reject") or "",
                "stats": stats,
            }
        except Exception:
            self._internal_error()
            return {"enabled": self._enabled}

    # -- 0.1.4's async API (recording never blocks, so only flush needs a worker thread) ----------

    async def track_event_async(self, event_name: str, attributes: Mapping[str, object] | None = None) -> None:
        """``track_event`` from a coroutine (it never blocks, so it runs inline)."""
        self.track_event(event_name, attributes)

    async def track_error_async(self, error: BaseException, context: Mapping[str, object] | None = None) -> None:
        """``track_error`` from a coroutine (inline)."""
        self.track_error(error, context)

    async def track_metric_async(
        self,
        metric_name: str,
        value: float,
        metric_type: MetricType | str = MetricType.GAUGE,
        attributes: Mapping[str, object] | None = None,
    ) -> None:
        """``track_metric`` from a coroutine (inline)."""
        self.track_metric(metric_name, value, metric_type, attributes)

    async def track_log_async(
        self,
        message: object,
        severity: LogSeverity | str = LogSeverity.INFO,
        attributes: Mapping[str, object] | None = None,
    ) -> None:
        """``track_log`` from a coroutine (inline)."""
        self.track_log(message, severity, attributes)

    async def flush_async(self, timeout: float = 2.0) -> bool:
        """``flush`` in a worker thread (``asyncio.to_thread``): it may wait up to ``timeout``."""
        try:
            return await asyncio.to_thread(self.flush, timeout)
        except Exception:
            self._internal_error()
            return False

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

    def __repr__(self) -> str:
        return f"<AutomagikTelemetry {self.config.service_name!r} enabled={self._enabled}>"


def _discard(record: Record) -> None:
    pass


def _exists(path: Callable[[], Path]) -> bool:
    try:
        return path().exists()
    except Exception:
        return False


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
