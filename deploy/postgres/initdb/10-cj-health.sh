#!/usr/bin/env bash
# First start of the compose stack's postgres:15 (docker-entrypoint-initdb.d, empty data dir):
# load the reference CJ schema and cj-health-exporter's views and indexes from sql/ (mounted at
# $CJ_SQL_DIR), then create the exporter's read-only login role. The demo batches are planted
# afterwards by the demo-seed service (deploy/demo/seed_demo.py).
#
# The postgres image runs an executable *.sh and *sources* (with bash) one that is not, which is
# how a file mounted from a Kubernetes ConfigMap arrives. Both work: the work happens in a
# subshell function, so `set -eu` and any exit stay inside it and never change the entrypoint's
# own shell, and its status is the script's (the entrypoint stops on a failure either way).
# tests/stack/test_initdb.py runs it both ways, plus `bash -n` and shellcheck.
#
# The reference schema is for the demo only: against a real CJ database, run
# `cj-health-exporter install-view` instead and never load sql/schema/.

cj_health_initdb() (
    set -eu
    sql_dir="${CJ_SQL_DIR:-/cj-sql}"
    reader="${CJ_HEALTH_READER_USER:-cj_health}"
    : "${CJ_HEALTH_READER_PASSWORD:?set CJ_HEALTH_READER_PASSWORD, the password of the exporter role}"

    run_psql() {
        psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --username "$POSTGRES_USER" \
            --dbname "$POSTGRES_DB" "$@"
    }

    # In install-view's order (exporter/sqlfiles.py VIEW_FILES): the views call the functions
    # of cj_health_json.sql, so it comes first; indexes.sql last.
    for file in "$sql_dir"/schema/*.sql "$sql_dir"/views/cj_health_json.sql \
            "$sql_dir"/views/cj_batch_health.sql "$sql_dir"/views/cj_outbox_health.sql \
            "$sql_dir"/views/cj_charge_events.sql "$sql_dir"/views/indexes.sql; do
        echo "cj-health: loading ${file#"$sql_dir"/}"
        # one statement at a time in autocommit: indexes.sql uses CREATE INDEX CONCURRENTLY
        run_psql --file "$file"
    done

    # Read-only: the poll reads the two views plus cj_batch_states, cj_batch_uploads and
    # event_outbox; pg_read_all_data (PostgreSQL 14+) covers them and tables added later.
    run_psql --set reader="$reader" --set password="$CJ_HEALTH_READER_PASSWORD" <<'SQL'
CREATE ROLE :"reader" LOGIN PASSWORD :'password';
GRANT pg_read_all_data TO :"reader";
ALTER ROLE :"reader" SET default_transaction_read_only = on;
SQL
    echo "cj-health: schema, views and role $reader ready"
)

cj_health_initdb
