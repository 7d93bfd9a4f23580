"""`install-view`: create or replace the views (idempotent, keeps grants), the recommended
indexes (CONCURRENTLY), and with --remediation the finalizer's audit and pause tables."""

from __future__ import annotations

import psycopg
from sqlalchemy.exc import DBAPIError

from exporter import db, sqlfiles
from exporter.config import Settings
from exporter.errors import OperatorError
from exporter.service import connect, setup_logging


def run(settings: Settings, *, indexes: bool, remediation: bool) -> int:
    setup_logging(settings.log_level)
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
            for name in sqlfiles.install_indexes(engine):
                print(f"index {name} present")
    except (DBAPIError, psycopg.Error) as exc:  # scripts run on the driver's own cursor
        raise OperatorError(f"install-view failed: {db.describe_error(exc)}") from None
    finally:
        engine.dispose()
    return 0
