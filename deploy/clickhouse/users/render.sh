#!/bin/sh
# Fill in a user template of this directory and print it (nothing is sent anywhere).
#
#   render.sh TEMPLATE USER [DATABASE [TABLE [LOGS_TABLE METRICS_TABLE]]] < password-file
#
# The password is read from the first line of standard input (never from the command line, where
# `ps` would show it) and only its SHA-256 goes into the output. DATABASE and TABLE default to
# telemetry and traces, LOGS_TABLE and METRICS_TABLE to logs and metrics: the agent's defaults
# (clickhouse.database, clickhouse.table, clickhouse.logs_table, clickhouse.metrics_table).
# Examples (deploy/README.md):
#   render.sh modern-agent.sql automagik_agent < agent-password | clickhouse-client --multiquery
#   render.sh legacy-agent.xml automagik_agent < agent-password \
#       > /etc/clickhouse-server/users.d/automagik-telemetry-agent.xml
if [ $# -lt 2 ] || [ $# -gt 6 ] || [ $# -eq 5 ]; then
    echo "usage: $0 TEMPLATE USER [DATABASE [TABLE [LOGS_TABLE METRICS_TABLE]]] < password-file" >&2
    exit 2
fi
template=$1 user=$2 database=${3:-telemetry} table=${4:-traces} logs_table=${5:-logs} metrics_table=${6:-metrics}
for name in "$user" "$database" "$table" "$logs_table" "$metrics_table"; do
    case $name in
        '' | [0-9]* | *[!A-Za-z0-9_]*)
            echo "$0: '$name' is not a plain identifier ([A-Za-z_][A-Za-z0-9_]*)" >&2
            exit 2 ;;
    esac
done
if [ ! -r "$template" ]; then
    echo "$0: cannot read template $template" >&2
    exit 2
fi
password=
IFS= read -r password || true   # the first line; a missing final newline is fine
if [ -z "$password" ]; then
    echo "$0: no password on standard input (give the password file: $0 ... < password-file)" >&2
    exit 2
fi
hash=$(printf '%s' "$password" | sha256sum | cut -d' ' -f1)
exec sed -e "s/{user}/$user/g" -e "s/{database}/$database/g" -e "s/{table}/$table/g" \
    -e "s/{logs_table}/$logs_table/g" -e "s/{metrics_table}/$metrics_table/g" \
    -e "s/{password_sha256}/$hash/g" "$template"
