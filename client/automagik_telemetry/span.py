"""Spans: the small objects the application builds, and their OTLP/JSON line.

The hot path lives here: ``Span.__init__`` (ids, parent from a ``ContextVar``, start time),
``__enter__``/``__exit__`` (context set/reset) and ``end`` (end time, hand-off to the client's
queue). Nothing on it serializes or does I/O; ``Span.to_line`` runs later, in the sender thread.
No public method raises: a failure inside is reported to the span's ``SpanOwner`` as an internal
error.

A span knows its creator only through ``SpanOwner``, the three things it needs of it (where a
finished span goes, where an internal error is reported, how long a recorded stacktrace may be), so
this module depends on nothing of the client; ``AutomagikTelemetry`` is a ``SpanOwner``.
"""

from __future__ import annotations

import enum
import traceback
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from json.encoder import encode_basestring
from random import getrandbits
from time import time_ns
from types import TracebackType
from typing import Any, ClassVar, Literal, Protocol, TypeAlias

from .attributes import UNREPRESENTABLE, flat_values, key_values, safe_str
from .protocol import RecordKind


class StatusCode(enum.IntEnum):
    """OTLP status codes."""

    UNSET = 0
    OK = 1
    ERROR = 2


class SpanKind(enum.IntEnum):
    """OTLP span kinds."""

    INTERNAL = 1
    SERVER = 2
    CLIENT = 3
    PRODUCER = 4
    CONSUMER = 5


class SpanOwner(Protocol):
    """What a ``Span`` needs from the client that created it, and nothing more.

    The members are private to the package (an application never calls them) but read by the span;
    ``AutomagikTelemetry`` implements them.
    """

    @property
    def _enqueue(self) -> Callable[[Span], None]:
        """Takes a finished span (looked up at each ``end``: the client swaps it at shutdown)."""
        ...

    @property
    def _max_attribute_length(self) -> int:
        """Bound on the exception stacktrace a span records (the other values are cut later)."""
        ...

    def _internal_error(self) -> None:
        """Count a failure inside the library; never raises."""
        ...


#: An event of a span: (name, time in ns since the epoch, attributes).
_Event: TypeAlias = tuple[str, int, dict[str, object] | None]

#: The span new spans are children of (per thread / asyncio task, via contextvars).
_CURRENT: ContextVar[Span | None] = ContextVar("automagik_telemetry_current_span", default=None)

#: One span line; %-formatting is markedly faster than f-strings for the hex ids.
_LINE = (
    '{"traceId":"%032x","spanId":"%016x","parentSpanId":"%s","name":%s,"kind":%d,'
    '"startTimeUnixNano":%d,"endTimeUnixNano":%d,"attributes":%s,'
    '"status":{"code":%d,"message":%s},"events":%s}\n'
)
_EVENT = '{"name":%s,"timeUnixNano":%d,"attributes":%s}'
#: The compact span line (docs/protocol.md, "Compact span lines"): positional, flat attributes.
_COMPACT_LINE = '["%032x","%016x","%s",%s,%d,%d,%d,%s,%d,%s,%s]\n'
_COMPACT_EVENT = "[%s,%d,%s]"
_quote = encode_basestring  # a str as a JSON string literal, exactly as json.dumps(ensure_ascii=False)


def current_span() -> Span | None:
    """The span active in this context, if any."""
    return _CURRENT.get()


def exception_attributes(exc: BaseException, max_length: int) -> dict[str, str]:
    """``exception.type/message/stacktrace``; the stacktrace keeps its (most useful) tail."""
    exc_type = type(exc)
    module = getattr(exc_type, "__module__", None)
    qualname = getattr(exc_type, "__qualname__", exc_type.__name__)
    try:
        stacktrace = "".join(traceback.format_exception(exc))
    except Exception:
        stacktrace = UNREPRESENTABLE
    return {
        "exception.type": qualname if module in (None, "builtins") else f"{module}.{qualname}",
        "exception.message": safe_str(exc),
        "exception.stacktrace": stacktrace[-max_length:],
    }


