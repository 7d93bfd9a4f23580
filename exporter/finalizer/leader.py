"""Leader election between exporter replicas: a session advisory lock on a dedicated connection.

The connection is opened with psycopg directly, never taken from a pool: a pool would recycle
it (pre-ping, overflow, dispose) and silently drop the session lock with it. Leadership is
re-checked every cycle against pg_locks, so a replica notices a lost lock (server restart,
network cut, a pooler in between) instead of believing it still leads.

Leadership only keeps the followers from doing useless work. Exactly-once never depends on
it: behind PgBouncer in transaction mode two replicas may both "hold" the lock, and the
per-batch transaction (row locks + guard) still lets only one of them finalize a batch.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from sqlalchemy.engine import URL

log = logging.getLogger(__name__)

# pg_try_advisory_lock(int4, int4): classid 0x434A4845 ("CJHE"), objid 1 (the finalizer).
# Any other tool using this pair would contend with the finalizer; the docs list it.
LOCK_KEY = (0x434A4845, 1)

_HELD = (
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory'"
    " AND pid = pg_backend_pid() AND granted"
    " AND classid = %s::oid AND objid = %s::oid AND objsubid = 2)"
)


def conninfo(url: URL) -> str:
    """libpq URI for psycopg.connect from the SQLAlchemy URL (keeps ?host=/socket/dir)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class LeaderLock:
    def __init__(self, url: URL, connect_timeout: int,
                 application_name: str = "cj-health-exporter-leader") -> None:
        self._conninfo = conninfo(url)
        self._options: dict[str, Any] = {
            "autocommit": True, "connect_timeout": connect_timeout,
            "application_name": application_name,
            # TCP keepalives: a dead peer is noticed in about a minute, not hours.
            "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
            "keepalives_count": 3,
        }
        self._conn: psycopg.Connection[Any] | None = None
        self.held = False

    def ensure(self) -> bool:
        """True when this replica leads now; tries to take the lock when it does not."""
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self._conninfo, **self._options)
                self.held = False
            if self.held and self._still_held(self._conn):
                return True
            if self.held:
                log.warning("lost the remediation leader lock; trying to take it again")
            self.held = bool(self._conn.execute("SELECT pg_try_advisory_lock(%s::int4, %s::int4)",
                                                LOCK_KEY).fetchone()[0])  # type: ignore[index]
            if self.held:
                log.info("this replica is the remediation leader")
            return self.held
        except psycopg.Error as exc:
            log.warning("remediation leader lock unavailable: %s", str(exc).strip()[:200])
            self.close()
            return False

    def _still_held(self, conn: psycopg.Connection[Any]) -> bool:
        row = conn.execute(_HELD, LOCK_KEY).fetchone()
        return bool(row and row[0])

    def close(self) -> None:
        """Closing the session releases the lock; another replica takes over next cycle."""
        self.held = False
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
