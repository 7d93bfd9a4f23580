"""Database access: one small pool per DSN, read-only snapshots with server-side timeouts."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

APPLICATION_NAME = "cj-health-exporter"
log = logging.getLogger(__name__)


def driver_options(connect_timeout: int, application_name: str) -> dict[str, Any]:
    """psycopg options of every connection this project opens (make_engine, connect).

    tests/unit/test_connections.py fails when code outside this module opens a connection, so
    a new connection path cannot forget one of these.
    """
    return {
        "connect_timeout": connect_timeout,
        "application_name": application_name,
        # No automatic prepared statements. Behind PgBouncer in transaction (or statement)
        # mode the next transaction of a client may run on any server connection of the pool,
        # and psycopg's `_pg3_N` names are numbered per client connection: two clients' (or a
        # neighbour application's) statements of one name collide ("already exists", "does not
        # exist", or a Bind of 2 parameters to someone else's 10). Unnamed statements work
        # through every pooler (docs/security.md, "Behind PgBouncer").
        "prepare_threshold": None,
        # statement_timeout only helps while the server can answer: if the network
        # black-holes the connection, keepalives and tcp_user_timeout end the wait.
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "tcp_user_timeout": 30_000,
    }


def conninfo(url: URL) -> str:
    """libpq URI for psycopg.connect from the SQLAlchemy URL (keeps ?host=/socket/dir)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def connect(url: URL, connect_timeout: int, application_name: str,
            **options: Any) -> psycopg.Connection[Any]:
    """A psycopg connection of its own, outside any pool (the finalizer's leader lock)."""
    return psycopg.connect(conninfo(url), **driver_options(connect_timeout, application_name),
                           **options)


def make_engine(url: URL, connect_timeout: int, application_name: str = APPLICATION_NAME,
                pool_size: int = 1) -> Engine:
    """A pool of one: polls run one at a time. pre_ping replaces connections a DB restart
    killed, so the first poll after an outage succeeds instead of failing once more."""
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        pool_pre_ping=True,
        pool_timeout=connect_timeout,
        connect_args=driver_options(connect_timeout, application_name),
    )
    event.listen(engine, "checkin", _role_default_transaction_mode)
    return engine


def _role_default_transaction_mode(dbapi_conn: Any, record: Any) -> None:
    """Give a returned connection back its role's default transaction mode.

    After a poll (postgresql_readonly=True) SQLAlchemy resets the connection to read_only=False,
    and psycopg then starts every later transaction with an explicit READ WRITE, which overrides
    the polling role's `default_transaction_read_only = on` (sql/roles.sql). None sends a bare
    BEGIN again, so the role's setting applies to anything else run on this engine.

    Both are attributes of the psycopg connection (they only change the BEGIN it sends), not
    server session state, so they hold behind a transaction-mode pooler too.
    """
    if dbapi_conn is None or getattr(dbapi_conn, "closed", True):
        return
    # psycopg refuses unless idle (a broken connection): the pool discards that one anyway.
    with contextlib.suppress(psycopg.Error):
        dbapi_conn.read_only = None


@contextmanager
def read_only_snapshot(engine: Engine, statement_timeout: float,
                       lock_timeout: float) -> Iterator[Connection]:
    """A REPEATABLE READ, READ ONLY transaction: every statement sees the same snapshot.

    The timeouts are set server-side with SET LOCAL semantics (set_config(..., true)): a
    client-side timeout would leave the query running in Postgres after we gave up on it. Being
    transaction-local they also hold behind a transaction-mode pooler, and never leak onto the
    pooled server connection the next client gets (a session SET would).
    """
    options = {"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
    with engine.connect().execution_options(**options) as conn, conn.begin():
        conn.execute(
            text("SELECT set_config('statement_timeout', :st, true),"
                 " set_config('lock_timeout', :lt, true)"),
            {"st": f"{int(statement_timeout * 1000)}ms", "lt": f"{int(lock_timeout * 1000)}ms"},
        )
        yield conn


def error_reason(exc: BaseException) -> str:
    """Classify a failed poll for cj_health_poll_errors_total{reason}."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    if isinstance(orig, psycopg.errors.QueryCanceled | psycopg.errors.LockNotAvailable):
        return "timeout"
    if isinstance(orig, psycopg.OperationalError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    ):
        return "connection"
    if isinstance(orig, psycopg.Error):
        return "query"
    return "data"


def describe_error(exc: BaseException) -> str:
    """One line for logs: the driver's first line, never the DSN (it may hold a password)."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    first = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    return f"{type(orig).__name__}: {first}"


class InFlight:
    """The DBAPI connections an engine has checked out, so a shutdown can cancel their queries.

    Closing a socket does not stop a query in Postgres, and waiting for statement_timeout would
    make SIGTERM take up to that long: a cancel request (PQcancel, on a connection of its own)
    makes the server abort the statement at once, and the poll thread returns.
    """

    def __init__(self, engine: Engine) -> None:
        self._lock = threading.Lock()
        self._conns: dict[int, Any] = {}  # keyed by pool record: invalidation clears the conn
        event.listen(engine, "checkout", self._checkout)
        event.listen(engine, "checkin", self._checkin)

    def _checkout(self, dbapi_conn: Any, record: Any, proxy: Any) -> None:
        with self._lock:
            self._conns[id(record)] = dbapi_conn

    def _checkin(self, dbapi_conn: Any, record: Any) -> None:
        with self._lock:
            self._conns.pop(id(record), None)

    def cancel_all(self, timeout: float = 2.0) -> int:
        """Ask the server to cancel whatever the checked-out connections run; returns how many."""
        with self._lock:
            conns = list(self._conns.values())
        for conn in conns:
            try:
                if hasattr(conn, "cancel_safe"):  # psycopg >= 3.2: bounded, non-blocking
                    conn.cancel_safe(timeout=timeout)
                else:
                    conn.cancel()
            except Exception as exc:  # a broken connection has nothing left to cancel
                log.debug("cancel failed: %s", describe_error(exc))
        return len(conns)


def check_connection(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
