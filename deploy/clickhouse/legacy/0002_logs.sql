-- Migration 0002 (legacy profile, ClickHouse < 22.2, e.g. Debian 12's 18.16): the logs table.
-- Placeholders {database} and {logs_table} are substituted by clickhouse/schema.py. Attributes as parallel
-- arrays sorted by key, whole-second DateTime plus the exact nanoseconds, as in the traces table.
CREATE TABLE IF NOT EXISTS {database}.{logs_table}
(
    timestamp            DateTime('UTC'),
    timestamp_ns         UInt64,
    observed_timestamp_ns UInt64,
    trace_id             String,
    span_id              String,
    severity_text        String,
    severity_number      UInt8,
    body                 String,
    service_name         String,
    project_name         String,
    project_version      String,
    environment          String,
    hostname             String,
    os_type              String,
    os_version           String,
    runtime_name         String,
    runtime_version      String,
    sdk_version          String,
    scope_name           String,
    scope_version        String,
    attribute_keys       Array(String),
    attribute_values     Array(String),
    resource_keys        Array(String),
    resource_values      Array(String),
    is_exception         UInt8,
    exception_type       String,
    exception_message    String,
    exception_stacktrace String,
    source_file          String,
    source_line          UInt32,
    source_function      String
)
ENGINE = MergeTree()
PARTITION BY toDate(timestamp)
ORDER BY (service_name, severity_number, timestamp)
SETTINGS index_granularity = 8192;
