"""The settings table: every key with its env var, flag, default, parser and meaning.

``docs/configuration.md`` is generated from this table (scripts/gen_config_docs.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .values import (
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
    parse_urls,
)

ENV_PREFIX = "AUTOMAGIK_TELEMETRY_"


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
        "Group commit: fsync at most this long after a write, and at most once per this interval "
        "(a write after a quiet spell is synced at once).",
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
    # ---- host-wide redaction (ingest, before the WAL; ingest/redact.py)
    Setting(
        "redact.keys",
        "",
        parse_str,
        "Comma-separated words: the value of every attribute whose key contains one (case-insensitively) is "
        'replaced by [REDACTED] before it is written; "default" = 0.1.4\'s sensitive keys (password, token, '
        'api_key ...); "" = none.',
        flag="--redact-keys",
    ),
    Setting(
        "redact.pii",
        False,
        parse_bool,
        "Rewrite e-mail addresses, phone numbers, API keys, card numbers, IPv4 addresses and home paths in "
        "every string value and log body before it is written.",
        flag="--redact-pii",
    ),
    # ---- the OTLP/HTTP receiver (the `otlp` child; docs/otlp.md)
    Setting(
        "otlp.listen",
        "127.0.0.1:4318",
        parse_listen,
        "host:port of the OTLP/HTTP receiver (POST /v1/traces, /v1/logs, /v1/metrics): loopback and the "
        'standard port by default, IPv6 as [::1]:4318, "" = off.',
        env="AUTOMAGIK_TELEMETRY_OTLP_LISTEN",
        flag="--otlp-listen",
    ),
    Setting(
        "otlp.unix_path",
        "",
        parse_str,
        'Also receive OTLP/HTTP on this Unix stream socket path (for containers sharing a volume); "" = no.',
        flag="--otlp-unix-path",
    ),
    Setting(
        "otlp.max_body",
        16 * 1024 * 1024,
        parse_size,
        "Largest request body after decompression; beyond it 413 (a gzip bomb is cut off there).",
        flag="--otlp-max-body",
    ),
    Setting(
        "otlp.max_buffered",
        256 * 1024 * 1024,
        parse_size,
        "Request bodies held by all connections at once; beyond it 503 with Retry-After.",
        flag="--otlp-max-buffered",
    ),
    Setting(
        "otlp.max_connections",
        512,
        parse_int(1),
        "Concurrent OTLP/HTTP connections; one more is answered 503 and closed.",
        flag="--otlp-max-connections",
    ),
    Setting(
        "otlp.idle_timeout",
        120.0,
        parse_duration,
        "Close a keep-alive connection idle this long.",
        flag="--otlp-idle-timeout",
    ),
    Setting(
        "otlp.header_timeout",
        10.0,
        parse_duration,
        "A request's headers must arrive within this time of its first byte (else 408).",
        flag="--otlp-header-timeout",
    ),
    Setting(
        "otlp.body_timeout",
        30.0,
        parse_duration,
        "A request's body must arrive within this time of its headers (else 408).",
        flag="--otlp-body-timeout",
    ),
    Setting(
        "otlp.ack_timeout",
        8.0,
        parse_duration,
        "Longest wait for a request's records to be durable before answering 503 (a retry writes only "
        "what did not become durable); below the SDKs' 10 s export timeout.",
        flag="--otlp-ack-timeout",
    ),
    Setting(
        "otlp.token_file",
        "",
        parse_str,
        'File holding a bearer token every request must carry (Authorization: Bearer ...); "" = none.',
        flag="--otlp-token-file",
    ),
    Setting(
        "otlp.tls_cert", "", parse_str, 'PEM certificate chain: serve HTTPS; "" = plain HTTP.', flag="--otlp-tls-cert"
    ),
    Setting("otlp.tls_key", "", parse_str, "PEM private key of otlp.tls_cert.", flag="--otlp-tls-key"),
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
        parse_urls,
        "ClickHouse HTTP(S) endpoint, without credentials in the URL; several separated by commas (TOML: a list) "
        "are failed over between: the first is preferred, or with clickhouse.cluster one picked by a hash of "
        "the host name, so that a fleet sharing the list spreads over it (docs/scaling.md).",
        flag="--clickhouse-endpoint",
    ),
    Setting(
        "clickhouse.cluster",
        "",
        parse_optional_identifier,
        "ClickHouse cluster (remote_servers) the tables were created on with `schema apply --cluster`: the shipper "
        'inserts into the replicated <table>_local tables, reads go through the Distributed tables ("" = one '
        "server, plain tables).",
        flag="--cluster",
    ),
    Setting(
        "clickhouse.database",
        "telemetry",
        parse_identifier,
        "ClickHouse database of the traces table.",
        flag="--database",
    ),
    Setting("clickhouse.table", "traces", parse_identifier, "ClickHouse table the spans go to.", flag="--table"),
    Setting(
        "clickhouse.logs_table",
        "logs",
        parse_identifier,
        "ClickHouse table the log records go to.",
        flag="--logs-table",
    ),
    Setting(
        "clickhouse.metrics_table",
        "metrics",
        parse_identifier,
        "ClickHouse table the metric data points go to.",
        flag="--metrics-table",
    ),
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
    Setting(
        "clickhouse.async_insert",
        "off",
        parse_choice("off", "on"),
        "on = async_insert=1&wait_for_async_insert=1 (the server gathers many agents' small inserts into one part "
        "and answers once it is stored), only on servers >= 26.3.17.65 where deduplication tokens are safe with "
        "it; off = synchronous inserts, said explicitly to servers >= 21.11 (26.3+ default to async).",
        flag="--async-insert",
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
        "shipper.insert_policy",
        "fleet",
        parse_choice("fleet", "fixed"),
        "fleet = batch_wait adapts to the server (it grows while the server's inserts per second exceed "
        "shipper.target_inserts_per_second, on parts pressure and TOO_MANY_PARTS, up to shipper.batch_wait_max, "
        "and shrinks back); fixed = always batch_wait (docs/scaling.md).",
        flag="--insert-policy",
        live=True,
    ),
    Setting(
        "shipper.target_inserts_per_second",
        10.0,
        parse_float(0.1),
        "The INSERTs per second the fleet policy aims at, per ClickHouse shard (summed over its replicas' "
        "system.events InsertQuery, every agent's together).",
        flag="--target-inserts-per-second",
        live=True,
    ),
    Setting(
        "shipper.batch_wait_max",
        30.0,
        parse_duration,
        "Longest batch_wait the fleet policy may reach (the most latency it adds).",
        flag="--batch-wait-max",
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
        "shipper.probe_interval",
        1.0,
        parse_duration,
        "While backing off after a failure, probe ClickHouse this often with a light query (/ping, or the "
        "replicas' read-only flags after a ZooKeeper error) and retry as soon as it answers (0 = wait every "
        "backoff out). After an error ClickHouse itself answered (TOO_MANY_PARTS, memory, a refused request) "
        "the backoff always runs out.",
        flag="--probe-interval",
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
