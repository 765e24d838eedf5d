#!/bin/sh
# Creates the agent's and Grafana's ClickHouse users. The clickhouse-server image runs this once,
# on the first start with an empty data volume (/docker-entrypoint-initdb.d), as CLICKHOUSE_USER,
# which compose.yaml gives access management. The templates and render.sh are
# deploy/clickhouse/users/, mounted at /automagik-users.
create_user() {  # TEMPLATE USER PASSWORD
    sql=$(printf '%s\n' "$3" | sh /automagik-users/render.sh "/automagik-users/$1" "$2" telemetry traces logs metrics) || exit 1
    printf '%s\n' "$sql" \
        | clickhouse-client --host 127.0.0.1 --user "$CLICKHOUSE_USER" --password "$CLICKHOUSE_PASSWORD" \
            --multiquery || exit 1
    echo "automagik-telemetry: ClickHouse user $2 ready ($1)"
}
create_user modern-agent.sql automagik_agent "$AGENT_CLICKHOUSE_PASSWORD"
create_user modern-grafana.sql grafana "$GRAFANA_CLICKHOUSE_PASSWORD"
