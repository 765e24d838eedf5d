"""automagik_telemetry.legacy_config is 0.1.4's ``automagik_telemetry.config`` API: same fields, defaults,
environment variables, precedence, validation order and error messages (all checked against 0.1.4).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from automagik_telemetry.legacy_config import (
    DEFAULT_CONFIG,
    ENV_VARS,
    ConfigTelemetryConfig,
    TelemetryConfig,
    ValidatedConfig,
    create_config,
    load_config_from_env,
    merge_config,
    validate_config,
)

DEFAULT_ENDPOINT = "https://telemetry.namastex.ai/v1/traces"


@pytest.fixture(autouse=True)
def _no_config_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS.values():
        monkeypatch.delenv(name, raising=False)


def config(**overrides: Any) -> TelemetryConfig:
    return TelemetryConfig(**{"project_name": "omni", "version": "1.0.0", **overrides})


def validated(**overrides: Any) -> ValidatedConfig:
    values: dict[str, Any] = {
        "project_name": "omni",
        "version": "1.0.0",
        "endpoint": DEFAULT_ENDPOINT,
        "organization": "namastex",
        "timeout": 5,
        "enabled": False,
        "verbose": False,
    }
    values.update(overrides)
    return ValidatedConfig(**values)


# --- constants and dataclasses ----------------------------------------------------------------------


def test_default_config_is_the_opt_in_only_namastex_endpoint_with_a_5_second_timeout() -> None:
    assert DEFAULT_CONFIG == {
        "endpoint": DEFAULT_ENDPOINT,
        "organization": "namastex",
        "timeout": 5,
        "enabled": False,
        "verbose": False,
    }


def test_env_vars_maps_the_four_settings_to_their_automagik_variables() -> None:
    assert ENV_VARS == {
        "ENABLED": "AUTOMAGIK_TELEMETRY_ENABLED",
        "ENDPOINT": "AUTOMAGIK_TELEMETRY_ENDPOINT",
        "VERBOSE": "AUTOMAGIK_TELEMETRY_VERBOSE",
        "TIMEOUT": "AUTOMAGIK_TELEMETRY_TIMEOUT",
    }


def test_config_telemetry_config_is_the_same_class_named_telemetry_config() -> None:
    assert ConfigTelemetryConfig is TelemetryConfig
    assert TelemetryConfig.__name__ == "TelemetryConfig"


def test_telemetry_config_needs_name_and_version_and_leaves_everything_else_none() -> None:
    fields = [(f.name, f.type, f.default) for f in dataclasses.fields(TelemetryConfig)]
    assert fields[2:] == [
        ("endpoint", str | None, None),
        ("organization", str | None, None),
        ("timeout", int | None, None),
        ("enabled", bool | None, None),
        ("verbose", bool | None, None),
    ]
    assert fields[0][:2] == ("project_name", str) and fields[1][:2] == ("version", str)
    with pytest.raises(TypeError):
        TelemetryConfig()  # type: ignore[call-arg]
    assert repr(config()) == (
        "TelemetryConfig(project_name='omni', version='1.0.0', endpoint=None, organization=None, "
        "timeout=None, enabled=None, verbose=None)"
    )


def test_validated_config_has_seven_required_concrete_fields() -> None:
    assert [(f.name, f.type) for f in dataclasses.fields(ValidatedConfig)] == [
        ("project_name", str),
        ("version", str),
        ("endpoint", str),
        ("organization", str),
        ("timeout", int),
        ("enabled", bool),
        ("verbose", bool),
    ]
    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(ValidatedConfig))


# --- load_config_from_env ---------------------------------------------------------------------------


def test_load_config_from_env_without_variables_gives_empty_name_and_version_and_nothing_else() -> None:
    assert load_config_from_env() == TelemetryConfig(project_name="", version="")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        (" yes ", True),
        ("1", True),
        ("on", True),
        ("", False),
        ("off", False),
        ("no", False),
        ("0", False),
        ("false", False),
        ("maybe", False),
    ],
)
def test_boolean_variables_are_true_only_for_true_1_yes_on_ignoring_case_and_blanks(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool
) -> None:
    monkeypatch.setenv("AUTOMAGIK_TELEMETRY_ENABLED", raw)
    monkeypatch.setenv("AUTOMAGIK_TELEMETRY_VERBOSE", raw)
    env = load_config_from_env()
    assert (env.enabled, env.verbose) == (expected, expected)


def test_endpoint_variable_is_used_only_when_non_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOMAGIK_TELEMETRY_ENDPOINT", "")
    assert load_config_from_env().endpoint is None
    monkeypatch.setenv("AUTOMAGIK_TELEMETRY_ENDPOINT", "ftp://not-validated")
    assert load_config_from_env().endpoint == "ftp://not-validated"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("10", 10),
        (" 7 ", 7),
        ("1_0", 10),
        ("99", 99),
        ("", None),
        ("0", None),
        ("-3", None),
        ("abc", None),
        ("2.5", None),
    ],
)
def test_timeout_variable_is_used_only_when_it_parses_as_a_positive_int(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: int | None
) -> None:
    monkeypatch.setenv("AUTOMAGIK_TELEMETRY_TIMEOUT", raw)
    assert load_config_from_env().timeout == expected


# --- merge_config -----------------------------------------------------------------------------------


def test_merge_config_fills_every_missing_setting_from_the_defaults() -> None:
    assert merge_config(config()) == validated()


def test_environment_fills_settings_the_configuration_does_not_give(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOMAGIK_TELEMETRY_ENABLED", "true")
    monkeypatch.setenv("AUTOMAGIK_TELEMETRY_VERBOSE", "on")
    monkeypatch.setenv("AUTOMAGIK_TELEMETRY_ENDPOINT", "http://env.example/v1/traces")
    monkeypatch.setenv("AUTOMAGIK_TELEMETRY_TIMEOUT", "9")
    assert merge_config(config()) == validated(
        endpoint="http://env.example/v1/traces", timeout=9, enabled=True, verbose=True
    )


def test_given_settings_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOMAGIK_TELEMETRY_ENABLED", "true")
    monkeypatch.setenv("AUTOMAGIK_TELEMETRY_VERBOSE", "true")
    monkeypatch.setenv("AUTOMAGIK_TELEMETRY_ENDPOINT", "http://env.example")
    monkeypatch.setenv("AUTOMAGIK_TELEMETRY_TIMEOUT", "9")
    given = config(endpoint="https://mine.example", organization="acme", timeout=3, enabled=False, verbose=False)
    assert merge_config(given) == validated(
        endpoint="https://mine.example", organization="acme", timeout=3, enabled=False, verbose=False
    )


def test_falsy_endpoint_organization_and_timeout_count_as_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOMAGIK_TELEMETRY_TIMEOUT", "8")
    assert merge_config(config(endpoint="", organization="", timeout=0)) == validated(timeout=8)


def test_organization_is_never_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOMAGIK_TELEMETRY_ORGANIZATION", "env-org")
    assert merge_config(config()).organization == "namastex"


def test_merge_config_coerces_values_without_validating_them() -> None:
    merged = merge_config(config(timeout=2.5, enabled="false", verbose=0))
    assert (merged.timeout, merged.enabled, merged.verbose) == (2, True, False)
    assert merge_config(config(project_name="", version="")).project_name == ""


# --- validate_config --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"endpoint": "https://a.example/v1"},
        {"endpoint": "http://localhost:4318"},
        {"endpoint": "HTTPS://UP.example"},
        {"endpoint": "https://[::1]:8080/x"},
        {"timeout": 1},
        {"timeout": 60},
        {"timeout": True},
        {"organization": "acme"},
        {"project_name": " x ", "version": " 1 "},
    ],
)
def test_valid_configurations_pass_validation(overrides: dict[str, Any]) -> None:
    assert validate_config(config(**overrides)) is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"project_name": ""}, "TelemetryConfig: project_name is required and cannot be empty"),
        ({"project_name": "  "}, "TelemetryConfig: project_name is required and cannot be empty"),
        ({"project_name": None}, "TelemetryConfig: project_name is required and cannot be empty"),
        ({"version": ""}, "TelemetryConfig: version is required and cannot be empty"),
        ({"version": "\t"}, "TelemetryConfig: version is required and cannot be empty"),
        ({"version": None}, "TelemetryConfig: version is required and cannot be empty"),
        ({"endpoint": "ftp://a"}, "TelemetryConfig: endpoint must use http or https protocol"),
        ({"endpoint": ""}, "TelemetryConfig: endpoint must use http or https protocol"),
        ({"endpoint": "a.example"}, "TelemetryConfig: endpoint must use http or https protocol"),
        ({"endpoint": "//host/x"}, "TelemetryConfig: endpoint must use http or https protocol"),
        ({"endpoint": "http://"}, "TelemetryConfig: endpoint must be a valid URL (got: http://)"),
        ({"endpoint": "http:///path"}, "TelemetryConfig: endpoint must be a valid URL (got: http:///path)"),
        ({"endpoint": "http://[::1"}, "TelemetryConfig: endpoint must be a valid URL (got: http://[::1)"),
        ({"endpoint": 5}, "TelemetryConfig: endpoint must be a valid URL (got: 5)"),
        ({"timeout": 0}, "TelemetryConfig: timeout must be a positive integer (got: 0)"),
        ({"timeout": -1}, "TelemetryConfig: timeout must be a positive integer (got: -1)"),
        ({"timeout": False}, "TelemetryConfig: timeout must be a positive integer (got: False)"),
        ({"timeout": 2.5}, "TelemetryConfig: timeout must be a positive integer (got: 2.5)"),
        ({"timeout": "5"}, "TelemetryConfig: timeout must be a positive integer (got: 5)"),
        ({"timeout": 61}, "TelemetryConfig: timeout should not exceed 60 seconds (got: 61)"),
        ({"organization": ""}, "TelemetryConfig: organization cannot be empty if provided"),
        ({"organization": "  "}, "TelemetryConfig: organization cannot be empty if provided"),
    ],
)
def test_each_invalid_setting_raises_value_error_with_0_1_4_message(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as raised:
        validate_config(config(**overrides))
    assert str(raised.value) == message
    assert type(raised.value) is ValueError


def test_validation_reports_the_first_invalid_setting_in_0_1_4_order() -> None:
    everything_wrong = dict(project_name="", version="", endpoint="ftp://x", timeout=0, organization="")
    expected_order = ["project_name", "version", "endpoint", "timeout", "organization"]
    for field in expected_order:
        with pytest.raises(ValueError, match=f"TelemetryConfig: {field} "):
            validate_config(TelemetryConfig(**everything_wrong))  # type: ignore[arg-type]
        everything_wrong.pop(field)
        if field in ("project_name", "version"):
            everything_wrong[field] = "ok"


def test_validation_does_not_look_at_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOMAGIK_TELEMETRY_ENDPOINT", "ftp://bad")
    monkeypatch.setenv("AUTOMAGIK_TELEMETRY_TIMEOUT", "500")
    validate_config(config())


# --- create_config ----------------------------------------------------------------------------------


def test_create_config_validates_then_merges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOMAGIK_TELEMETRY_TIMEOUT", "12")
    assert create_config(config(enabled=True)) == validated(enabled=True, timeout=12)
    with pytest.raises(ValueError, match="timeout should not exceed 60 seconds"):
        create_config(config(timeout=120))


def test_create_config_turns_a_true_timeout_into_one_second() -> None:
    assert create_config(config(timeout=True)).timeout == 1
