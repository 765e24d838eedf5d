-- Migration 0001 (modern profile, ClickHouse >= 22.2): the traces table.
-- Placeholders (database, table, ttl_days in braces) are substituted by automagik_telemetry_agent.schema;
-- the TTL line, the only one using ttl_days, is dropped when ttl_days is 0 (keep data forever).
-- Rows come from automagik_telemetry_agent.transform (Profile.MODERN).
CREATE TABLE IF NOT EXISTS {database}.{table}
(
    -- Span start, UTC, nanosecond precision; timestamp_ns is the same instant as an integer.
    timestamp           DateTime64(9, 'UTC') CODEC(Delta, ZSTD(1)),
    timestamp_ns        UInt64 CODEC(Delta, ZSTD(1)),
    trace_id            String CODEC(ZSTD(1)),
    span_id             String CODEC(ZSTD(1)),
    parent_span_id      String CODEC(ZSTD(1)),
    span_name           LowCardinality(String) CODEC(ZSTD(1)),
    span_kind           LowCardinality(String) CODEC(ZSTD(1)),
    duration_ns         UInt64 CODEC(ZSTD(1)),
    duration_ms         Float64 CODEC(ZSTD(1)),
    service_name        LowCardinality(String) CODEC(ZSTD(1)),
    project_name        LowCardinality(String) CODEC(ZSTD(1)),
    project_version     LowCardinality(String) CODEC(ZSTD(1)),
    environment         LowCardinality(String) CODEC(ZSTD(1)),
    hostname            LowCardinality(String) CODEC(ZSTD(1)),
    os_type             LowCardinality(String) CODEC(ZSTD(1)),
    os_version          LowCardinality(String) CODEC(ZSTD(1)),
    runtime_name        LowCardinality(String) CODEC(ZSTD(1)),
    runtime_version     LowCardinality(String) CODEC(ZSTD(1)),
    sdk_version         LowCardinality(String) CODEC(ZSTD(1)),
    status_code         LowCardinality(String) CODEC(ZSTD(1)),
    status_message      String CODEC(ZSTD(1)),
    attributes          Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    resource_attributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    -- JSON array of {"time_unix_nano", "name", "attributes"}.
    events              String CODEC(ZSTD(1)),
    INDEX idx_trace_id trace_id TYPE bloom_filter(0.001) GRANULARITY 1
)
ENGINE = MergeTree
PARTITION BY toDate(timestamp)
ORDER BY (service_name, span_name, toDateTime(timestamp))
TTL toDateTime(timestamp) + INTERVAL {ttl_days} DAY
-- The shipper sends insert_deduplication_token per WAL batch: a re-sent batch is dropped.
SETTINGS non_replicated_deduplication_window = 1000, index_granularity = 8192;
