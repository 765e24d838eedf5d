-- Migration 0001 (legacy profile, ClickHouse < 22.2, e.g. Debian 12's 18.16): the traces table.
-- Placeholders {database} and {table} are substituted by automagik_telemetry_agent.schema.
-- The TTL placeholder is not used: 18.16 has no table TTL (expire old partitions with DROP PARTITION).
-- No Map, DateTime64, LowCardinality, codecs or skip indexes here: 18.16 lacks them (or hides
-- them behind experimental settings). Rows come from transform (Profile.LEGACY).
CREATE TABLE IF NOT EXISTS {database}.{table}
(
    -- Span start, UTC, whole seconds; timestamp_ns is the exact instant in nanoseconds.
    timestamp        DateTime('UTC'),
    timestamp_ns     UInt64,
    trace_id         String,
    span_id          String,
    parent_span_id   String,
    span_name        String,
    span_kind        String,
    duration_ns      UInt64,
    duration_ms      Float64,
    service_name     String,
    project_name     String,
    project_version  String,
    environment      String,
    hostname         String,
    os_type          String,
    os_version       String,
    runtime_name     String,
    runtime_version  String,
    sdk_version      String,
    status_code      String,
    status_message   String,
    -- Span attributes as parallel arrays sorted by key: attribute_values[indexOf(attribute_keys, 'k')].
    attribute_keys   Array(String),
    attribute_values Array(String),
    resource_keys    Array(String),
    resource_values  Array(String),
    -- JSON array of {"time_unix_nano", "name", "attributes"}.
    events           String
)
ENGINE = MergeTree()
PARTITION BY toDate(timestamp)
ORDER BY (service_name, span_name, timestamp)
SETTINGS index_granularity = 8192;
