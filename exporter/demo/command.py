"""`demo`: the exporter on a throwaway embedded Postgres seeded with every production failure.

Nothing to set up: pgserver brings PostgreSQL, the reference CJ schema and the views are loaded,
`scenarios.seed_demo` plants healthy, in-flight and broken batches, and the exporter serves them
until Ctrl-C, after which the database is deleted. With `--remediation` the finalizer is on (not
a dry run, both actions, a short min_wedged_seconds): its first cycle heals the wedged Batch 20
and the batch stuck in SCORING, which the next poll shows healthy.
"""

from __future__ import annotations

import dataclasses
import logging

from sqlalchemy import text

from exporter import config, db, service, sqlfiles
from exporter.config import RemediationSettings, Settings
from exporter.demo import scenarios
from exporter.demo.embedded import EmbeddedPostgres, runtime_dir_env
from exporter.vocabulary import ACTIONS

DATABASE = "cj_demo"
CONNECT_TIMEOUT = 10  # seconds; the embedded server was just started


def prepare(pg: EmbeddedPostgres, remediation: bool = False) -> dict[int, frozenset[str]]:
    """Create the demo database with schema, views, indexes and seeded batches (and the
    finalizer's audit table when remediation is on)."""
    admin = db.make_engine(pg.url(), CONNECT_TIMEOUT)
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {DATABASE}"))
        conn.execute(text(f"CREATE DATABASE {DATABASE}"))
    admin.dispose()
    engine = db.make_engine(pg.url(DATABASE), CONNECT_TIMEOUT)
    with engine.begin() as conn:
        sqlfiles.load_reference_schema(conn)
        sqlfiles.install_views(conn)
        planted = scenarios.seed_demo(conn)
        if remediation:
            from exporter.finalizer import audit

            audit.install(conn)
    sqlfiles.install_indexes(engine)
    engine.dispose()
    return planted


def summary(planted: dict[int, frozenset[str]]) -> str:
    lines = ["planted batches (cj_batch_id: problems):"]
    for batch_id, problems in sorted(planted.items()):
        lines.append(f"  {batch_id:>4}: {', '.join(sorted(problems)) or 'healthy'}")
    return "\n".join(lines)


def demo_remediation(dsn: str, poll_interval: float) -> RemediationSettings:
    """Acting (not a dry run) on both actions; a batch quiet for a minute counts as wedged
    (every planted wedge is far older), and a cycle runs as often as the poll."""
    return RemediationSettings(enabled=True, write_dsn=dsn,
                               actions=ACTIONS, dry_run=False,
                               interval_seconds=poll_interval, min_wedged_seconds=60.0,
                               replica_id="demo")


def run(listen_address: str, poll_interval: float, log_level: str,
        remediation: bool = False) -> int:
    host, port = config.parse_listen_address(listen_address)
    service.setup_logging(log_level)
    logging.getLogger("pgserver").setLevel(logging.WARNING)  # initdb chatter is not for users
    runtime_dir_env()
    pg = EmbeddedPostgres()
    try:
        planted = prepare(pg, remediation)
        print(summary(planted), flush=True)
        dsn = pg.url(DATABASE).render_as_string(hide_password=False)
        settings = Settings(dsn=dsn, listen_address=listen_address,
                            poll_interval_seconds=poll_interval, log_level=log_level)
        if remediation:
            settings = dataclasses.replace(
                settings, remediation=demo_remediation(dsn, poll_interval))
        engine = db.make_engine(pg.url(DATABASE), settings.connect_timeout_seconds)
        banner = ("cj-health-exporter demo: metrics at {url}\n"
                  f"inspect a batch: cj-health-exporter inspect ID --dsn '{settings.dsn}'\n"
                  "Ctrl-C stops the demo and deletes its database.")
        return service.run(settings, engine, host, port, banner=banner)
    finally:
        pg.close()
