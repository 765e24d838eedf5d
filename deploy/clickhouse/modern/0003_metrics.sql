-- Migration 0003 (modern profile, ClickHouse >= 22.2): the metrics table, one row per data point.
-- Placeholders (database, metrics_table, ttl_days in braces) are substituted by clickhouse/schema.py;
-- the TTL line is dropped when ttl_days is 0. Rows come from clickhouse/metric_rows.py (Profile.MODERN).
CREATE TABLE IF NOT EXISTS {database}.{metrics_table}
(
    timestamp                 DateTime64(9, 'UTC') CODEC(Delta, ZSTD(1)),
    timestamp_ns              UInt64 CODEC(Delta, ZSTD(1)),
    start_timestamp_ns        UInt64 CODEC(Delta, ZSTD(1)),
    metric_name               LowCardinality(String) CODEC(ZSTD(1)),
    -- GAUGE, SUM or HISTOGRAM.
    metric_type               LowCardinality(String) CODEC(ZSTD(1)),
    metric_unit               LowCardinality(String) CODEC(ZSTD(1)),
    metric_description        String CODEC(ZSTD(1)),
    is_monotonic              UInt8 CODEC(ZSTD(1)),
    -- CUMULATIVE, DELTA or UNSPECIFIED.
    aggregation_temporality   LowCardinality(String) CODEC(ZSTD(1)),
    -- A gauge's or sum's value: always in value_double, also in value_int for integer (asInt) points.
    value_int                 Int64 CODEC(ZSTD(1)),
    value_double              Float64 CODEC(ZSTD(1)),
    histogram_count           UInt64 CODEC(ZSTD(1)),
    histogram_sum             Float64 CODEC(ZSTD(1)),
    histogram_min             Float64 CODEC(ZSTD(1)),
    histogram_max             Float64 CODEC(ZSTD(1)),
    histogram_bucket_counts   Array(UInt64) CODEC(ZSTD(1)),
    histogram_explicit_bounds Array(Float64) CODEC(ZSTD(1)),
    service_name              LowCardinality(String) CODEC(ZSTD(1)),
    project_name              LowCardinality(String) CODEC(ZSTD(1)),
    project_version           LowCardinality(String) CODEC(ZSTD(1)),
    environment               LowCardinality(String) CODEC(ZSTD(1)),
    hostname                  LowCardinality(String) CODEC(ZSTD(1)),
    os_type                   LowCardinality(String) CODEC(ZSTD(1)),
    os_version                LowCardinality(String) CODEC(ZSTD(1)),
    runtime_name              LowCardinality(String) CODEC(ZSTD(1)),
    runtime_version           LowCardinality(String) CODEC(ZSTD(1)),
    sdk_version               LowCardinality(String) CODEC(ZSTD(1)),
    scope_name                LowCardinality(String) CODEC(ZSTD(1)),
    scope_version             LowCardinality(String) CODEC(ZSTD(1)),
    attributes                Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    resource_attributes       Map(LowCardinality(String), String) CODEC(ZSTD(1))
)
ENGINE = MergeTree
PARTITION BY toDate(timestamp)
ORDER BY (service_name, metric_name, toDateTime(timestamp))
TTL toDateTime(timestamp) + INTERVAL {ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 1000, index_granularity = 8192;
