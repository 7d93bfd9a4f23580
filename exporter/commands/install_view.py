"""`install-view`: create or replace the functions and views (idempotent, keeps grants), drop
indexes earlier versions installed that must not stay, the recommended indexes (CONCURRENTLY,
never leaving an INVALID one behind), and with --remediation the finalizer's audit and pause
tables."""

from __future__ import annotations

import psycopg
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
        print("functions cj_health_json and cj_health_json_parses installed")
        *views, last = sqlfiles.VIEWS
        print(f"views {', '.join(views)} and {last} installed")
        if remediation or settings.remediation.enabled:
            from exporter.finalizer import audit  # light: no numpy (finalizer/__init__.py)

            with engine.begin() as conn:
                audit.install(conn)
            print("tables cj_health_remediations and cj_health_remediation_pause installed")
        # Always, --indexes or not: an obsolete index can make the CJ service's writes fail.
        lines = sqlfiles.install_indexes(engine) if indexes else \
            sqlfiles.drop_obsolete_indexes(engine)
        for line in lines:
            print(line)
        if not indexes:
            with engine.connect() as conn:
                for name in sqlfiles.invalid_indexes(conn):
                    print(f"index {name} is INVALID (an interrupted CREATE INDEX CONCURRENTLY):"
                          " run install-view without --no-indexes to rebuild it")
    except sqlfiles.IndexBuildFailed as exc:
        raise OperatorError(f"install-view failed: {exc}") from None
    except (DBAPIError, psycopg.Error) as exc:  # scripts run on the driver's own cursor
        raise OperatorError(f"install-view failed: {_explain(exc)}") from None
    finally:
        engine.dispose()
    return 0


def _explain(exc: BaseException) -> str:
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    if isinstance(orig, psycopg.errors.ReadOnlySqlTransaction
                  | psycopg.errors.InsufficientPrivilege):
        return (f"{db.describe_error(exc)}: run install-view as a role that may create views "
                "and indexes on the CJ tables (their owner), not as cj_health_ro")
    return db.describe_error(exc)
