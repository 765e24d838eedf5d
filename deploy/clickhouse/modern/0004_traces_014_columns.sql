-- Migration 0004 (modern profile): the columns of automagik-telemetry 0.1.4's traces table that ours lacked,
-- filled from the resource (user.id, session.id, cloud.*) and the span's instrumentation scope, plus the
-- span links (JSON, like events). Rows written before it read ''.
ALTER TABLE {database}.{table} ADD COLUMN IF NOT EXISTS user_id String DEFAULT '' CODEC(ZSTD(1));
ALTER TABLE {database}.{table} ADD COLUMN IF NOT EXISTS session_id String DEFAULT '' CODEC(ZSTD(1));
ALTER TABLE {database}.{table} ADD COLUMN IF NOT EXISTS cloud_provider LowCardinality(String) DEFAULT '' CODEC(ZSTD(1));
ALTER TABLE {database}.{table} ADD COLUMN IF NOT EXISTS cloud_region LowCardinality(String) DEFAULT '' CODEC(ZSTD(1));
ALTER TABLE {database}.{table} ADD COLUMN IF NOT EXISTS cloud_availability_zone LowCardinality(String) DEFAULT '' CODEC(ZSTD(1));
ALTER TABLE {database}.{table} ADD COLUMN IF NOT EXISTS instrumentation_library_name LowCardinality(String) DEFAULT '' CODEC(ZSTD(1));
ALTER TABLE {database}.{table} ADD COLUMN IF NOT EXISTS instrumentation_library_version LowCardinality(String) DEFAULT '' CODEC(ZSTD(1));
ALTER TABLE {database}.{table} ADD COLUMN IF NOT EXISTS links String DEFAULT '[]' CODEC(ZSTD(1))
