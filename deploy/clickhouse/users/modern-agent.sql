-- The agent's ClickHouse user on servers with SQL user management (>= 20.4; the modern schema
-- profile needs >= 22.2 anyway). Run as a user with access_management, after or before
-- `automagik-telemetry schema apply` (grants are by name):
--   render.sh modern-agent.sql automagik_agent < agent-password | clickhouse-client --multiquery
-- It may: INSERT and SELECT the traces, logs and metrics tables (the shipper's INSERTs and its restart probe
-- `SELECT count() ... WHERE span_id IN (...)`), SELECT schema_migrations (`automagik-telemetry doctor`
-- reports the schema version). `SELECT version()` and system.columns, which detection reads, need no
-- grant: system.columns shows the columns of tables the user holds any grant on.
-- It may not: DROP, ALTER, TRUNCATE or CREATE anything, or read any other table.
CREATE USER IF NOT EXISTS {user} IDENTIFIED WITH sha256_hash BY '{password_sha256}';
GRANT INSERT, SELECT ON {database}.{table} TO {user};
GRANT INSERT, SELECT ON {database}.{logs_table} TO {user};
GRANT INSERT, SELECT ON {database}.{metrics_table} TO {user};
GRANT SELECT ON {database}.schema_migrations TO {user};
