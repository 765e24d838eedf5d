"""Agent configuration: every key in one table, with its env var, flag, default, parser and meaning.

Precedence, lowest to highest: built-in default < TOML file < ``AUTOMAGIK_TELEMETRY_*`` env var <
command-line flag. Every value is validated; a bad one raises :class:`ConfigError` with one line
saying what to fix (the CLI prints it and exits 2). ``docs/configuration.md`` mirrors this table.
"""

from __future__ import annotations

import os
import re
import tomllib
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_CONFIG_PATH = "/etc/automagik-telemetry/agent.toml"
ENV_PREFIX = "AUTOMAGIK_TELEMETRY_"


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message says what to fix."""


# ---------------------------------------------------------------------------- value parsers
_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_FACTORS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "ki": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "mi": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "gi": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
    "ti": 1024**4,
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_FACTORS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_size(value: Any) -> int:
    """Bytes from 1048576, "64MiB", "1 GB" (decimal units are powers of 1000, binary of 1024)."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 64MiB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a size (examples: 1048576, 64MiB, 2GB)")
    return int(match.group(1)) * _SIZE_FACTORS[(match.group(2) or "").lower()]


def parse_duration(value: Any) -> float:
    """Seconds from 1.5, "50ms", "2s", "5m", "1h"."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 50ms")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration (examples: 50ms, 2s, 5m)")
    return float(match.group(1)) * _DURATION_FACTORS[match.group(2)]


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{value!r} is not a boolean (true/false)")


def parse_int(minimum: int = 0) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError("expected a whole number")
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{value!r} is not a whole number") from None
        if number < minimum:
            raise ValueError(f"must be at least {minimum}")
        return number

    return parse


def parse_choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return text

    return parse


def parse_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_identifier(value: Any) -> str:
    """A plain ClickHouse name (database, table): the shipper splices it into SQL, so nothing else."""
    text = parse_str(value)
    if not _IDENTIFIER.fullmatch(text):
        raise ValueError(f"{text!r} is not a plain name (letters, digits and _, not starting with a digit)")
    return text


def parse_url(value: Any) -> str:
    """An http(s)://host[:port][/path] URL without credentials, query string or fragment.

    Credentials in the URL would end up in logs and ``ps`` output, and a query string would be a
    second place for settings; both are refused with what to use instead. The message never
    repeats a password.
    """
    text = parse_str(value).strip()
    try:
        parsed = urllib.parse.urlsplit(text)
        port = parsed.port
    except ValueError:
        raise ValueError(f"{text!r} has an invalid port (example: http://localhost:8123)") from None
    if parsed.scheme not in ("http", "https"):
        raise ValueError(f"{text!r} is not an http:// or https:// URL (example: http://localhost:8123)")
    if parsed.username is not None or parsed.password is not None:
        raise ValueError(
            "the URL must not carry credentials: remove 'user:password@' and set --username "
            "and --password-file (clickhouse.username, clickhouse.password_file)"
        )
    if not parsed.hostname:
        raise ValueError(f"{text!r} has no host (example: http://localhost:8123)")
    if port == 0:
        raise ValueError(f"{text!r} has port 0 (example: http://localhost:8123)")
    if parsed.query or parsed.fragment or text.endswith(("?", "#")):
        raise ValueError(
            "the URL must not have a query string or fragment: remove '?...' (credentials go in "
            "--username and --password-file, the target in --database and --table)"
        )
    return text


def parse_mode(value: Any) -> int:
    """A file mode from 0o660, 432, or "0660"."""
    if isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        try:
            mode = int(str(value), 8)
        except ValueError:
            raise ValueError(f"{value!r} is not an octal file mode like 0660") from None
    if not 0 <= mode <= 0o777:
        raise ValueError(f"{value!r} is not a file mode")
    return mode


_LISTEN = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.-]+)):(?P<port>\d{1,5})$")


def split_listen(value: str) -> tuple[str, int]:
    """``"127.0.0.1:9479"`` -> ("127.0.0.1", 9479); ``"[::1]:9479"`` -> ("::1", 9479). ValueError if malformed."""
    match = _LISTEN.match(value.strip())
    port = int(match.group("port")) if match else -1
    if not match or port > 65535:
        raise ValueError(
            f"{value!r} is not host:port (examples: 127.0.0.1:9479, [::1]:9479, 0.0.0.0:9479; "
            'port 0 = any free port; "" turns the endpoint off)'
        )
    return match.group("v6") or match.group("host"), port


def parse_listen(value: Any) -> str:
    """A listen address "host:port" (IPv6 as "[::1]:port"), or "" for none."""
    text = parse_str(value).strip()
    if text:
        split_listen(text)
    return text


# ---------------------------------------------------------------------------- the settings table
@dataclass(frozen=True)
class Setting:
    key: str  # dotted TOML key: "wal.fsync" is [wal] fsync = ...
    default: Any
    parse: Callable[[Any], Any]
    help: str
    env: str = ""  # full env var name; "" = derived from the key
    flag: str = ""  # long option; "" = derived from the key
    live: bool = False  # can change on SIGHUP without a restart

    @property
    def env_name(self) -> str:
        return self.env or ENV_PREFIX + self.key.replace(".", "_").upper()

    @property
    def flag_name(self) -> str:
        return self.flag or "--" + self.key.split(".", 1)[-1].replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "socket.path",
        "/run/automagik-telemetry/agent.sock",
        parse_str,
        "Unix socket (SOCK_SEQPACKET) the clients send to.",
        env="AUTOMAGIK_TELEMETRY_SOCKET",
        flag="--socket",
    ),
    Setting("socket.mode", 0o660, parse_mode, "File mode of the socket the agent creates.", flag="--socket-mode"),
    Setting(
        "socket.max_connections",
        1024,
        parse_int(1),
        "Concurrent client connections; more are refused and counted.",
        flag="--max-connections",
    ),
    Setting(
        "socket.control_path",
        "",
        parse_str,
        "Control socket of the running agent (SOCK_STREAM, mode 0600) "
        'that `automagik-telemetry status` asks; "" = control.sock in the directory of socket.path.',
        flag="--control-socket",
    ),
    Setting(
        "wal.dir",
        "/var/lib/automagik-telemetry/wal",
        parse_str,
        "Write-ahead log directory.",
        env="AUTOMAGIK_TELEMETRY_WAL_DIR",
        flag="--wal-dir",
    ),
    Setting(
        "wal.fsync",
        "interval",
        parse_choice("always", "interval", "off"),
        "always: fsync before every acknowledgement; interval: group commit; off: never fsync "
        "(a power loss loses what the OS had not written).",
        env="AUTOMAGIK_TELEMETRY_FSYNC",
        flag="--fsync",
    ),
    Setting(
        "wal.fsync_interval_ms",
        50,
        parse_int(1),
        "Group commit: fsync at most this long after a write.",
        env="AUTOMAGIK_TELEMETRY_FSYNC_INTERVAL_MS",
        flag="--fsync-interval-ms",
    ),
    Setting(
        "wal.fsync_bytes",
        1024 * 1024,
        parse_size,
        "Group commit: fsync once this many bytes are unsynced.",
        env="AUTOMAGIK_TELEMETRY_FSYNC_BYTES",
        flag="--fsync-bytes",
    ),
    Setting(
        "wal.segment_size",
        64 * 1024 * 1024,
        parse_size,
        "Rotate to a new segment file at this size.",
        env="AUTOMAGIK_TELEMETRY_WAL_SEGMENT_SIZE",
        flag="--segment-size",
    ),
    Setting(
        "wal.max_size",
        4 * 1024**3,
        parse_size,
        "Cap on the WAL's total size (0 = none); the disk policy applies above it.",
        env="AUTOMAGIK_TELEMETRY_WAL_MAX_SIZE",
        flag="--wal-max-size",
    ),
    Setting(
        "wal.min_free",
        256 * 1024 * 1024,
        parse_size,
        "Keep at least this much disk free (0 = no watermark); the disk policy applies below it.",
        env="AUTOMAGIK_TELEMETRY_WAL_MIN_FREE",
        flag="--wal-min-free",
    ),
    Setting(
        "wal.disk_policy",
        "drop_oldest",
        parse_choice("drop_oldest", "reject_new"),
        "When over the cap or under the watermark: drop the oldest unshipped segment (counted), or "
        "refuse new records (clients count the rejections).",
        env="AUTOMAGIK_TELEMETRY_WAL_DISK_POLICY",
        flag="--disk-policy",
    ),
    Setting(
        "metrics.listen",
        "127.0.0.1:9479",
        parse_listen,
        "host:port of the Prometheus endpoint (/metrics; "
        'docs/metrics.md): loopback by default, IPv6 as [::1]:9479, port 0 = any free port, "" = off.',
        env="AUTOMAGIK_TELEMETRY_METRICS_LISTEN",
        flag="--metrics-listen",
    ),
    Setting(
        "log.level",
        "info",
        parse_choice("debug", "info", "warning", "error"),
        "Log level.",
        env="AUTOMAGIK_TELEMETRY_LOG_LEVEL",
        flag="--log-level",
        live=True,
    ),
    # ---- the supervisor (`automagik-telemetry agent`; docs/operations.md)
    Setting(
        "agent.stop_timeout",
        10.0,
        parse_duration,
        "On SIGTERM/SIGINT: how long the shipper may take to "
        "finish its in-flight batch before abandoning it (it stays in the WAL); a child still running 2 s "
        "later is killed.",
        flag="--stop-timeout",
    ),
    Setting(
        "agent.heartbeat_timeout",
        30.0,
        parse_duration,
        "A child whose main loop shows no progress for this "
        "long is killed and restarted (a declared wait, such as an HTTP request within its timeouts or a "
        "retry backoff, counts as progress).",
        flag="--heartbeat-timeout",
    ),
    # ---- shipper: ClickHouse target (the `shipper` and `schema apply` commands)
    Setting(
        "sink",
        "clickhouse",
        parse_choice("clickhouse", "embedded", "none"),
        "Where the agent ships the "
        "WAL: clickhouse (a server over HTTP), embedded (an in-process chDB store in embedded.dir; needs the "
        "'embedded' extra), or none (ingest only; the WAL keeps everything).",
        env="AUTOMAGIK_TELEMETRY_SINK",
        flag="--sink",
    ),
    Setting(
        "embedded.dir",
        "/var/lib/automagik-telemetry/embedded",
        parse_str,
        "Data directory of the embedded ClickHouse store (sink = embedded); --embedded DIR also selects that sink.",
        env="AUTOMAGIK_TELEMETRY_EMBEDDED_DIR",
        flag="--embedded",
    ),
    Setting(
        "clickhouse.endpoint",
        "http://localhost:8123",
        parse_url,
        "ClickHouse HTTP(S) endpoint, without credentials in the URL.",
        flag="--clickhouse-endpoint",
    ),
    Setting(
        "clickhouse.database",
        "telemetry",
        parse_identifier,
        "ClickHouse database of the traces table.",
        flag="--database",
    ),
    Setting("clickhouse.table", "traces", parse_identifier, "ClickHouse table the spans go to.", flag="--table"),
    Setting("clickhouse.username", "default", parse_str, "ClickHouse user (HTTP basic auth).", flag="--username"),
    Setting(
        "clickhouse.password",
        "",
        parse_str,
        "ClickHouse password (prefer --password-file: flags show in ps).",
        flag="--password",
    ),
    Setting(
        "clickhouse.password_file",
        "",
        parse_str,
        "File holding the ClickHouse password (first line); overrides clickhouse.password.",
        flag="--password-file",
    ),
    Setting(
        "clickhouse.ca_bundle",
        "",
        parse_str,
        'CA bundle to verify an https endpoint with ("" = system).',
        flag="--ca-bundle",
    ),
    Setting("clickhouse.verify_tls", True, parse_bool, "Verify the https endpoint's certificate.", flag="--verify-tls"),
    Setting(
        "clickhouse.compression",
        "auto",
        parse_choice("auto", "zstd", "gzip", "none"),
        "Request body compression; auto = zstd on ClickHouse >= 21.1, else gzip (bodies under 1 KiB are sent plain).",
        flag="--compression",
    ),
    Setting("clickhouse.connect_timeout", 5.0, parse_duration, "Connect timeout.", flag="--connect-timeout"),
    Setting(
        "clickhouse.read_timeout",
        60.0,
        parse_duration,
        "Timeout waiting for ClickHouse's answer.",
        flag="--read-timeout",
    ),
    Setting("shipper.batch_size", 20_000, parse_int(1), "Spans per INSERT (at most).", flag="--batch-size", live=True),
    Setting(
        "shipper.batch_bytes",
        8 * 1024 * 1024,
        parse_size,
        "WAL bytes per INSERT (at most).",
        flag="--batch-bytes",
        live=True,
    ),
    Setting(
        "shipper.batch_wait",
        1.0,
        parse_duration,
        "Longest wait to fill a partial batch.",
        flag="--batch-wait",
        live=True,
    ),
    Setting(
        "shipper.max_rows_per_second",
        200_000,
        parse_int(0),
        "Rate limit while catching up after an outage (0 = none).",
        flag="--max-rows-per-second",
        live=True,
    ),
    Setting(
        "shipper.retry_base",
        1.0,
        parse_duration,
        "First retry delay after a transient failure (doubles up to retry_max, full jitter).",
        flag="--retry-base",
    ),
    Setting(
        "shipper.retry_max", 60.0, parse_duration, "Longest retry delay after transient failures.", flag="--retry-max"
    ),
    Setting(
        "shipper.config_retry",
        30.0,
        parse_duration,
        "Retry delay while ClickHouse refuses the configuration (auth, missing table).",
        flag="--config-retry",
    ),
    Setting(
        "shipper.dead_letter_dir",
        "",
        parse_str,
        'Where refused spans are kept ("" = <wal dir>/../dead-letter).',
        flag="--dead-letter-dir",
    ),
)
SETTINGS_BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}


class AgentConfig(Mapping[str, Any]):
    """Validated settings, read as ``config["wal.fsync"]``; ``sources`` says where each came from."""

    def __init__(self, values: dict[str, Any], sources: dict[str, str]) -> None:
        self._values = values
        self.sources = sources

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self):  # type: ignore[no-untyped-def]
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
    import difflib

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


SUN_PATH_MAX = 107  # bytes of an AF_UNIX socket path, without the terminating NUL


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
