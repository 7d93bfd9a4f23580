"""What the tests share (nothing is imported from conftest.py, which only holds fixtures):

- paths       the repository root and ../shared beside it
- database    the PostgreSQL server of the session and the one database factory: database() /
              create_database() fill a database by populate() (schema, views, demo scenarios,
              audit tables); seeded_own_postgres() gives a test a server of its own
- exposition  the one /metrics parser and sample lookup (prometheus_client's parsers)
- process     the one place processes start: run_cli, ExporterProcess (serve, HTTP or HTTPS),
              DemoProcess, Daemon (Prometheus/Alertmanager); free ports and HTTP; the PromQL
              selector walker and the loader of the alerts/dashboards scripts
- rows        cj_batch_health rows as the poll fetches them, for the unit tests
- tiers       what the unit tier may not do (PostgreSQL, processes), applied by
              tests/unit/conftest.py
- hardening   roles, certificates, basic-auth headers, /proc figures for the security tests
- remediation finalizer helpers: wedged batches, event counts, exactly-once checks
- dockerfile  the root Dockerfile as instructions
- k8s         the Helm chart's tooling (rendering, schemas)
- attack      hostile HTTP clients (slowloris, floods) against a real `serve`
- pgbouncer   a real PgBouncer (Debian's package) in front of the test PostgreSQL
- debian_postgres  Debian's PostgreSQL 15 binaries: a second major version
- hostile_json  hostile JSON documents and an oracle of what PostgreSQL can read of them
- race        the CJ service finalizing a batch while the finalizer does
- upstream    the CJ service's own batches (../shared/upstream/fixtures) in a fresh database
- manifest    what ../shared/upstream/fixtures/MANIFEST.md says a correct monitor flags there
- wheel       the built wheel in a fresh virtualenv outside the checkout
- report      figures a test wants in the pytest summary
- clock       a stepped wall clock for a child process (the clockshim on its PYTHONPATH)
"""
