"""Leader election between exporter replicas: an advisory lock on a dedicated connection.

The connection is opened with psycopg directly (exporter.db.connect), never taken from a pool:
a pool would recycle it (pre-ping, overflow, dispose) and silently drop the lock with it. How
the lock is held depends on what lies between the exporter and PostgreSQL
(`remediation.leader_election`, docs/finalizer.md "Behind PgBouncer"):

- `session_lock` (auto, connected to PostgreSQL itself): `pg_try_advisory_lock`, held by the
  session until it ends. Re-checked every cycle against pg_locks, so a replica notices a lost
  lock (server restart, network cut, pg_terminate_backend) instead of believing it still leads.
- `transaction_lock` (auto, behind a pooler; or `transaction`): a session lock taken through
  PgBouncer in transaction mode belongs to whichever server connection ran that statement. It
  stays there after the replica is gone (until PgBouncer closes that server connection, up to
  server_lifetime), and any client whose transaction later lands on that server connection
  "holds" it too: two replicas lead, or none can. So the leader takes
  `pg_try_advisory_xact_lock` in a READ ONLY transaction and keeps that transaction open: an
  open transaction keeps its server connection in every pool mode, and the lock ends with the
  transaction, when the replica closes, dies (PgBouncer closes a server connection whose client
  left mid-transaction) or is disconnected. The price: the leader's session shows as
  `idle in transaction` and keeps one server connection of the pool; it has no transaction id
  and no snapshot between statements, so it holds back neither vacuum nor CREATE INDEX
  CONCURRENTLY. Its idle_in_transaction_session_timeout is set to three cycles (at least
  30 s), so a leader that stops checking in loses the lock. A pooler is recognised by the
  backend pid the connection announced at start-up (BackendKeyData; PgBouncer makes up its own)
  not being `pg_backend_pid()`.
- `none`: no election; every replica runs the cycle.

Leadership only keeps the followers from doing useless work. Exactly-once never depends on it:
every action runs in one transaction under per-batch row locks and a guard, so two finalizers
that both act still write each event once (docs/finalizer.md).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import psycopg
from prometheus_client.core import Metric
from psycopg import pq
from sqlalchemy.engine import URL

from exporter import db
from exporter.families import new
from exporter.vocabulary import (
    AUTO_ELECTION,
    LEADER_METHODS,
    NO_ELECTION,
    SESSION_LOCK,
    TRANSACTION_ELECTION,
    TRANSACTION_LOCK,
)

log = logging.getLogger(__name__)

# pg_try_advisory_lock(int4, int4): classid 0x434A4845 ("CJHE"), objid 1 (the finalizer).
# Any other tool using this pair would contend with the finalizer; the docs list it. A session
# lock and a transaction lock on the pair exclude each other, so replicas of either kind (say,
# during an upgrade, or one connected directly and one through PgBouncer) still elect one.
LOCK_KEY = (0x434A4845, 1)

# The lock's transaction stays open between cycles, so its statements use the simple query
# protocol (no parameters: the key is inlined). An extended-protocol portal lives on after its
# statement, until the next one, and keeps its snapshot: the idle transaction would then hold
# back the xmin horizon (vacuum) and CREATE INDEX CONCURRENTLY.
_TAKE_IN_TRANSACTION = (f"SELECT pg_try_advisory_xact_lock({LOCK_KEY[0]}, {LOCK_KEY[1]}),"
                        " pg_backend_pid()")
_HELD = (
    "SELECT pg_backend_pid(), EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory'"
    " AND pid = pg_backend_pid() AND granted"
    " AND classid = %s::oid AND objid = %s::oid AND objsubid = 2)"
)


class LeaderLock:
    def __init__(self, url: URL, connect_timeout: int,
                 application_name: str = "cj-health-exporter-leader",
                 election: str = AUTO_ELECTION, cycle_seconds: float = 60.0) -> None:
        self._url = url
        # How long the lock's transaction may sit idle before PostgreSQL ends it: a few missed
        # cycles (a hung process) hand leadership over; sql/roles.sql's 60 s role default would
        # end it between two cycles of the default 60 s.
        self._idle_limit_ms = int(max(3 * cycle_seconds, 30.0) * 1000)
        self._connect_timeout = connect_timeout
        self._application_name = application_name
        self.election = election
        # How the lock is held: known once connected (auto), fixed otherwise.
        self.method: str | None = {TRANSACTION_ELECTION: TRANSACTION_LOCK,
                                   NO_ELECTION: NO_ELECTION}.get(election)
        self._conn: psycopg.Connection[Any] | None = None
        self._backend: int | None = None  # pg_backend_pid() of the session holding the lock
        self.held = False

    def ensure(self) -> bool:
        """True when this replica leads now; tries to take the lock when it does not."""
        if self.election == NO_ELECTION:
            self.held = True  # no election: every replica acts (exactly-once: row locks)
            return True
        try:
            conn = self._connection()
            if self.held and self._still_held(conn):
                return True
            if self.held:
                log.warning("lost the remediation leader lock; trying to take it again")
            self.held = self._take(conn)
            if self.held:
                log.info("this replica is the remediation leader (%s)", self.method)
            return self.held
        except psycopg.Error as exc:
            log.warning("remediation leader lock unavailable: %s", str(exc).strip()[:200])
            self.held = False  # nothing to release on a connection that just failed
            self.close()
            return False

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self.held = False
            # Autocommit: the session lock must not sit in a transaction, and the transaction
            # lock's BEGIN is ours to send.
            self._conn = db.connect(self._url, self._connect_timeout, self._application_name,
                                    autocommit=True)
            if self.election == AUTO_ELECTION:
                self.method = self._detect(self._conn)
        return self._conn

    def _detect(self, conn: psycopg.Connection[Any]) -> str:
        backend = _one(conn, "SELECT pg_backend_pid()")[0]
        if backend == conn.info.backend_pid:
            return SESSION_LOCK
        if self.method != TRANSACTION_LOCK:
            log.info("remediation.write_dsn reaches PostgreSQL through a pooler (backend pid %s,"
                     " announced %s): the leader holds its lock in an open transaction",
                     backend, conn.info.backend_pid)
        return TRANSACTION_LOCK

    def _take(self, conn: psycopg.Connection[Any]) -> bool:
        if self.method == SESSION_LOCK:
            took, self._backend = _one(
                conn, "SELECT pg_try_advisory_lock(%s::int4, %s::int4), pg_backend_pid()",
                LOCK_KEY)
            return bool(took)
        conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY")
        conn.execute(f"SET LOCAL idle_in_transaction_session_timeout = {self._idle_limit_ms}")
        took, self._backend = _one(conn, _TAKE_IN_TRANSACTION)
        if not took:  # a follower keeps no transaction open, and so no server connection
            conn.execute("ROLLBACK")
        return bool(took)

    def _still_held(self, conn: psycopg.Connection[Any]) -> bool:
        if self.method == SESSION_LOCK:
            backend, held = _one(conn, _HELD, LOCK_KEY)
        else:
            # The open transaction is the lock: it ends with an error or with the connection.
            if conn.info.transaction_status != pq.TransactionStatus.INTRANS:
                conn.execute("ROLLBACK")
                return False
            backend, held = _one(conn, "SELECT pg_backend_pid(), true")
        if backend != self._backend:
            # Impossible on a session of its own or inside a transaction: something multiplexes
            # this connection that the start-up check did not recognise. The session lock, if
            # any, stays on the old backend until that connection closes.
            log.error("the remediation leader connection moved from backend %s to %s: a pooler"
                      " is in between; holding the lock in an open transaction from now on",
                      self._backend, backend)
            self.method = TRANSACTION_LOCK
            return False
        return bool(held)

    def collect(self) -> Iterator[Metric]:
        election = new("cj_health_remediation_leader_election")
        for method in LEADER_METHODS:
            election.add_metric([method], int(method == self.method))
        yield election

    def close(self) -> None:
        """Closing the session releases the lock; another replica takes over next cycle."""
        held, self.held = self.held, False
        if self._conn is not None:
            try:
                # Release now: a closed socket ends the server's session (or, through PgBouncer,
                # its transaction) only when the backend or PgBouncer gets round to it.
                with contextlib.suppress(psycopg.Error):
                    if self._conn.info.transaction_status == pq.TransactionStatus.INTRANS:
                        self._conn.execute("ROLLBACK")
                    elif held and self.method == SESSION_LOCK:
                        self._conn.execute("SELECT pg_advisory_unlock(%s::int4, %s::int4)",
                                           LOCK_KEY)
                self._conn.close()
            finally:
                self._conn = None


def _one(conn: psycopg.Connection[Any], sql: str,
         params: tuple[int, int] | None = None) -> tuple[Any, ...]:
    row = conn.execute(sql, params).fetchone()
    assert row is not None  # a SELECT without FROM returns one row
    return tuple(row)
