#!/usr/bin/env bash
# Installs what the tests need (idempotent, fast when already there) and runs every check:
# ruff, mypy, and the whole pytest suite against real PostgreSQL, PgBouncer, promtool, Prometheus
# and Alertmanager. This is README's test command; .ci/run calls it on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v promtool >/dev/null || missing+=(prometheus)
command -v prometheus-alertmanager >/dev/null || missing+=(prometheus-alertmanager)
command -v openssl >/dev/null || missing+=(openssl)  # TLS tests make their certificates
# PostgreSQL 15 (upstream's version) next to pgserver's 16: the hostile-JSON property test runs
# on both (tests/support/debian_postgres.py); only the binaries are used, no cluster is started.
[ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql-15)
command -v shellcheck >/dev/null || missing+=(shellcheck)  # the initdb script is linted
command -v jq >/dev/null || missing+=(jq)  # the runbooks pipe inspect --json into jq (wheel walk)
command -v curl >/dev/null || missing+=(curl)  # ... and curl the exporter
command -v npm >/dev/null || missing+=(nodejs npm)   # tsc and the schema packages of .ci/node
# tests/process/test_pgbouncer.py (fails, never skips, without it); /usr/sbin is not on every PATH
command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "need root (or: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  # Without policy-rc.d the packages start their daemons, listening on all interfaces.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'

# Pinned npm tools (.ci/node/package-lock.json): @grafana/schema + typescript for the dashboards,
# @kubernetes-models/prometheus-operator for the chart's ServiceMonitor/PodMonitor/PrometheusRule.
# Installed inside the repo (git-ignored), reinstalled only when the lock file changed.
if ! cmp -s .ci/node/package-lock.json .ci/node/node_modules/.installed-lock.json; then
  npm ci --prefix .ci/node --no-audit --no-fund --ignore-scripts --loglevel=error
  cp .ci/node/package-lock.json .ci/node/node_modules/.installed-lock.json
fi

echo "== ruff";   .venv/bin/ruff check .
echo "== mypy";   .venv/bin/mypy exporter tests  # strict (pyproject.toml), tests too
echo "== pytest"
# Paths given: run just those. Otherwise the whole suite as two pytest runs side by side, each
# with its own PostgreSQL and free ports, its output printed when both are done. The process
# tier (real exporter processes) mostly waits on sockets and poll intervals, the rest is mostly
# PostgreSQL's work: one after the other they took 12.9 min on a 2-core machine, side by side
# 10.5 min, bound by the process tier; with its longest file (the wheel walk) run with the rest,
# 9-10 min.
for arg in "$@"; do
  if [[ $arg != -* ]]; then exec .venv/bin/pytest -q "$@"; fi
done
slow=(tests/process/test_wheel_walk.py)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
.venv/bin/pytest -q -p no:cacheprovider "$@" tests/process "${slow[@]/#/--ignore=}" \
  > "$out/process" 2>&1 &
process=$!
.venv/bin/pytest -q -p no:cacheprovider "$@" tests/unit tests/db tests/stack "${slow[@]}" \
  > "$out/rest" 2>&1 &
rest=$!
status=0
wait "$rest" || status=$?
wait "$process" || status=$?
echo "-- tests/unit tests/db tests/stack ${slow[*]}"; cat "$out/rest"
echo "-- tests/process (but ${slow[*]})"; cat "$out/process"
exit "$status"
