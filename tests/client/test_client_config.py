"""TelemetryConfig: precedence argument > environment > default, and ValueError on bad values."""

from __future__ import annotations

from typing import Any

import pytest

from automagik_telemetry import TelemetryConfig, __version__
from automagik_telemetry.protocol import DEFAULT_SOCKET_PATH
from automagik_telemetry.resource import SDK_VERSION


def _installed_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("automagik-telemetry")
    except PackageNotFoundError:
        return None


def config(**overrides: Any) -> TelemetryConfig:
    return TelemetryConfig(**{"project_name": "app", "version": "1.0", **overrides})


def test_defaults_without_environment() -> None:
    c = config()
    assert (c.environment, c.service_name, c.socket_path, c.enabled) == (
        "development",
        "app",
        DEFAULT_SOCKET_PATH,
        True,
    )
    assert (c.max_queue_size, c.flush_interval, c.exit_flush_timeout, c.max_attribute_length) == (
        32_768,
        0.2,
        1.0,
        4096,
    )
    assert c.resource_attributes == {}
    # The installed metadata's version (stale until the editable install is refreshed), else SDK_VERSION.
    assert __version__ in {_installed_version(), SDK_VERSION}


def test_environment_variables_override_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOMAGIK_TELEMETRY_ENVIRONMENT", "production")
    monkeypatch.setenv("AUTOMAGIK_TELEMETRY_SOCKET", "/tmp/x.sock")
    monkeypatch.setenv("AUTOMAGIK_TELEMETRY_ENABLED", "false")
    c = config()
    assert (c.environment, c.socket_path, c.enabled) == ("production", "/tmp/x.sock", False)


def test_explicit_arguments_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOMAGIK_TELEMETRY_ENVIRONMENT", "production")
    monkeypatch.setenv("AUTOMAGIK_TELEMETRY_SOCKET", "/tmp/x.sock")
    monkeypatch.setenv("AUTOMAGIK_TELEMETRY_ENABLED", "false")
    c = config(environment="staging", socket_path="/tmp/y.sock", enabled=True, service_name="svc")
    assert (c.environment, c.socket_path, c.enabled, c.service_name) == ("staging", "/tmp/y.sock", True, "svc")


@pytest.mark.parametrize("word", ["false", "FALSE", "0", "no", "off", " Off "])
def test_enabled_env_words_that_disable(monkeypatch: pytest.MonkeyPatch, word: str) -> None:
    monkeypatch.setenv("AUTOMAGIK_TELEMETRY_ENABLED", word)
    assert config().enabled is False


@pytest.mark.parametrize("word", ["true", "1", "yes", "on", "TRUE"])
def test_enabled_env_words_that_enable(monkeypatch: pytest.MonkeyPatch, word: str) -> None:
    monkeypatch.setenv("AUTOMAGIK_TELEMETRY_ENABLED", word)
    assert config().enabled is True


@pytest.mark.parametrize(
    "overrides",
    [
        {"project_name": ""},
        {"version": None},
        {"max_queue_size": 0},
        {"max_queue_size": -5},
        {"max_queue_size": 1.5},
        {"max_queue_size": True},
        {"flush_interval": 0},
        {"flush_interval": -1},
        {"flush_interval": float("nan")},
        {"exit_flush_timeout": -0.1},
        {"exit_flush_timeout": float("inf")},
        {"max_attribute_length": 0},
        {"enabled": "yes"},
        {"socket_path": "/tmp/" + "x" * 200},
        {"resource_attributes": {1: "x"}},
        {"environment": ""},
    ],
)
def test_invalid_values_raise_value_error_naming_the_setting(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="TelemetryConfig"):
        config(**overrides)


def test_invalid_enabled_env_word_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOMAGIK_TELEMETRY_ENABLED", "maybe")
    with pytest.raises(ValueError, match="AUTOMAGIK_TELEMETRY_ENABLED"):
        config()
