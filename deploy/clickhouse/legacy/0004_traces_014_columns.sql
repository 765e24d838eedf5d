-- Migration 0004 (legacy profile): the columns of automagik-telemetry 0.1.4's traces table that ours lacked,
-- filled from the resource (user.id, session.id, cloud.*) and the span's instrumentation scope, plus the
-- span links (JSON, like events). 18.16 has no ADD COLUMN IF NOT EXISTS: schema.py skips a column the
-- table already has, so a run interrupted halfway is redone safely. Rows written before it read ''.
ALTER TABLE {database}.{table} ADD COLUMN user_id String DEFAULT '';
ALTER TABLE {database}.{table} ADD COLUMN session_id String DEFAULT '';
ALTER TABLE {database}.{table} ADD COLUMN cloud_provider String DEFAULT '';
ALTER TABLE {database}.{table} ADD COLUMN cloud_region String DEFAULT '';
ALTER TABLE {database}.{table} ADD COLUMN cloud_availability_zone String DEFAULT '';
ALTER TABLE {database}.{table} ADD COLUMN instrumentation_library_name String DEFAULT '';
ALTER TABLE {database}.{table} ADD COLUMN instrumentation_library_version String DEFAULT '';
ALTER TABLE {database}.{table} ADD COLUMN links String DEFAULT '[]'
