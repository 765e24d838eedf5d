"""Client configuration: one validated, immutable-by-convention ``TelemetryConfig``.

Every setting is resolved once, at construction, with the precedence *explicit argument, then
environment variable, then default*. Construction is the only place this library raises: an invalid
value of a client setting raises ``ValueError`` with a message naming the setting, so a
misconfiguration is found at start-up instead of silently losing telemetry later.

This is 0.1.4's client ``TelemetryConfig`` (``automagik_telemetry.TelemetryConfig``) grown: it accepts
all 21 fields of 0.1.4, by keyword and in 0.1.4's positional order, then this client's own settings,
keyword-only. Destination settings (``backend``, ``endpoint``, ``clickhouse_*`` ...) belong to the agent
now: they are accepted, checked, and reported once at INFO on the ``automagik_telemetry`` logger with
where that setting lives now; they never raise. (``automagik_telemetry.config`` is 0.1.4's config
module, see legacy_config.py.)
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .opt_in import legacy_telemetry_enabled
from .privacy import PrivacyConfig
from .protocol import DEFAULT_SOCKET_PATH

ENV_ENVIRONMENT = "AUTOMAGIK_TELEMETRY_ENVIRONMENT"
ENV_SOCKET = "AUTOMAGIK_TELEMETRY_SOCKET"
ENV_ENABLED = "AUTOMAGIK_TELEMETRY_ENABLED"
ENV_METRICS_INTERVAL = "AUTOMAGIK_TELEMETRY_METRICS_INTERVAL"
ENV_OPT_IN_REQUIRED = "AUTOMAGIK_TELEMETRY_OPT_IN_REQUIRED"
ENV_PRIVACY = "AUTOMAGIK_TELEMETRY_PRIVACY"
ENV_DO_NOT_TRACK = "DO_NOT_TRACK"
#: The opt-out marker shared by every Automagik tool (0.1.4's), in the user's home directory.
OPT_OUT_FILE_NAME = ".automagik-no-telemetry"
#: ``max_queue_size`` by default (see the field).
DEFAULT_MAX_QUEUE_SIZE = 32_768

logger = logging.getLogger("automagik_telemetry")

#: The default of ``resource_attributes``, recognized by identity and replaced by a fresh dict (so an
#: explicit ``None`` is still rejected, as it always was). Never mutated.
_NO_RESOURCE_ATTRIBUTES: dict[str, Any] = {}

_FALSE_WORDS = frozenset({"false", "0", "no", "off"})
_TRUE_WORDS = frozenset({"true", "1", "yes", "on", ""})

_AGENT_TOML = "/etc/automagik-telemetry/agent.toml"
#: 0.1.4's destination settings: (field, 0.1.4 default, where the setting lives now).
_DESTINATION_FIELDS: tuple[tuple[str, object, str], ...] = (
    ("backend", "otlp", "the agent always writes to ClickHouse (or its embedded engine)"),
    ("endpoint", None, f"clickhouse.endpoint in {_AGENT_TOML}; this client sends to socket_path"),
    ("timeout", 5, f"clickhouse.connect_timeout / clickhouse.read_timeout in {_AGENT_TOML}"),
    ("compression_enabled", True, f"clickhouse.compression in {_AGENT_TOML}"),
    ("compression_threshold", 1024, f"clickhouse.compression in {_AGENT_TOML}"),
    ("max_retries", 3, f"shipper.retry_base / shipper.retry_max in {_AGENT_TOML} (the agent retries forever)"),
    ("retry_backoff_base", 1.0, f"shipper.retry_base in {_AGENT_TOML}"),
    ("metrics_endpoint", None, f"clickhouse.endpoint and clickhouse.metrics_table in {_AGENT_TOML}"),
    ("logs_endpoint", None, f"clickhouse.endpoint and clickhouse.logs_table in {_AGENT_TOML}"),
    ("clickhouse_endpoint", "http://localhost:8123", f"clickhouse.endpoint in {_AGENT_TOML}"),
    ("clickhouse_database", "telemetry", f"clickhouse.database in {_AGENT_TOML}"),
    ("clickhouse_table", "traces", f"clickhouse.table in {_AGENT_TOML}"),
    ("clickhouse_metrics_table", "metrics", f"clickhouse.metrics_table in {_AGENT_TOML}"),
    ("clickhouse_logs_table", "logs", f"clickhouse.logs_table in {_AGENT_TOML}"),
    ("clickhouse_username", "default", f"clickhouse.username in {_AGENT_TOML}"),
    ("clickhouse_password", "", f"clickhouse.password / clickhouse.password_file in {_AGENT_TOML}"),
)
_URL_FIELDS = frozenset({"endpoint", "metrics_endpoint", "logs_endpoint", "clickhouse_endpoint"})
#: Destination fields already reported in this process (each is logged once).
_REPORTED: set[str] = set()


def _parse_enabled(raw: str, name: str = ENV_ENABLED) -> bool:
    word = raw.strip().lower()
    if word in _FALSE_WORDS:
        return False
    if word in _TRUE_WORDS:
        return True
    raise ValueError(f"{name}={raw!r}: expected one of true/false/1/0/yes/no/on/off")


def opt_out_file() -> Path:
    """``~/.automagik-no-telemetry`` (the home directory resolved now, never cached)."""
    return Path.home() / OPT_OUT_FILE_NAME


def _opt_out_file_exists() -> bool:
    try:
        return opt_out_file().exists()
    except Exception:  # no resolvable home directory
        return False


def _do_not_track() -> bool:
    """``DO_NOT_TRACK`` (consoledonottrack.com): set to anything but empty, ``0`` or ``false``."""
    raw = os.environ.get(ENV_DO_NOT_TRACK)
    return raw is not None and raw.strip().lower() not in ("", "0", "false", "no", "off")


def default_enabled() -> bool:
    """Enabled unless ``AUTOMAGIK_TELEMETRY_ENABLED`` is false, ``~/.automagik-no-telemetry`` exists or
    ``DO_NOT_TRACK`` is set: any one of them disables. Raises ValueError for a malformed variable."""
    raw = os.environ.get(ENV_ENABLED)
    if raw is not None and not _parse_enabled(raw):
        return False
    return not (_opt_out_file_exists() or _do_not_track())


def _report_destination(name: str, value: object, default: object, where: str) -> None:
    """Check one destination setting (never raising) and report it once per process if it was given."""
    if value == default and type(value) is type(default):
        return
    problem = None
    if name in _URL_FIELDS:
        if value is not None:
            try:
                parts = urlparse(value) if isinstance(value, str) else None
            except ValueError:
                parts = None
            if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
                problem = "is not an http(s) URL"
    elif name == "backend":
        if not isinstance(value, str) or value.lower() not in ("otlp", "clickhouse"):
            problem = "is neither 'otlp' nor 'clickhouse'"
    elif name in ("timeout", "compression_threshold", "max_retries"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            problem = "is not a non-negative integer"
    elif name == "retry_backoff_base":
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            problem = "is not a non-negative number"
    elif name == "compression_enabled":
        if not isinstance(value, bool):
            problem = "is not a bool"
    elif not isinstance(value, str):
        problem = "is not a string"
    if name in _REPORTED:
        return
    _REPORTED.add(name)
    shown = "<redacted>" if name == "clickhouse_password" else repr(value)
    if problem is not None:
        logger.warning("TelemetryConfig.%s=%s %s; it is ignored (%s)", name, shown, problem, where)
    else:
        logger.info("TelemetryConfig.%s is the agent's setting now: %s (ignored here)", name, where)


@dataclass(init=False)
class TelemetryConfig:
    """Settings of one ``AutomagikTelemetry`` client.

    Positional parameters are 0.1.4's, in 0.1.4's order: ``project_name, version, backend, endpoint,
    organization, timeout, batch_size, flush_interval, compression_enabled, compression_threshold,
    max_retries, retry_backoff_base, metrics_endpoint, logs_endpoint, clickhouse_endpoint,
    clickhouse_database, clickhouse_table, clickhouse_metrics_table, clickhouse_logs_table,
    clickhouse_username, clickhouse_password``. Everything after them is keyword-only.

    ``None`` for ``environment``, ``service_name``, ``socket_path``, ``enabled``, ``metrics_interval``,
    ``opt_in_required`` and ``privacy`` means "not given": the constructor replaces it by the
    environment variable or the default, so after construction every attribute holds its resolved value.

    The constructor is written out (``init=False``) so that the attributes can be typed as the resolved
    values while the parameters still accept ``None``.
    """

    project_name: str
    version: str
    # -- 0.1.4's destination settings: the agent's business now (accepted, reported, ignored) ---------
    backend: str = "otlp"
    endpoint: str | None = None
    #: Sent as the ``service.organization`` resource attribute when ``opt_in_required`` (as 0.1.4 did).
    organization: str = "namastex"
    timeout: int = 5
    #: The sender wakes up as soon as this many records are queued (0.1.4: events per batch).
    batch_size: int = 100
    #: Longest time, in seconds, a record waits in the client before the sender sends it (0.1.4: seconds
    #: between automatic flushes). Default 0.2, not 0.1.4's 5.0.
    flush_interval: float = 0.2
    compression_enabled: bool = True
    compression_threshold: int = 1024
    max_retries: int = 3
    retry_backoff_base: float = 1.0
    metrics_endpoint: str | None = None
    logs_endpoint: str | None = None
    clickhouse_endpoint: str = "http://localhost:8123"
    clickhouse_database: str = "telemetry"
    clickhouse_table: str = "traces"
    clickhouse_metrics_table: str = "metrics"
    clickhouse_logs_table: str = "logs"
    clickhouse_username: str = "default"
    clickhouse_password: str = field(default="", repr=False)
    # -- this client's settings (keyword-only) --------------------------------------------------------
    environment: str = "development"
    service_name: str = ""
    socket_path: str = DEFAULT_SOCKET_PATH
    enabled: bool = True
    #: Spans buffered in memory while the sender is behind or the agent is away; newer spans are
    #: dropped (and counted) beyond this. About 470 bytes per queued span (bench_client), so the default
    #: bounds the queue near 15 MiB and holds a burst of 25 000 spans recorded faster than any sender.
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE
    #: Upper bound, in seconds, of the flush performed when the interpreter exits.
    exit_flush_timeout: float = 1.0
    #: Longer string attribute values are truncated to this many characters.
    max_attribute_length: int = 4096
    resource_attributes: dict[str, Any] = field(default_factory=dict)
    #: Seconds between exports of the metric instruments' series (and at flush and exit).
    metrics_interval: float = 10.0
    #: Attribute sets an instrument keeps; more go to one overflow series (counted).
    max_metric_series: int = 2000
    #: 0.1.4's consent rules: disabled unless ``AUTOMAGIK_TELEMETRY_ENABLED`` says yes; adds the
    #: anonymous ``user.id`` (``~/.automagik/user_id``) and a per-client ``session.id`` to the resource.
    opt_in_required: bool = False
    #: When set, span and log attributes and log bodies are sanitized (privacy.py) in the sender thread.
    privacy: PrivacyConfig | None = None

    def __init__(
        self,
        project_name: str,
        version: str,
        backend: str = "otlp",
        endpoint: str | None = None,
        organization: str = "namastex",
        timeout: int = 5,
        batch_size: int = 100,
        flush_interval: float = 0.2,
        compression_enabled: bool = True,
        compression_threshold: int = 1024,
        max_retries: int = 3,
        retry_backoff_base: float = 1.0,
        metrics_endpoint: str | None = None,
        logs_endpoint: str | None = None,
        clickhouse_endpoint: str = "http://localhost:8123",
        clickhouse_database: str = "telemetry",
        clickhouse_table: str = "traces",
        clickhouse_metrics_table: str = "metrics",
        clickhouse_logs_table: str = "logs",
        clickhouse_username: str = "default",
        clickhouse_password: str = "",
        *,
        environment: str | None = None,
        service_name: str | None = None,
        socket_path: str | None = None,
        enabled: bool | None = None,
        max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
        exit_flush_timeout: float = 1.0,
        max_attribute_length: int = 4096,
        resource_attributes: dict[str, Any] = _NO_RESOURCE_ATTRIBUTES,
        metrics_interval: float | None = None,
        max_metric_series: int = 2000,
        opt_in_required: bool | None = None,
        privacy: PrivacyConfig | None = None,
    ) -> None:
        self.project_name = project_name
        self.version = version
        for name in ("project_name", "version"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"TelemetryConfig.{name} must be a non-empty string, got {value!r}")
        self.backend = backend
        self.endpoint = endpoint
        self.organization = organization
        self.timeout = timeout
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.compression_enabled = compression_enabled
        self.compression_threshold = compression_threshold
        self.max_retries = max_retries
        self.retry_backoff_base = retry_backoff_base
        self.metrics_endpoint = metrics_endpoint
        self.logs_endpoint = logs_endpoint
        self.clickhouse_endpoint = clickhouse_endpoint
        self.clickhouse_database = clickhouse_database
        self.clickhouse_table = clickhouse_table
        self.clickhouse_metrics_table = clickhouse_metrics_table
        self.clickhouse_logs_table = clickhouse_logs_table
        self.clickhouse_username = clickhouse_username
        self.clickhouse_password = clickhouse_password
        if environment is None:
            environment = os.environ.get(ENV_ENVIRONMENT) or "development"
        self.environment = environment
        self.service_name = project_name if service_name is None else service_name
        if socket_path is None:
            socket_path = os.environ.get(ENV_SOCKET) or DEFAULT_SOCKET_PATH
        self.socket_path = socket_path
        if opt_in_required is None:
            raw_opt_in = os.environ.get(ENV_OPT_IN_REQUIRED)
            opt_in_required = False if raw_opt_in is None else _parse_enabled(raw_opt_in, ENV_OPT_IN_REQUIRED)
        self.opt_in_required = opt_in_required
        if enabled is None:  # opt_in_required: 0.1.4's rules, exactly
            enabled = legacy_telemetry_enabled() if opt_in_required is True else default_enabled()
        self.enabled = enabled
        self.max_queue_size = max_queue_size
        self.exit_flush_timeout = exit_flush_timeout
        self.max_attribute_length = max_attribute_length
        if resource_attributes is _NO_RESOURCE_ATTRIBUTES:
            resource_attributes = {}
        self.resource_attributes = resource_attributes
        if metrics_interval is None:
            raw_interval = os.environ.get(ENV_METRICS_INTERVAL)
            try:
                metrics_interval = 10.0 if raw_interval is None else float(raw_interval)
            except ValueError:
                raise ValueError(f"{ENV_METRICS_INTERVAL}={raw_interval!r}: expected a number of seconds") from None
        self.metrics_interval = metrics_interval
        self.max_metric_series = max_metric_series
        if privacy is None:
            raw_privacy = os.environ.get(ENV_PRIVACY)
            if raw_privacy is not None and raw_privacy.strip() and _parse_enabled(raw_privacy, ENV_PRIVACY):
                privacy = PrivacyConfig()
        self.privacy = privacy
        self._validate()
        for name, default, where in _DESTINATION_FIELDS:
            with contextlib.suppress(Exception):  # reporting must never break construction
                _report_destination(name, getattr(self, name), default, where)

    def _validate(self) -> None:
        for name in ("environment", "service_name", "socket_path"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"TelemetryConfig.{name} must be a non-empty string, got {value!r}")
        if len(self.socket_path.encode()) >= 108:
            raise ValueError(f"TelemetryConfig.socket_path is too long for a Unix socket: {self.socket_path!r}")
        if not isinstance(self.enabled, bool):
            raise ValueError(f"TelemetryConfig.enabled must be a bool, got {self.enabled!r}")
        if not isinstance(self.opt_in_required, bool):
            raise ValueError(f"TelemetryConfig.opt_in_required must be a bool, got {self.opt_in_required!r}")
        if self.privacy is not None and not isinstance(self.privacy, PrivacyConfig):
            raise ValueError(f"TelemetryConfig.privacy must be a PrivacyConfig or None, got {self.privacy!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int):
            raise ValueError(f"TelemetryConfig.batch_size must be an integer, got {self.batch_size!r}")
        if not isinstance(self.organization, str):
            raise ValueError(f"TelemetryConfig.organization must be a string, got {self.organization!r}")
        for name in ("max_queue_size", "max_attribute_length", "max_metric_series"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TelemetryConfig.{name} must be a positive integer, got {value!r}")
        for name in ("flush_interval", "exit_flush_timeout", "metrics_interval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"TelemetryConfig.{name} must be a finite number of seconds, got {value!r}")
        if self.flush_interval <= 0:
            raise ValueError(f"TelemetryConfig.flush_interval must be > 0 seconds, got {self.flush_interval!r}")
        if self.metrics_interval <= 0:
            raise ValueError(f"TelemetryConfig.metrics_interval must be > 0 seconds, got {self.metrics_interval!r}")
        if self.exit_flush_timeout < 0:
            raise ValueError(
                f"TelemetryConfig.exit_flush_timeout must be >= 0 seconds, got {self.exit_flush_timeout!r}"
            )
        if not isinstance(self.resource_attributes, dict) or not all(
            isinstance(k, str) for k in self.resource_attributes
        ):
            raise ValueError("TelemetryConfig.resource_attributes must be a dict with string keys")
