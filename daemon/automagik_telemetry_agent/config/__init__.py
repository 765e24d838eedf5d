"""Agent configuration: load, merge and validate every setting (the table is :mod:`.settings`, the
value parsers :mod:`.values`).

Precedence, lowest to highest: built-in default < TOML file < ``AUTOMAGIK_TELEMETRY_*`` env var <
command-line flag. Every value is validated; a bad one raises :class:`ConfigError` with one line
saying what to fix (the CLI prints it and exits 2). ``docs/configuration.md`` mirrors this table.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Iterator, Mapping
from typing import Any

from .settings import ENV_PREFIX, SETTINGS, SETTINGS_BY_KEY, Setting
from .values import (
    SUN_PATH_MAX,
    parse_bool,
    parse_choice,
    parse_duration,
    parse_float,
    parse_identifier,
    parse_int,
    parse_listen,
    parse_mode,
    parse_optional_identifier,
    parse_size,
    parse_str,
    parse_url,
    parse_urls,
    split_listen,
    split_urls,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ENV_PREFIX",
    "SETTINGS",
    "SETTINGS_BY_KEY",
    "SUN_PATH_MAX",
    "AgentConfig",
    "ConfigError",
    "Setting",
    "changed_settings",
    "load_config",
    "origin",
    "parse_bool",
    "parse_choice",
    "parse_duration",
    "parse_float",
    "parse_identifier",
    "parse_int",
    "parse_listen",
    "parse_mode",
    "parse_optional_identifier",
    "parse_size",
    "parse_str",
    "parse_url",
    "parse_urls",
    "read_toml",
    "split_listen",
    "split_urls",
]

DEFAULT_CONFIG_PATH = "/etc/automagik-telemetry/agent.toml"


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message says what to fix."""


class AgentConfig(Mapping[str, Any]):
    """Validated settings, read as ``config["wal.fsync"]``; ``sources`` says where each came from."""

    def __init__(self, values: dict[str, Any], sources: dict[str, str]) -> None:
        self._values = values
        self.sources = sources

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in table.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            out.update(_flatten(value, key + "."))
        else:
            out[key] = value
    return out


