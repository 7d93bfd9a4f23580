"""`demo`: the exporter on a throwaway embedded Postgres seeded with every production failure.

Nothing to set up: pgserver brings PostgreSQL, the reference CJ schema and the views are loaded,
`scenarios.seed_demo` plants healthy, in-flight and broken batches, and the exporter serves them
until Ctrl-C, after which the database is deleted.
"""

from __future__ import annotations

import logging

from sqlalchemy import create_engine, text

from exporter import config, db, scenarios, sqlfiles
from exporter.config import Settings
from exporter.embedded import EmbeddedPostgres, runtime_dir_env

DATABASE = "cj_demo"


def prepare(pg: EmbeddedPostgres) -> dict[int, frozenset[str]]:
    """Create the demo database with schema, views, indexes and seeded batches."""
    admin = create_engine(pg.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {DATABASE}"))
        conn.execute(text(f"CREATE DATABASE {DATABASE}"))
    admin.dispose()
    engine = create_engine(pg.url(DATABASE))
    with engine.begin() as conn:
        sqlfiles.load_reference_schema(conn)
        sqlfiles.install_views(conn)
        planted = scenarios.seed_demo(conn)
    sqlfiles.install_indexes(engine)
    engine.dispose()
    return planted


def summary(planted: dict[int, frozenset[str]]) -> str:
    lines = ["planted batches (cj_batch_id: problems):"]
    for batch_id, problems in sorted(planted.items()):
        lines.append(f"  {batch_id:>4}: {', '.join(sorted(problems)) or 'healthy'}")
    return "\n".join(lines)


def run(listen_address: str, poll_interval: float, log_level: str) -> int:
    from exporter.cli import run_service, setup_logging

    host, port = config.parse_listen_address(listen_address)
    setup_logging(log_level)
    logging.getLogger("pgserver").setLevel(logging.WARNING)  # initdb chatter is not for users
    runtime_dir_env()
    pg = EmbeddedPostgres()
    try:
        planted = prepare(pg)
        print(summary(planted), flush=True)
        settings = Settings(dsn=pg.url(DATABASE).render_as_string(hide_password=False),
                            listen_address=listen_address, poll_interval_seconds=poll_interval,
                            log_level=log_level)
        engine = db.make_engine(pg.url(DATABASE), settings.connect_timeout_seconds)
        banner = ("cj-health-exporter demo: metrics at {url}\n"
                  f"inspect a batch: cj-health-exporter inspect ID --dsn '{settings.dsn}'\n"
                  "Ctrl-C stops the demo and deletes its database.")
        return run_service(settings, engine, host, port, banner=banner)
    finally:
        pg.close()
