"""cj-health-exporter: Prometheus exporter for the health of CJ assessment batches.

The rooms, and what each holds (docs/design.md tells the whole story; every module of each
package is also listed in its package's docstring):

- __main__      `python -m exporter`, the same as the console script
- cli           parse the command line and dispatch; nothing else
- errors        OperatorError: one line on stderr, exit 2
- yamlfile      reading an operator's YAML file (config, web config) with one-line errors
- config        every setting, declared once (name, type, default, help, env, flag), and loading
- vocabulary    problem kinds, poll error reasons, remediation actions/outcomes, metric families
- yamlfile      reading an operator's YAML file (--config, the web config): one-line errors
- logs          log lines in logfmt or JSON, passwords scrubbed
- assets        the files the wheel ships for operators (rules, dashboards, roles.sql), and
                where they are in this install
- service       run `serve`: start whatever the database does, poller, finalizer, HTTP, signals
- db            engines, read-only snapshots with server-side timeouts, error classification
- sqlfiles      the project's SQL (views, indexes, reference schema) and how to install it
- poll/         the poll core:
    watched       which batches a poll (and a remediation cycle) reads at all
    query         the poll's SQL, and one stateless full poll (the reference)
    snapshot      the rows of one poll -> an immutable Snapshot (pure)
    changes       which batches changed since the last poll (timestamps and xmin)
    ledger        the kept rows with their running aggregates and export order
    incremental   full and incremental polls: re-read only the batches whose rows changed
    warnings      rate-limited warnings about what a poll found wrong in the data
    scheduler     the loop that polls and publishes
    ticker        a job every N seconds on the monotonic clock, in a thread of its own
- collector     Snapshot -> metric families -> the bytes of each variant, rendered on demand
- families      metric families built from their declarations
- handoff       Rendered, Page, Store: what a poll publishes and a scrape reads
- web/          the HTTP server and the exporter-toolkit web config: server, http1, routes,
                negotiation, pages, config, tls, auth, gate, reload (see exporter/web/__init__.py)
- commands/     the one-shot commands, one module each: inspect, charges, install_view,
                remediate, healthcheck, check_config, assets
- demo/         the zero-setup demo: embedded (a throwaway PostgreSQL), scenarios (batches
                planted as the CJ service leaves them), command (`demo`)
- upstream/     what the CJ service writes: events (its outbox rows) and contracts (the JSON
                Schemas its consumers hold them to)
- finalizer/    remediation (imported only when asked for; see its own module map)

Dependencies point one way: cli -> service/commands/demo -> poll, web, collector -> vocabulary,
config, errors. Nothing in the core imports the finalizer except behind the remediation switch,
and no module imports cli (tests/unit/test_architecture.py walks the import graph;
tests/unit/test_module_maps.py checks that these maps name every module).
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
