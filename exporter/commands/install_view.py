"""`install-view`: create or replace the views (idempotent, keeps grants), the recommended
indexes (CONCURRENTLY), and with --remediation the finalizer's audit and pause tables."""

from __future__ import annotations

import psycopg
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from exporter import db, sqlfiles
from exporter.config import Settings
from exporter.errors import OperatorError
from exporter.service import connect


def run(settings: Settings, *, indexes: bool, remediation: bool) -> int:
    engine = connect(settings, check_view=False)
    try:
        with engine.begin() as conn:
            sqlfiles.install_views(conn)
        print("views cj_batch_health and cj_outbox_health installed")
        if remediation or settings.remediation.enabled:
            from exporter.finalizer import audit  # light: no numpy (finalizer/__init__.py)

            with engine.begin() as conn:
                audit.install(conn)
            print("tables cj_health_remediations and cj_health_remediation_pause installed")
        if indexes:
            before = _indexes(engine)
            for name in sqlfiles.install_indexes(engine):
                print(f"index {name} {'already present' if name in before else 'created'}")
    except (DBAPIError, psycopg.Error) as exc:  # scripts run on the driver's own cursor
        raise OperatorError(f"install-view failed: {_explain(exc)}") from None
    finally:
        engine.dispose()
    return 0


def _indexes(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(text(
            "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")).scalars())


def _explain(exc: BaseException) -> str:
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    if isinstance(orig, psycopg.errors.ReadOnlySqlTransaction
                  | psycopg.errors.InsufficientPrivilege):
        return (f"{db.describe_error(exc)}: run install-view as a role that may create views "
                "and indexes on the CJ tables (their owner), not as cj_health_ro")
    return db.describe_error(exc)
