"""The configuration API of 0.1.4's ``automagik_telemetry.config`` module, kept for applications written
against it.

``TelemetryConfig`` here is that release's *partial* configuration (everything but the project name and
version may be ``None``, meaning "not given"); 0.1.4 re-exported it at package level as
``ConfigTelemetryConfig``, and this module offers both names for the same class. ``create_config``
validates one and resolves it into a ``ValidatedConfig``, with the precedence *given value, then
environment variable, then ``DEFAULT_CONFIG``*.

Stdlib only.
"""

import os
from dataclasses import dataclass
from urllib.parse import urlparse

__all__ = [
    "DEFAULT_CONFIG",
    "ENV_VARS",
    "ConfigTelemetryConfig",
    "TelemetryConfig",
    "ValidatedConfig",
    "create_config",
    "load_config_from_env",
    "merge_config",
    "validate_config",
]

#: Values used for whatever neither the configuration nor the environment gives (read at call time).
DEFAULT_CONFIG: dict[str, str | int | bool] = {
    "endpoint": "https://telemetry.namastex.ai/v1/traces",
    "organization": "namastex",
    "timeout": 5,
    "enabled": False,
    "verbose": False,
}

#: The environment variable behind each setting that can come from the environment.
ENV_VARS = {
    "ENABLED": "AUTOMAGIK_TELEMETRY_ENABLED",
    "ENDPOINT": "AUTOMAGIK_TELEMETRY_ENDPOINT",
    "VERBOSE": "AUTOMAGIK_TELEMETRY_VERBOSE",
    "TIMEOUT": "AUTOMAGIK_TELEMETRY_TIMEOUT",
}

_TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
_URL_SCHEMES = ("http", "https")
_MAX_TIMEOUT = 60
_PREFIX = "TelemetryConfig: "


@dataclass
class TelemetryConfig:
    """Settings as given by the application; ``None`` means "use the environment or the default".

    ``timeout`` is in seconds.
    """

    project_name: str
    version: str
    endpoint: str | None = None
    organization: str | None = None
    timeout: int | None = None
    enabled: bool | None = None
    verbose: bool | None = None


#: The package-level name 0.1.4 gave this class (its ``TelemetryConfig`` was the client's).
ConfigTelemetryConfig = TelemetryConfig


@dataclass
class ValidatedConfig:
    """A ``TelemetryConfig`` with every setting resolved to a concrete value."""

    project_name: str
    version: str
    endpoint: str
    organization: str
    timeout: int
    enabled: bool
    verbose: bool


def _env_flag(name: str) -> bool | None:
    raw = os.getenv(name)
    if raw is None:
        return None
    return raw.strip().lower() in _TRUE_WORDS


def _env_timeout(name: str) -> int | None:
    raw = os.getenv(name)
    if not raw:
        return None
    try:
        seconds = int(raw)
    except ValueError:
        return None
    return seconds if seconds > 0 else None


def load_config_from_env() -> TelemetryConfig:
    """The settings given by the environment, as a ``TelemetryConfig`` with empty name and version.

    ``AUTOMAGIK_TELEMETRY_ENABLED`` / ``_VERBOSE``: when set, ``true``, ``1``, ``yes`` or ``on``
    (case-insensitive, surrounding blanks ignored) mean ``True`` and anything else ``False``.
    ``AUTOMAGIK_TELEMETRY_ENDPOINT``: used when non-empty. ``AUTOMAGIK_TELEMETRY_TIMEOUT``: used when it
    is a positive integer, ignored otherwise.
    """
    return TelemetryConfig(
        project_name="",
        version="",
        endpoint=os.getenv(ENV_VARS["ENDPOINT"]) or None,
        timeout=_env_timeout(ENV_VARS["TIMEOUT"]),
        enabled=_env_flag(ENV_VARS["ENABLED"]),
        verbose=_env_flag(ENV_VARS["VERBOSE"]),
    )


def _first_given(*candidates: bool | None) -> bool | None:
    return next((candidate for candidate in candidates if candidate is not None), None)


def merge_config(user_config: TelemetryConfig) -> ValidatedConfig:
    """Resolve every setting: the given value, else the environment's, else ``DEFAULT_CONFIG``'s.

    Without validation. For ``endpoint``, ``organization`` and ``timeout`` any falsy value (``""``,
    ``0``) counts as not given; for ``enabled`` and ``verbose`` only ``None`` does. The organization is
    never read from the environment.
    """
    env = load_config_from_env()
    enabled = _first_given(user_config.enabled, env.enabled)
    verbose = _first_given(user_config.verbose, env.verbose)
    return ValidatedConfig(
        project_name=user_config.project_name,
        version=user_config.version,
        endpoint=str(user_config.endpoint or env.endpoint or DEFAULT_CONFIG["endpoint"]),
        organization=str(user_config.organization or DEFAULT_CONFIG["organization"]),
        timeout=int(user_config.timeout or env.timeout or DEFAULT_CONFIG["timeout"]),
        enabled=bool(DEFAULT_CONFIG["enabled"] if enabled is None else enabled),
        verbose=bool(DEFAULT_CONFIG["verbose"] if verbose is None else verbose),
    )


def _blank(text: str | None) -> bool:
    return not text or not text.strip()


def _check_endpoint(endpoint: str) -> None:
    not_a_url = ValueError(f"{_PREFIX}endpoint must be a valid URL (got: {endpoint})")
    try:
        parts = urlparse(endpoint)
    except Exception as exc:
        raise not_a_url from exc
    if parts.scheme not in _URL_SCHEMES:
        raise ValueError(f"{_PREFIX}endpoint must use http or https protocol")
    if not parts.netloc:
        raise not_a_url


def validate_config(config: TelemetryConfig) -> None:
    """Raise ``ValueError`` (message starting ``TelemetryConfig: ``) at the first invalid setting.

    Checked in this order: project_name and version are non-blank; an endpoint, if given, is an
    ``http``/``https`` URL with a host; a timeout, if given, is an ``int`` from 1 to 60; an organization,
    if given, is non-blank.
    """
    if _blank(config.project_name):
        raise ValueError(f"{_PREFIX}project_name is required and cannot be empty")
    if _blank(config.version):
        raise ValueError(f"{_PREFIX}version is required and cannot be empty")
    if config.endpoint is not None:
        _check_endpoint(config.endpoint)
    timeout = config.timeout
    if timeout is not None:
        if not isinstance(timeout, int) or timeout <= 0:
            raise ValueError(f"{_PREFIX}timeout must be a positive integer (got: {timeout})")
        if timeout > _MAX_TIMEOUT:
            raise ValueError(f"{_PREFIX}timeout should not exceed {_MAX_TIMEOUT} seconds (got: {timeout})")
    if config.organization is not None and not config.organization.strip():
        raise ValueError(f"{_PREFIX}organization cannot be empty if provided")


def create_config(user_config: TelemetryConfig) -> ValidatedConfig:
    """``validate_config`` then ``merge_config``: the one-call way to a ready configuration."""
    validate_config(user_config)
    return merge_config(user_config)
