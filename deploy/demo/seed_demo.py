"""Plant the demo CJ batches into the compose stack's database (the demo-seed service).

Runs in the exporter image once postgres is healthy and the schema is loaded (its init script,
deploy/postgres/initdb/10-cj-health.sh). It writes one batch per production failure with
`exporter.demo.scenarios.seed_demo`, the same scenarios `cj-health-exporter demo` and the tests use,
so the dashboards and alerts light up without clicking anything. Idempotent: a database that
already holds CJ batches is left alone, so `docker compose up` can be re-run.

    CJ_DEMO_DSN=postgresql+psycopg://owner:password@host:5432/db python seed_demo.py
"""

from __future__ import annotations

import os
import sys
import time

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

from exporter.demo import scenarios

CONNECT_WAIT_SECONDS = 60.0


def wait_for(engine: Engine) -> None:
    """Postgres may still be starting (or restarting after its first-start initialization)."""
    deadline = time.monotonic() + CONNECT_WAIT_SECONDS
    while True:
        try:
            with engine.connect():
                return
        except OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def main() -> int:
    dsn = os.environ.get("CJ_DEMO_DSN")
    if not dsn:
        print("seed_demo: set CJ_DEMO_DSN to the database's owner URL", file=sys.stderr)
        return 2
    engine = create_engine(dsn)
    try:
        wait_for(engine)
        with engine.begin() as conn:
            if conn.execute(text("SELECT EXISTS (SELECT 1 FROM cj_batch_uploads)")).scalar():
                print("seed_demo: the database already holds CJ batches; nothing to do")
                return 0
            planted = scenarios.seed_demo(conn)
    finally:
        engine.dispose()
    print(f"seed_demo: planted {len(planted)} CJ batches (cj_batch_id: problems)")
    for batch_id, problems in sorted(planted.items()):
        print(f"  {batch_id:>4}: {', '.join(sorted(problems)) or 'healthy'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
