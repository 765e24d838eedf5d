"""The public surface of automagik-telemetry 0.1.4, as documented by that release, on this client.

Every name of 0.1.4's ``automagik_telemetry.__all__``, its modules, every client method (the async ones
too), the client ``TelemetryConfig``'s 21 fields (by keyword and positionally), ``get_status``'s keys,
the opt-out rules and ``opt_in_required`` (0.1.4's consent rules), privacy applied in the sender.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path
from typing import Any

import pytest
from fake_agent import FakeAgent

import automagik_telemetry
from automagik_telemetry import AutomagikTelemetry, PrivacyConfig, TelemetryConfig

V014_ALL = [
    "AutomagikTelemetry",
    "TelemetryConfig",
    "MetricType",
    "LogSeverity",
    "StandardEvents",
    "TelemetryOptIn",
    "prompt_user_if_needed",
    "should_prompt_user",
    "ConfigTelemetryConfig",
    "ValidatedConfig",
    "create_config",
    "load_config_from_env",
    "merge_config",
    "validate_config",
    "DEFAULT_CONFIG",
    "ENV_VARS",
    "PrivacyConfig",
    "SENSITIVE_KEYS",
    "detect_pii",
    "hash_value",
    "redact_sensitive_keys",
    "sanitize_email",
    "sanitize_phone",
    "sanitize_telemetry_data",
    "sanitize_value",
    "truncate_string",
]

#: 0.1.4's client TelemetryConfig fields, in its order, with its defaults (flush_interval: ours).
V014_FIELDS: list[tuple[str, object]] = [
    ("project_name", None),
    ("version", None),
    ("backend", "otlp"),
    ("endpoint", None),
    ("organization", "namastex"),
    ("timeout", 5),
    ("batch_size", 100),
    ("flush_interval", 0.2),
    ("compression_enabled", True),
    ("compression_threshold", 1024),
    ("max_retries", 3),
    ("retry_backoff_base", 1.0),
    ("metrics_endpoint", None),
    ("logs_endpoint", None),
    ("clickhouse_endpoint", "http://localhost:8123"),
    ("clickhouse_database", "telemetry"),
    ("clickhouse_table", "traces"),
    ("clickhouse_metrics_table", "metrics"),
    ("clickhouse_logs_table", "logs"),
    ("clickhouse_username", "default"),
    ("clickhouse_password", ""),
]


def attrs(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {item["key"]: next(iter(item["value"].values())) for item in items}


def make(sock_path: str, **overrides: Any) -> AutomagikTelemetry:
    settings: dict[str, Any] = {"project_name": "omni", "version": "1.0.0", "socket_path": sock_path}
    settings.update({"flush_interval": 0.05, "exit_flush_timeout": 0.5, **overrides})
    return AutomagikTelemetry(TelemetryConfig(**settings))


# -- names and modules ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", V014_ALL)
def test_every_v014_name_is_importable_from_the_package(name: str) -> None:
    assert hasattr(automagik_telemetry, name)
    assert name in automagik_telemetry.__all__


def test_names_have_v014_meaning() -> None:
    from automagik_telemetry import config, legacy_config, opt_in, privacy

    assert automagik_telemetry.DEFAULT_CONFIG is legacy_config.DEFAULT_CONFIG  # the config module's
    assert automagik_telemetry.DEFAULT_CONFIG["enabled"] is False
    assert automagik_telemetry.ConfigTelemetryConfig is config.TelemetryConfig
    assert automagik_telemetry.TelemetryConfig is automagik_telemetry.client.TelemetryConfig
    assert automagik_telemetry.TelemetryConfig is not config.TelemetryConfig
    assert automagik_telemetry.PrivacyConfig is privacy.PrivacyConfig
    assert automagik_telemetry.TelemetryOptIn is opt_in.TelemetryOptIn
    assert automagik_telemetry.StandardEvents.FEATURE_USED == "automagik.feature.used"
    assert automagik_telemetry.StandardEvents.ERROR_OCCURRED == "automagik.error"
    assert automagik_telemetry.MetricType("counter") is automagik_telemetry.MetricType.COUNTER
    assert automagik_telemetry.LogSeverity.WARN.value == 13
    assert hasattr(privacy, "Patterns") and privacy.Patterns.EMAIL.search("a@b.io")


def test_config_module_is_v014s() -> None:
    from automagik_telemetry import config

    for name in (
        "DEFAULT_CONFIG",
        "ENV_VARS",
        "TelemetryConfig",
        "ValidatedConfig",
        "create_config",
        "load_config_from_env",
        "merge_config",
        "validate_config",
    ):
        assert hasattr(config, name)
    partial = config.TelemetryConfig(project_name="omni", version="1.0.0")
    assert (partial.endpoint, partial.organization, partial.timeout, partial.enabled, partial.verbose) == (None,) * 5
    validated = config.create_config(partial)
    assert isinstance(validated, config.ValidatedConfig)
    assert validated.endpoint == "https://telemetry.namastex.ai/v1/traces"
    assert validated.enabled is False
    with pytest.raises(ValueError, match="project_name is required"):
        config.validate_config(config.TelemetryConfig(project_name="", version="1"))
    assert config.load_config_from_env().project_name == ""
    assert config.ClientTelemetryConfig is TelemetryConfig


def test_version_comes_from_metadata_or_sdk_version(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    from automagik_telemetry.resource import SDK_VERSION

    assert SDK_VERSION == "0.2.0"
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "9.9.9")
    assert automagik_telemetry._package_version() == "9.9.9"

    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert automagik_telemetry._package_version() == SDK_VERSION


# -- TelemetryConfig -----------------------------------------------------------------------------------


def test_config_accepts_v014_fields_by_keyword_with_v014_defaults() -> None:
    config = TelemetryConfig(project_name="omni", version="1.0.0")
    for name, default in V014_FIELDS[2:]:
        assert getattr(config, name) == default, name
    given = TelemetryConfig(
        project_name="omni",
        version="1.0.0",
        backend="clickhouse",
        endpoint="https://telemetry.example.com",
        organization="acme",
        timeout=10,
        batch_size=50,
        flush_interval=1.0,
        compression_enabled=False,
        compression_threshold=2048,
        max_retries=5,
        retry_backoff_base=0.5,
        metrics_endpoint="https://telemetry.example.com/v1/metrics",
        logs_endpoint="https://telemetry.example.com/v1/logs",
        clickhouse_endpoint="http://ch:8123",
        clickhouse_database="db",
        clickhouse_table="t",
        clickhouse_metrics_table="m",
        clickhouse_logs_table="l",
        clickhouse_username="u",
        clickhouse_password="p",
    )
    assert (given.backend, given.batch_size, given.clickhouse_password) == ("clickhouse", 50, "p")
    assert "clickhouse_password" not in repr(given)  # the password is not in repr


def test_config_positional_order_is_v014s() -> None:
    values = ["omni", "1.0.0", "clickhouse", "https://t.example.com", "acme", 7, 10, 0.5, False, 10, 1, 2.0]
    values += ["https://t.example.com/m", "https://t.example.com/l", "http://ch:8123", "d", "t", "m", "l", "u", "p"]
    assert len(values) == len(V014_FIELDS) == 21
    config = TelemetryConfig(*values)
    assert [getattr(config, name) for name, _ in V014_FIELDS] == values
    with pytest.raises(TypeError):  # this client's settings are keyword-only
        TelemetryConfig(*values, "production")  # type: ignore[misc]


def test_destination_settings_are_reported_once_and_never_raise(caplog: pytest.LogCaptureFixture) -> None:
    from automagik_telemetry import settings

    settings._REPORTED.clear()
    with caplog.at_level(logging.INFO, logger="automagik_telemetry"):
        TelemetryConfig(project_name="a", version="1", clickhouse_endpoint="http://ch:8123/x", backend="clickhouse")
        TelemetryConfig(project_name="a", version="1", clickhouse_endpoint="http://other:8123")
        TelemetryConfig(project_name="a", version="1", endpoint="not a url", timeout=-1, backend="bogus")
    messages = [r.getMessage() for r in caplog.records if r.name == "automagik_telemetry"]
    ch = [m for m in messages if "clickhouse_endpoint" in m]
    assert ch == ["TelemetryConfig.clickhouse_endpoint is the agent's setting now: clickhouse.endpoint in "
                  "/etc/automagik-telemetry/agent.toml (ignored here)"]  # fmt: skip
    assert sum("TelemetryConfig.backend" in m for m in messages) == 1
    assert any("TelemetryConfig.endpoint='not a url' is not an http(s) URL" in m for m in messages)
    assert any("TelemetryConfig.timeout=-1" in m for m in messages)
    settings._REPORTED.clear()
    with caplog.at_level(logging.INFO, logger="automagik_telemetry"):
        caplog.clear()
        TelemetryConfig(project_name="a", version="1", clickhouse_password="s3cret")
    assert "s3cret" not in caplog.text


def test_batch_size_wakes_the_sender(sock_path: str) -> None:
    client = make(sock_path, batch_size=1)
    assert client._transport.queue._wake_threshold == 1
    default = make(sock_path)
    assert default._transport.queue._wake_threshold > 1


# -- the client ----------------------------------------------------------------------------------------


def test_client_constructors(sock_path: str) -> None:
    config = TelemetryConfig(project_name="omni", version="1.0.0", socket_path=sock_path)
    assert AutomagikTelemetry(config).config is config
    assert AutomagikTelemetry(config=config).config is config
    assert AutomagikTelemetry("omni", "1.0.0").config.project_name == "omni"
    assert AutomagikTelemetry(project_name="omni", version="1.0.0").config.version == "1.0.0"
    with pytest.raises(ValueError):
        AutomagikTelemetry(config, config=config)


def test_every_method_and_async_method_delivers(sock_path: str) -> None:
    with FakeAgent(sock_path) as agent:
        client = make(sock_path)
        assert client.is_enabled()
        client.track_event(automagik_telemetry.StandardEvents.FEATURE_USED, {"feature_name": "x"})
        client.track_error(ValueError("boom" * 200), {"error_code": "OMNI-1"})
        client.track_metric("api.latency", 12.5, automagik_telemetry.MetricType.HISTOGRAM, {"e": "/v1"})
        client.track_log("hello", automagik_telemetry.LogSeverity.WARN, {"k": "v"})

        async def main() -> bool:
            await client.track_event_async("async.event", {"a": 1})
            try:
                raise KeyError("missing")
            except KeyError as exc:
                await client.track_error_async(exc, {"op": "lookup"})
            await client.track_metric_async("cpu", 1.0, "counter")
            await client.track_log_async("async log", "ERROR")
            return await client.flush_async(5.0)

        assert asyncio.run(main()) is True
        received = agent.wait_for_spans(4)
        spans = {span["name"]: span for span in received}
        errors = {
            attrs(span["attributes"])["error_type"]: span for span in received if span["name"] == "automagik.error"
        }
        assert set(errors) == {"ValueError", "KeyError"}
        assert attrs(errors["KeyError"]["attributes"])["op"] == "lookup"
        error = attrs(errors["ValueError"]["attributes"])
        assert error["error_type"] == "ValueError"
        assert error["error_message"] == ("boom" * 200)[:500]
        assert error["error_code"] == "OMNI-1"
        assert errors["ValueError"]["status"]["code"] == 2
        assert attrs(spans["async.event"]["attributes"]) == {"a": 1}
        assert len(agent.wait_for_records(2, 2)) == 2  # logs
        assert len(agent.wait_for_records(3, 2)) == 2  # metric points
        client.shutdown(0.5)


def test_get_status_has_v014_keys_and_ours(sock_path: str) -> None:
    status = make(sock_path).get_status()
    for key in (
        "enabled",
        "user_id",
        "session_id",
        "project_name",
        "project_version",
        "endpoint",
        "metrics_endpoint",
        "logs_endpoint",
        "opt_out_file_exists",
        "env_var",
        "verbose",
        "batch_size",
        "compression_enabled",
        "queue_sizes",
    ):
        assert key in status, key
    assert set(status["queue_sizes"]) == {"traces", "metrics", "logs"}
    assert status["project_name"] == "omni" and status["project_version"] == "1.0.0"
    assert status["endpoint"] == "unix://" + sock_path
    assert status["opt_out_file_exists"] is False and status["env_var"] is None
    assert status["socket_path"] == sock_path and "stats" in status


def test_disable_flushes_first_then_opts_out(sock_path: str) -> None:
    with FakeAgent(sock_path) as agent:
        client = make(sock_path, flush_interval=30.0)  # only a flush sends
        client.track_event("before.disable")
        asyncio.run(client.disable())
        assert [span["name"] for span in agent.spans()] == ["before.disable"]
        assert not client.is_enabled()
        assert (Path.home() / ".automagik-no-telemetry").exists()
        client.track_event("after.disable")
        assert client.flush(0.2) is True  # nothing to send
        assert TelemetryConfig(project_name="a", version="1").enabled is False  # the opt-out file
        client.enable()
        assert client.is_enabled()
        assert not (Path.home() / ".automagik-no-telemetry").exists()
        client.track_event("after.enable")
        assert client.flush(5.0)
        assert [span["name"] for span in agent.wait_for_spans(2)] == ["before.disable", "after.enable"]
        client.shutdown(0.5)


# -- opting out, opting in -----------------------------------------------------------------------------


def test_default_is_enabled_and_any_opt_out_disables(monkeypatch: pytest.MonkeyPatch) -> None:
    def enabled() -> bool:
        return TelemetryConfig(project_name="a", version="1").enabled

    assert enabled()
    monkeypatch.setenv("AUTOMAGIK_TELEMETRY_ENABLED", "false")
    assert not enabled()
    monkeypatch.setenv("AUTOMAGIK_TELEMETRY_ENABLED", "true")
    assert enabled()
    monkeypatch.setenv("DO_NOT_TRACK", "1")
    assert not enabled()  # any of them disables
    monkeypatch.setenv("DO_NOT_TRACK", "0")
    assert enabled()
    (Path.home() / ".automagik-no-telemetry").touch()
    assert not enabled()
    assert TelemetryConfig(project_name="a", version="1", enabled=True).enabled  # explicit wins


def test_opt_in_required_reproduces_v014s_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    def enabled(**kw: Any) -> bool:
        return TelemetryConfig(project_name="a", version="1", **kw).enabled

    assert not enabled(opt_in_required=True)  # 0.1.4: opt-in only
    monkeypatch.setenv("AUTOMAGIK_TELEMETRY_OPT_IN_REQUIRED", "1")
    assert not enabled()
    monkeypatch.setenv("AUTOMAGIK_TELEMETRY_ENABLED", "yes")
    assert enabled()
    monkeypatch.setenv("CI", "true")
    assert enabled()  # the variable decides first, as in 0.1.4
    monkeypatch.setenv("AUTOMAGIK_TELEMETRY_ENABLED", "garbage")
    assert not enabled()  # 0.1.4 never raised for it
    monkeypatch.delenv("AUTOMAGIK_TELEMETRY_ENABLED")
    assert not enabled()


def test_opt_in_required_sends_v014s_user_and_session_ids(sock_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOMAGIK_TELEMETRY_ENABLED", "true")
    with FakeAgent(sock_path) as agent:
        first = make(sock_path, opt_in_required=True)
        second = make(sock_path, opt_in_required=True)
        stored = (Path.home() / ".automagik" / "user_id").read_text().strip()
        assert first.user_id == second.user_id == stored
        assert first.session_id != second.session_id
        first.track_event("e")
        assert first.flush(5.0)
        agent.wait_for_spans(1)
        resource = attrs(agent.messages[0].resource["attributes"])
        assert resource["user.id"] == stored
        assert resource["session.id"] == first.session_id
        assert resource["service.organization"] == "namastex"
        assert first.get_status()["user_id"] == stored
        first.shutdown(0.5)
        second.shutdown(0.5)


# -- privacy -------------------------------------------------------------------------------------------

PII = {
    "contact": "write to jane.doe@example.com",
    "phone": "call 555-123-4567 now",
    "auth": "api_key_ABCDEFGHIJKLMNOPQRSTUVWXYZ123456",
    "password": "hunter2",
}


def _assert_scrubbed(values: dict[str, Any]) -> None:
    text = repr(values)
    for secret in ("jane.doe@example.com", "555-123-4567", "ABCDEFGHIJKLMNOPQRSTUVWXYZ123456", "hunter2"):
        assert secret not in text, secret
    assert values["password"] == "[REDACTED]"


@pytest.mark.parametrize("how", ["config", "env"])
def test_privacy_sanitizes_what_the_agent_receives(sock_path: str, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    if how == "env":
        monkeypatch.setenv("AUTOMAGIK_TELEMETRY_PRIVACY", "1")
        overrides: dict[str, Any] = {}
    else:
        overrides = {"privacy": PrivacyConfig(strategy="redact")}
    with FakeAgent(sock_path) as agent:
        client = make(sock_path, **overrides)
        assert client.config.privacy is not None
        attributes = dict(PII)
        client.track_event("signup", attributes)
        client.track_log("mail jane.doe@example.com or 555-123-4567", "INFO", dict(PII))
        client.track_metric("signups", 1, "counter", dict(PII))
        assert client.flush(5.0)
        (span,) = agent.wait_for_spans(1)
        (log,) = agent.wait_for_records(2, 1)
        (metric,) = agent.wait_for_records(3, 1)
        _assert_scrubbed(attrs(span["attributes"]))
        _assert_scrubbed(attrs(log["attributes"]))
        _assert_scrubbed(attrs(metric["sum"]["dataPoints"][0]["attributes"]))
        assert "jane.doe@example.com" not in log["body"]["stringValue"]
        assert "555-123-4567" not in log["body"]["stringValue"]
        assert attributes == PII  # the application's dict is untouched
        client.shutdown(0.5)


def test_without_privacy_nothing_is_rewritten(sock_path: str) -> None:
    with FakeAgent(sock_path) as agent:
        client = make(sock_path)
        client.track_event("signup", PII)
        assert client.flush(5.0)
        (span,) = agent.wait_for_spans(1)
        assert attrs(span["attributes"]) == PII
        client.shutdown(0.5)


def test_privacy_runs_in_the_sender_thread(sock_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from automagik_telemetry import transport

    threads: list[str] = []
    real = transport.scrub_record

    def spy(record: object, config: PrivacyConfig) -> None:
        threads.append(threading.current_thread().name)
        real(record, config)

    monkeypatch.setattr(transport, "scrub_record", spy)
    with FakeAgent(sock_path):
        client = make(sock_path, privacy=PrivacyConfig())
        client.track_event("e", {"password": "x"})
        assert client.flush(5.0)
        client.shutdown(0.5)
    assert threads == ["automagik-telemetry-sender"]


def test_telemetry_config_is_a_dataclass_with_v014_fields() -> None:
    names = [f.name for f in dataclasses.fields(TelemetryConfig)]
    assert names[:21] == [name for name, _ in V014_FIELDS]
