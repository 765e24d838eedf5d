"""``AutomagikTelemetry``: the application-facing API.

Recording calls (``span``, ``track_event``, ``track_error``, ``trace``) build a ``Span`` and hand it
to the ``Transport``'s queue; they never block and never raise. The client is its spans'
``SpanOwner`` (span.py): all a span asks of it is ``_enqueue``, ``_internal_error`` and
``_max_attribute_length``.

The client's state and its life (construction, ``flush``, ``shutdown``, 0.1.4's ``enable`` and
``disable``, the fork and exit hooks) are ``ClientLifecycle``'s (lifecycle.py), which this class extends.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast, overload

from .attributes import safe_str
from .lifecycle import ClientLifecycle
from .logs import LogRecord, LogSeverity, severity_of
from .metrics import (
    Counter,
    Gauge,
    Histogram,
    Instrument,
    MetricType,
    UpDownCounter,
    metric_type_of,
    single_point,
)
from .resource import SDK_VERSION
from .settings import ENV_ENABLED, opt_out_file
from .settings import TelemetryConfig as TelemetryConfig  # also automagik_telemetry.client.TelemetryConfig (0.1.4)
from .span import NOOP_SPAN, NoOpSpan, Span, SpanKind, StatusCode, exception_attributes

F = TypeVar("F", bound=Callable[..., Any])
InstrumentT = TypeVar("InstrumentT", bound=Instrument)

#: 0.1.4's truncation of ``error_message`` in ``track_error``.
_ERROR_MESSAGE_LENGTH = 500
#: The span ``track_error`` records, named as 0.1.4 named it.
ERROR_SPAN_NAME = "automagik.error"


class AutomagikTelemetry(ClientLifecycle):
    """Records spans and ships them to the local agent from one background thread."""

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

    # -- observing ------------------------------------------------------------------------------

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

    def __repr__(self) -> str:
        return f"<AutomagikTelemetry {self.config.service_name!r} enabled={self._enabled}>"


def _exists(path: Callable[[], Path]) -> bool:
    try:
        return path().exists()
    except Exception:
        return False