def read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except PermissionError:
        raise ConfigError(f"config file {path} is not readable by this user") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory: name the TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {' '.join(str(exc).split())}") from None
    flat = _flatten(data)
    for key in flat:
        if key not in SETTINGS_BY_KEY:
            raise ConfigError(f"config file {path}: unknown key {key!r}{_suggest(key)}")
    return flat


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, list(SETTINGS_BY_KEY), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def load_config(
    config_path: str | None = None, flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> AgentConfig:
    """Merge default < file < env < flags and validate every value.

    ``config_path`` None means the default path, used only if it exists; an explicit path must exist.
    ``flags`` maps setting keys to values given on the command line (None = not given).
    """
    env = os.environ if env is None else env
    layers: list[tuple[str, dict[str, Any]]] = []
    path = config_path or env.get(ENV_PREFIX + "CONFIG")
    if path:
        layers.append((f"file {path}", read_toml(path)))
    elif os.path.exists(DEFAULT_CONFIG_PATH):
        layers.append((f"file {DEFAULT_CONFIG_PATH}", read_toml(DEFAULT_CONFIG_PATH)))
    layers.append(("env", {s.key: env[s.env_name] for s in SETTINGS if s.env_name in env}))
    layers.append(("flag", {k: v for k, v in (flags or {}).items() if v is not None}))
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for setting in SETTINGS:
        raw, source = setting.default, "default"
        for name, layer in layers:
            if setting.key in layer:
                raw, source = layer[setting.key], name
        try:
            values[setting.key] = setting.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{origin(setting.key, source)}: {exc}") from None
        sources[setting.key] = source
    _imply_embedded_sink(values, sources)
    _check_relations(values, sources)
    return AgentConfig(values, sources)


def _imply_embedded_sink(values: dict[str, Any], sources: dict[str, str]) -> None:
    """``--embedded DIR`` without ``--sink`` means ``sink = "embedded"``: naming the store's directory on the
    command line is asking for it. An explicit ``--sink`` flag still wins; so does nothing else (the flag
    outranks the file and the environment, as every flag does)."""
    if sources["embedded.dir"] == "flag" and sources["sink"] != "flag":
        values["sink"], sources["sink"] = "embedded", "flag (--embedded)"


def origin(key: str, source: str) -> str:
    """The name under which the user set ``key``: the flag, the env var, or the TOML key and its file.

    Every error message starts with it, so the operator knows which of the three places to edit.
    """
    setting = SETTINGS_BY_KEY[key]
    return {"env": setting.env_name, "flag": setting.flag_name}.get(source, f"{key} ({source})")


def _check_relations(values: dict[str, Any], sources: dict[str, str]) -> None:
    """Rules between settings, and limits a parser cannot express; each error names what the user set."""

    def fail(key: str, problem: str) -> None:
        raise ConfigError(f"{origin(key, sources[key])}: {problem}")

    for key in ("socket.path", "wal.dir"):
        if not values[key].strip():
            fail(key, "must not be empty")
    if len(os.fsencode(values["socket.path"])) > SUN_PATH_MAX:
        fail(
            "socket.path",
            f"{values['socket.path']!r} is {len(os.fsencode(values['socket.path']))} bytes; a Unix "
            f"socket path must be at most {SUN_PATH_MAX}: choose a shorter path",
        )
    if values["wal.segment_size"] < 64 * 1024:
        fail("wal.segment_size", "must be at least 64KiB")
    if values["wal.max_size"] and values["wal.max_size"] < 2 * values["wal.segment_size"]:
        fail(
            "wal.max_size",
            f"must be at least twice wal.segment_size ({values['wal.segment_size']} bytes), or 0 for no cap",
        )
    for key in (
        "clickhouse.connect_timeout",
        "clickhouse.read_timeout",
        "shipper.retry_base",
        "shipper.retry_max",
        "shipper.config_retry",
    ):
        if values[key] <= 0:
            fail(key, "must be more than 0 (examples: 500ms, 5s)")
    if values["agent.heartbeat_timeout"] < 2:
        fail("agent.heartbeat_timeout", "must be at least 2s (children report about once a second)")
    if len(os.fsencode(values["socket.control_path"])) > SUN_PATH_MAX:
        fail(
            "socket.control_path",
            f"{values['socket.control_path']!r} is longer than {SUN_PATH_MAX} bytes: choose a shorter path",
        )
    for key in ("otlp.idle_timeout", "otlp.header_timeout", "otlp.body_timeout", "otlp.ack_timeout"):
        if values[key] <= 0:
            fail(key, "must be more than 0 (examples: 500ms, 10s)")
    if values["otlp.max_body"] < 1024:
        fail("otlp.max_body", "must be at least 1KiB")
    if values["otlp.max_buffered"] < values["otlp.max_body"]:
        fail("otlp.max_buffered", f"must be at least otlp.max_body ({values['otlp.max_body']} bytes)")
    if bool(values["otlp.tls_cert"]) != bool(values["otlp.tls_key"]):
        fail(
            "otlp.tls_cert" if values["otlp.tls_cert"] else "otlp.tls_key", "otlp.tls_cert and otlp.tls_key go together"
        )
    if len(os.fsencode(values["otlp.unix_path"])) > SUN_PATH_MAX:
        fail(
            "otlp.unix_path", f"{values['otlp.unix_path']!r} is longer than {SUN_PATH_MAX} bytes: choose a shorter path"
        )
    if values["shipper.retry_base"] > values["shipper.retry_max"]:
        fail(
            "shipper.retry_base",
            f"{values['shipper.retry_base']:g}s is longer than shipper.retry_max "
            f"({values['shipper.retry_max']:g}s): lower it or raise shipper.retry_max",
        )


def changed_settings(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Setting]:
    """The settings whose values differ between two configurations, in table order (on SIGHUP the
    ``live`` ones are applied and the others reported as needing a restart)."""
    return [s for s in SETTINGS if old.get(s.key) != new.get(s.key)]
