-- A read-only ClickHouse user for Grafana's traces dashboard (deploy/grafana), modern servers:
--   render.sh modern-grafana.sql grafana < grafana-password | clickhouse-client --multiquery
-- SELECT on the traces, logs and metrics tables only; the dashboards read nothing else.
CREATE USER IF NOT EXISTS {user} IDENTIFIED WITH sha256_hash BY '{password_sha256}';
GRANT SELECT ON {database}.{table} TO {user};
GRANT SELECT ON {database}.{logs_table} TO {user};
GRANT SELECT ON {database}.{metrics_table} TO {user};