class Span:
    """One timed operation. Use as a context manager (``with client.span(...)``) or call ``end()``."""

    __slots__ = (
        "_attributes",
        "_end",
        "_events",
        "_owner",
        "_parent_id",
        "_span_id",
        "_start",
        "_status",
        "_status_message",
        "_token",
        "_trace_id",
        "kind",
        "name",
    )

    _attributes: dict[str, object] | None
    _end: int
    _events: list[_Event] | None
    _owner: SpanOwner
    _parent_id: int
    _span_id: int
    _start: int
    _status: int
    _status_message: str
    _token: Token[Span | None] | None
    _trace_id: int
    kind: SpanKind | int
    name: str
    record_kind: ClassVar[RecordKind] = RecordKind.SPAN

    def __init__(
        self,
        client: SpanOwner,  # the parameter keeps its public name; any SpanOwner will do
        name: str,
        attributes: Mapping[str, object] | None = None,
        kind: SpanKind | int = SpanKind.INTERNAL,
    ) -> None:
        parent = _CURRENT.get()
        if parent is None:
            self._trace_id = getrandbits(128) or 1
            self._parent_id = 0
        else:
            self._trace_id = parent._trace_id
            self._parent_id = parent._span_id
        self._span_id = getrandbits(64) or 1
        self._owner = client
        self.name = name
        self.kind = kind
        self._attributes = dict(attributes) if attributes else None
        self._events = None
        self._status = 0
        self._status_message = ""
        self._token = None
        self._end = 0
        self._start = time_ns()

    # -- context manager ------------------------------------------------------------------------

    def __enter__(self) -> Span:
        try:
            self._token = _CURRENT.set(self)
        except Exception:
            self._owner._internal_error()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        token = self._token
        if token is not None:
            self._token = None
            try:
                _CURRENT.reset(token)
            except Exception:  # exited in another context than it was entered in
                self._owner._internal_error()
        if exc is not None:
            self.record_exception(exc)
            self.set_status(StatusCode.ERROR, safe_str(exc))
        if not self._end:  # end(), inlined: this is the hot path
            try:
                self._end = time_ns()
                self._owner._enqueue(self)
            except Exception:
                self._owner._internal_error()
        return False  # never swallow the application's exception

    # -- recording API --------------------------------------------------------------------------

    @property
    def trace_id(self) -> str:
        return f"{self._trace_id:032x}"

    @property
    def span_id(self) -> str:
        return f"{self._span_id:016x}"

    def is_recording(self) -> bool:
        return not self._end

    def set_attribute(self, key: str, value: object) -> None:
        if self._end:
            return
        try:
            if self._attributes is None:
                self._attributes = {}
            self._attributes[key] = value
        except Exception:  # an unhashable key
            self._owner._internal_error()

    def set_attributes(self, attributes: Mapping[str, object]) -> None:
        try:
            for key, value in attributes.items():
                self.set_attribute(key, value)
        except Exception:
            self._owner._internal_error()

    def set_status(self, code: StatusCode | int, description: str | None = None) -> None:
        if self._end:
            return
        try:
            self._status = int(code) if int(code) in (0, 1, 2) else 0
            self._status_message = "" if description is None else safe_str(description)
        except Exception:
            self._owner._internal_error()

    def add_event(
        self, name: str, attributes: Mapping[str, object] | None = None, timestamp_ns: int | None = None
    ) -> None:
        if self._end:
            return
        try:
            if self._events is None:
                self._events = []
            event_time = time_ns() if timestamp_ns is None else int(timestamp_ns)
            self._events.append((name, event_time, dict(attributes) if attributes else None))
        except Exception:
            self._owner._internal_error()

    def record_exception(self, exc: BaseException, attributes: Mapping[str, object] | None = None) -> None:
        """Add an OTLP ``exception`` event (type, message, stacktrace) for ``exc``."""
        if self._end:
            return
        try:
            event_attributes: dict[str, object] = dict(exception_attributes(exc, self._owner._max_attribute_length))
            if attributes:
                event_attributes.update(attributes)
            self.add_event("exception", event_attributes)
        except Exception:
            self._owner._internal_error()

    def end(self, end_time_ns: int | None = None) -> None:
        """Finish the span and hand it to the sender. Later calls do nothing."""
        if self._end:
            return
        try:
            self._end = time_ns() if end_time_ns is None else int(end_time_ns)
            self._owner._enqueue(self)
        except Exception:
            self._owner._internal_error()

    # -- serialization (sender thread only) -----------------------------------------------------

    def to_line(self, max_length: int) -> bytes:
        """The OTLP/JSON span as one newline-terminated compact line (never contains a raw newline).

        A template rather than ``json.dumps`` of a dict: this runs for every span in the sender
        thread and, holding the GIL, competes with the application. Strings still go through the
        stdlib JSON escaper.
        """
        return self._render(max_length, _LINE, _EVENT, "[]", key_values)

    def to_compact_line(self, max_length: int) -> bytes:
        """The span as one compact line (a positional JSON array; the agent stores the same row as from
        :meth:`to_line`). Only for an agent that announced ``compact-1`` (see the transport)."""
        return self._render(max_length, _COMPACT_LINE, _COMPACT_EVENT, "0", flat_values)

    def _render(
        self,
        max_length: int,
        line: str,
        event: str,
        no_events: str,
        attributes: Callable[[Mapping[Any, object] | None, int], str],
    ) -> bytes:
        """The span through ``line`` (the fields in protocol order), its events through ``event``."""
        kind = self.kind if isinstance(self.kind, int) and 1 <= self.kind <= 5 else 1
        name = self.name if isinstance(self.name, str) else safe_str(self.name)
        events = no_events
        if self._events:
            events = (
                "["
                + ",".join(
                    event
                    % (
                        _quote(event_name if isinstance(event_name, str) else safe_str(event_name)),
                        event_time,
                        attributes(event_attributes, max_length),
                    )
                    for event_name, event_time, event_attributes in self._events
                )
                + "]"
            )
        parent = "%016x" % self._parent_id if self._parent_id else ""  # noqa: UP031 (faster than format)
        text = line % (
            self._trace_id,
            self._span_id,
            parent,
            _quote(name[:max_length]),
            kind,
            self._start,
            self._end,
            attributes(self._attributes, max_length),
            self._status,
            _quote(self._status_message[:max_length]),
            events,
        )
        return text.encode("utf-8", "replace")

    def __repr__(self) -> str:
        return f"<Span {self.name!r} trace={self.trace_id} span={self.span_id}>"


class NoOpSpan:
    """The span returned when telemetry is disabled: every method does nothing."""

    __slots__ = ()

    trace_id = "0" * 32
    span_id = "0" * 16

    def __enter__(self) -> NoOpSpan:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        return False

    def is_recording(self) -> bool:
        return False

    def set_attribute(self, key: str, value: object) -> None:
        pass

    def set_attributes(self, attributes: Mapping[str, object]) -> None:
        pass

    def set_status(self, code: StatusCode | int, description: str | None = None) -> None:
        pass

    def add_event(
        self, name: str, attributes: Mapping[str, object] | None = None, timestamp_ns: int | None = None
    ) -> None:
        pass

    def record_exception(self, exc: BaseException, attributes: Mapping[str, object] | None = None) -> None:
        pass

    def end(self, end_time_ns: int | None = None) -> None:
        pass


NOOP_SPAN = NoOpSpan()
