-- Migration 0002 (modern profile, ClickHouse >= 22.2): the logs table.
-- Placeholders (database, logs_table, ttl_days in braces) are substituted by clickhouse/schema.py; the
-- TTL line is dropped when ttl_days is 0. Rows come from clickhouse/log_rows.py (Profile.MODERN).
CREATE TABLE IF NOT EXISTS {database}.{logs_table}
(
    -- When it happened (the record's time, else when it was observed), UTC, nanoseconds.
    timestamp            DateTime64(9, 'UTC') CODEC(Delta, ZSTD(1)),
    timestamp_ns         UInt64 CODEC(Delta, ZSTD(1)),
    observed_timestamp   DateTime64(9, 'UTC') CODEC(Delta, ZSTD(1)),
    trace_id             String CODEC(ZSTD(1)),
    span_id              String CODEC(ZSTD(1)),
    severity_text        LowCardinality(String) CODEC(ZSTD(1)),
    severity_number      UInt8 CODEC(ZSTD(1)),
    -- The body as text: a string as is, any other value as JSON.
    body                 String CODEC(ZSTD(1)),
    service_name         LowCardinality(String) CODEC(ZSTD(1)),
    project_name         LowCardinality(String) CODEC(ZSTD(1)),
    project_version      LowCardinality(String) CODEC(ZSTD(1)),
    environment          LowCardinality(String) CODEC(ZSTD(1)),
    hostname             LowCardinality(String) CODEC(ZSTD(1)),
    os_type              LowCardinality(String) CODEC(ZSTD(1)),
    os_version           LowCardinality(String) CODEC(ZSTD(1)),
    runtime_name         LowCardinality(String) CODEC(ZSTD(1)),
    runtime_version      LowCardinality(String) CODEC(ZSTD(1)),
    sdk_version          LowCardinality(String) CODEC(ZSTD(1)),
    scope_name           LowCardinality(String) CODEC(ZSTD(1)),
    scope_version        LowCardinality(String) CODEC(ZSTD(1)),
    attributes           Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    resource_attributes  Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    -- From the exception.* attributes (OpenTelemetry semantic conventions).
    is_exception         UInt8 CODEC(ZSTD(1)),
    exception_type       LowCardinality(String) CODEC(ZSTD(1)),
    exception_message    String CODEC(ZSTD(1)),
    exception_stacktrace String CODEC(ZSTD(1)),
    -- From the code.* attributes.
    source_file          LowCardinality(String) CODEC(ZSTD(1)),
    source_line          UInt32 CODEC(ZSTD(1)),
    source_function      LowCardinality(String) CODEC(ZSTD(1)),
    INDEX idx_trace_id trace_id TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_body body TYPE tokenbf_v1(32768, 3, 0) GRANULARITY 1
)
ENGINE = MergeTree
PARTITION BY toDate(timestamp)
ORDER BY (service_name, severity_number, toDateTime(timestamp))
TTL toDateTime(timestamp) + INTERVAL {ttl_days} DAY
-- The shipper sends insert_deduplication_token per WAL batch: a re-sent batch is dropped.
SETTINGS non_replicated_deduplication_window = 1000, index_granularity = 8192;
