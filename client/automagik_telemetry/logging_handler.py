"""``LoggingHandler``: the standard ``logging`` module as a source of log records.

``logging.getLogger(...).addHandler(LoggingHandler(client))`` turns every record into a log record
of ``client``: the level becomes the OTLP severity, the message (formatted once, here) the body; the
logger name, the source location, the thread, an exception (``exc_info``: type, message, stack trace)
and the ``extra=`` fields become attributes; the span active where it was logged gives the trace and
span ids. ``emit`` never blocks, never raises (a failure is counted as an internal error of the
client), and never loops: records of this library's own loggers, and records logged while it is
already handling one in this thread, are not captured.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from .attributes import key_values
from .logs import LogRecord, LogSeverity
from .span import current_span, exception_attributes

if TYPE_CHECKING:
    from .client import AutomagikTelemetry

#: Attributes every ``logging.LogRecord`` has: anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_OWN_LOGGERS = ("automagik_telemetry",)  # and automagik_telemetry_agent: same prefix


def severity_of_level(levelno: int) -> LogSeverity:
    """``logging`` level -> OTLP severity: DEBUG, INFO, WARNING -> WARN, ERROR, CRITICAL -> FATAL; below
    DEBUG is TRACE, and a custom level takes the range it falls in."""
    if levelno >= logging.CRITICAL:
        return LogSeverity.FATAL
    if levelno >= logging.ERROR:
        return LogSeverity.ERROR
    if levelno >= logging.WARNING:
        return LogSeverity.WARN
    if levelno >= logging.INFO:
        return LogSeverity.INFO
    if levelno >= logging.DEBUG:
        return LogSeverity.DEBUG
    return LogSeverity.TRACE


_SEVERITY_BY_LEVEL: dict[int, LogSeverity] = {}


class _HandledRecord(LogRecord):
    """A log record from ``logging``: the message and the span are taken at once (in the app's thread), the
    attributes (source, ``extra=``, the exception's text) only when the sender thread writes the line."""

    __slots__ = ("rendered", "source")

    def __init__(self, source: logging.LogRecord, message: str, severity: LogSeverity) -> None:
        # LogRecord's fields set here, cheaply: the times come from the logging record (its creation is
        # when it was observed too), the rest is read from it in the sender thread (to_line).
        self.source: logging.LogRecord | None = source
        self.rendered: str | None = None  # the attributes as KeyValue JSON text, once written
        self.body = message
        self.severity_number = severity.value
        span = current_span()
        if span is not None:
            self.trace_id, self.span_id = span._trace_id, span._span_id
        else:
            self.trace_id = self.span_id = 0

    def to_line(self, max_length: int) -> bytes:
        source = self.source
        if source is not None:
            self.time_ns = self.observed_ns = int(source.created * 1_000_000_000)
            self.severity_text = source.levelname
            if _only_its_site(source):
                # The usual record: just the call site's attributes, rendered once per site and thread.
                self.rendered = "[" + _site_attributes(source, max_length) + "]"
            else:
                self.attributes = _attributes(source, max_length)
            self.source = None  # let the logging record (and its traceback) go
        if self.rendered is not None:
            return self.line_with(self.rendered, max_length)
        return super().to_line(max_length)


class LoggingHandler(logging.Handler):
    """Sends ``logging`` records to an ``AutomagikTelemetry`` client as log records."""

    def __init__(self, client: AutomagikTelemetry, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.client = client
        self._busy = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        busy = self._busy
        if record.name.startswith(_OWN_LOGGERS) or getattr(busy, "active", False):
            return
        busy.active = True
        try:
            client = self.client
            if client._enabled:
                severity = _SEVERITY_BY_LEVEL.get(record.levelno)
                if severity is None:
                    severity = _SEVERITY_BY_LEVEL[record.levelno] = severity_of_level(record.levelno)
                client._enqueue(_HandledRecord(record, _message(record), severity))
        except Exception:
            self.client._internal_error()
        finally:
            busy.active = False

    def handleError(self, record: logging.LogRecord) -> None:  # never print tracebacks to stderr
        self.client._internal_error()


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # bad %-args: keep what the app wrote
        return str(record.msg)


#: Rendered call-site attributes by (logger, file, line, function, thread, max_length); cleared when full.
_SITES: dict[tuple[str, str, int, str, str | None, int], str] = {}
_MAX_SITES = 4096


def _site_attributes(record: logging.LogRecord, max_length: int) -> str:
    """The call site's attributes (logger, source location, thread) as ``KeyValue`` JSON text without the
    brackets: the same text :func:`key_values` writes for them, cached, since a site logs many records."""
    site = (record.name, record.pathname, record.lineno, record.funcName, record.threadName, max_length)
    text = _SITES.get(site)
    if text is None:
        if len(_SITES) >= _MAX_SITES:
            _SITES.clear()
        text = _SITES[site] = key_values(_site(record), max_length)[1:-1]
    return text


def _only_its_site(record: logging.LogRecord) -> bool:
    """True when the record has nothing but its call site to add: no ``extra=`` field, no exception."""
    if (record.exc_info and record.exc_info[1] is not None) or record.exc_text:
        return False
    return not (record.__dict__.keys() - _STANDARD)


def _site(record: logging.LogRecord) -> dict[str, object]:
    return {
        "logger.name": record.name,
        "code.filepath": record.pathname,
        "code.lineno": record.lineno,
        "code.function": record.funcName,
        "thread.name": record.threadName,
    }


def _attributes(record: logging.LogRecord, max_length: int) -> dict[str, object]:
    attributes = _site(record)
    for key, value in record.__dict__.items():
        if key not in _STANDARD and not key.startswith("_"):
            attributes[key] = value
    if record.exc_info and record.exc_info[1] is not None:
        attributes.update(exception_attributes(record.exc_info[1], max_length))  # as a span's exception event
    elif record.exc_text:
        attributes["exception.stacktrace"] = record.exc_text[-max_length:]
    return attributes
