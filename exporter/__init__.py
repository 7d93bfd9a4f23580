"""cj-health-exporter: Prometheus exporter for the health of CJ assessment batches.

The rooms, and what each holds (docs/design.md tells the whole story):

- cli           parse the command line and dispatch; nothing else
- logs          log lines in logfmt or JSON, passwords scrubbed
- assets        the files the wheel ships for operators (rules, dashboards, roles.sql)
- errors        OperatorError: one line on stderr, exit 2
- yamlfile      reading an operator's YAML file (config, web config) with one-line errors
- config        every setting, declared once (name, type, default, help, env, flag), and loading
- vocabulary    problem kinds, poll error reasons, remediation actions/outcomes, metric families
- service       run `serve`: start whatever the database does, poller, finalizer, HTTP, signals
- db            engines, read-only snapshots with server-side timeouts, error classification
- sqlfiles      the project's SQL (views, indexes, reference schema) and how to install it
- poll/         the poll core: watched (which batches), query (the SQL), snapshot (rows ->
                Snapshot, pure), changes (which batches changed since the last poll),
                ledger (kept rows with running aggregates and export order), incremental
                (full and incremental polls), scheduler (the loop that polls and publishes),
                ticker (jobs on the monotonic clock)
- collector     Snapshot -> metric families -> the bytes of each variant, rendered on demand
- families      metric families built from their declarations
- handoff       Rendered, Page, Store: what a poll publishes and a scrape reads
- web/          the HTTP server and the exporter-toolkit web config (TLS, basic auth, reload)
- commands/     the one-shot commands: inspect, install_view, remediate, healthcheck,
                check_config, assets
- demo/         the zero-setup demo: embedded PostgreSQL, planted scenarios, the command
- upstream/     what the CJ service writes (its outbox events) and its consumers' contracts
- finalizer/    remediation (imported only when asked for; see its own module map)

Dependencies point one way: cli -> service/commands/demo -> poll, web, collector -> vocabulary,
config, errors. Nothing in the core imports the finalizer except behind the remediation switch,
and no module imports cli (tests/unit/test_architecture.py walks the import graph).
"""

import functools
from importlib import metadata

PROG = "cj-health-exporter"


@functools.cache
def version() -> str:
    """The installed distribution's version (`--version`, the landing page, build_info).

    Read once: importlib.metadata opens the dist-info's METADATA file each time, and a render or
    a page that needs a free file descriptor fails whenever clients hold them all."""
    try:
        return metadata.version(PROG)
    except metadata.PackageNotFoundError:
        return "unknown"
