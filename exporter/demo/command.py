"""`demo`: the exporter on a throwaway embedded Postgres seeded with every production failure.

Nothing to set up: pgserver brings PostgreSQL, the reference CJ schema and the views are loaded,
`scenarios.seed_demo` plants healthy, in-flight and broken batches, and the exporter serves them
until Ctrl-C, after which the database is deleted. With `--remediation` the finalizer is on (not
a dry run, both actions, a short min_wedged_seconds): its first cycle heals the wedged batch
planted like Batch 20 and the batch stuck in SCORING, which the next poll shows healthy.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import socket
import sys

from sqlalchemy import text

from exporter import PROG, config, db, service, sqlfiles
from exporter.config import RemediationSettings, Settings
from exporter.demo import scenarios
from exporter.demo.embedded import EmbeddedPostgres, runtime_dir_env
from exporter.errors import OperatorError
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


def _check_port(host: str, port: int, address: str) -> None:
    """Fail before the seconds of starting and seeding PostgreSQL, not after them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise OperatorError(f"cannot listen on {address}: {exc.strerror}") from None


def self_command() -> str:
    """How to run this program again from a shell: the path it was started by (a venv's bin/
    need not be on PATH), or `python -m exporter`."""
    if os.path.basename(sys.argv[0]) == PROG:
        return shlex.quote(os.path.abspath(sys.argv[0]))
    return f"{shlex.quote(sys.executable)} -m exporter"


def run(settings: Settings, remediation: bool = False) -> int:
    """The `demo` command: `settings` holds the listen address, poll interval and logging."""
    host, port = config.parse_listen_address(settings.listen_address)
    _check_port(host, port, settings.listen_address)
    runtime_dir_env()
    pg = EmbeddedPostgres()
    try:
        planted = prepare(pg, remediation)
        print(summary(planted), flush=True)
        dsn = pg.url(DATABASE).render_as_string(hide_password=False)
        settings = dataclasses.replace(settings, dsn=dsn)
        if remediation:
            settings = dataclasses.replace(
                settings, remediation=demo_remediation(dsn, settings.poll_interval_seconds))
        engine = db.make_engine(pg.url(DATABASE), settings.connect_timeout_seconds)
        me = self_command()
        banner = (f"{PROG} demo: metrics at {{url}}\n"
                  "landing page /, liveness /healthz, readiness /-/ready on the same port\n"
                  f"inspect a batch (problems explained): {me} inspect ID --dsn "
                  f"{shlex.quote(settings.dsn or '')}\n"
                  + ("" if remediation else
                     f"to watch the finalizer heal the wedged batches: {me} demo --remediation\n")
                  + "Ctrl-C stops the demo and deletes its database.")
        return service.run(settings, engine, host, port, banner=banner)
    finally:
        pg.close()
