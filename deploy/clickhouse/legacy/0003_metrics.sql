-- Migration 0003 (legacy profile, ClickHouse < 22.2, e.g. Debian 12's 18.16): the metrics table.
-- Placeholders {database} and {metrics_table} are substituted by clickhouse/schema.py.
CREATE TABLE IF NOT EXISTS {database}.{metrics_table}
(
    timestamp                 DateTime('UTC'),
    timestamp_ns              UInt64,
    start_timestamp_ns        UInt64,
    metric_name               String,
    metric_type               String,
    metric_unit               String,
    metric_description        String,
    is_monotonic              UInt8,
    aggregation_temporality   String,
    value_int                 Int64,
    value_double              Float64,
    histogram_count           UInt64,
    histogram_sum             Float64,
    histogram_min             Float64,
    histogram_max             Float64,
    histogram_bucket_counts   Array(UInt64),
    histogram_explicit_bounds Array(Float64),
    service_name              String,
    project_name              String,
    project_version           String,
    environment               String,
    hostname                  String,
    os_type                   String,
    os_version                String,
    runtime_name              String,
    runtime_version           String,
    sdk_version               String,
    scope_name                String,
    scope_version             String,
    attribute_keys            Array(String),
    attribute_values          Array(String),
    resource_keys             Array(String),
    resource_values           Array(String)
)
ENGINE = MergeTree()
PARTITION BY toDate(timestamp)
ORDER BY (service_name, metric_name, timestamp)
SETTINGS index_granularity = 8192;
