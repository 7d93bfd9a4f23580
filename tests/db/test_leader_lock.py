"""The finalizer's leader lock in each of its ways (exporter/finalizer/leader.py), on a real
PostgreSQL reached directly; tests/process/test_pgbouncer.py runs them through PgBouncer.

The transaction lock keeps a READ ONLY transaction open on the leader's session for as long as
it leads: these tests hold it to what docs/finalizer.md promises for that session (no
transaction id, no snapshot, so neither vacuum nor CREATE INDEX CONCURRENTLY waits for it).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, create_engine, text

from exporter import config, db
from exporter.finalizer.leader import LOCK_KEY, LeaderLock
from tests.support.exposition import sample_value

LOCKS = text("SELECT l.pid, a.state, a.backend_xid IS NULL AS no_xid,"
             " a.backend_xmin IS NULL AS no_xmin FROM pg_locks AS l"
             " JOIN pg_stat_activity AS a USING (pid) WHERE l.locktype = 'advisory'"
             " AND l.granted AND l.classid = :c AND l.objid = :o AND l.objsubid = 2")


@pytest.fixture
def admin(cj_db: str) -> Iterator[Engine]:
    engine = create_engine(cj_db)
    yield engine
    engine.dispose()


def holders(admin: Engine) -> list[tuple[int, str, bool, bool]]:
    with admin.connect() as conn:
        rows = conn.execute(LOCKS, {"c": LOCK_KEY[0], "o": LOCK_KEY[1]}).all()
    return [(int(r[0]), str(r[1]), bool(r[2]), bool(r[3])) for r in rows]


def exposition(lock: LeaderLock) -> str:
    """The lock's families as /metrics renders them."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Families(lock))
    return generate_latest(registry).decode()


class Families(Collector):
    def __init__(self, lock: LeaderLock) -> None:
        self.lock = lock

    def collect(self) -> Iterator[Metric]:
        return self.lock.collect()


def test_directly_connected_auto_uses_the_session_lock(cj_db: str, admin: Engine) -> None:
    url = config.parse_dsn(cj_db)
    lock = LeaderLock(url, 5)
    try:
        assert lock.ensure() and lock.method == "session_lock"
        assert sample_value(exposition(lock), "cj_health_remediation_leader_election",
                      method="session_lock") == 1
        [(_, state, _, _)] = holders(admin)
        assert state == "idle"  # a session lock needs no open transaction
    finally:
        lock.close()
    assert holders(admin) == []


def test_the_transaction_lock_holds_no_snapshot_and_blocks_no_index_build(
        cj_db: str, admin: Engine) -> None:
    url = config.parse_dsn(cj_db)
    # As sql/roles.sql does for the remediation role (60 s there): the lock's transaction sets
    # its own limit (three cycles, at least 30 s) and outlives this one.
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"ALTER DATABASE {url.database}"
                          " SET idle_in_transaction_session_timeout = '1s'"))
    first = LeaderLock(url, 5, application_name="cjh-test-leader-1", election="transaction",
                       cycle_seconds=0.5)
    second = LeaderLock(url, 5, application_name="cjh-test-leader-2", election="transaction",
                        cycle_seconds=0.5)
    try:
        assert first.ensure() and not second.ensure()
        time.sleep(1.5)
        assert first.ensure(), "the leader's transaction outlives the database's 1 s limit"
        [(pid, state, no_xid, no_xmin)] = holders(admin)
        assert (state, no_xid, no_xmin) == ("idle in transaction", True, True)
        # A follower keeps no transaction (and so, behind PgBouncer, no server connection).
        with admin.connect() as conn:
            states: dict[str, str] = dict(conn.execute(text(
                "SELECT application_name, state FROM pg_stat_activity"
                " WHERE application_name LIKE 'cjh-test-leader-%'")).all())
        assert states == {"cjh-test-leader-1": "idle in transaction",
                          "cjh-test-leader-2": "idle"}
        started = time.monotonic()
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("SET statement_timeout = '10s'"))
            conn.execute(text("CREATE INDEX CONCURRENTLY cjh_test_idx"
                              " ON cj_batch_states (last_activity_at)"))
            valid = conn.execute(text("SELECT indisvalid FROM pg_index WHERE indexrelid ="
                                      " 'cjh_test_idx'::regclass")).scalar_one()
        assert valid and time.monotonic() - started < 5
        # Ended from outside (pg_terminate_backend, idle_in_transaction_session_timeout).
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        time.sleep(0.2)
        assert second.ensure() and not first.ensure()
        # Closing the leader hands over at once.
        second.close()
        assert first.ensure()
    finally:
        first.close()
        second.close()
    assert holders(admin) == []


def test_no_election_means_every_replica_acts_and_no_lock(cj_db: str, admin: Engine) -> None:
    url = config.parse_dsn(cj_db)
    locks = [LeaderLock(url, 5, election="none") for _ in range(2)]
    assert all(lock.ensure() for lock in locks)
    assert holders(admin) == []
    assert sample_value(exposition(locks[0]), "cj_health_remediation_leader_election",
                  method="none") == 1


def test_every_connection_path_disables_automatic_prepared_statements(cj_db: str) -> None:
    url = config.parse_dsn(cj_db)
    engine = db.make_engine(url, 5)
    try:
        with engine.connect() as conn:
            assert conn.connection.dbapi_connection.prepare_threshold is None  # type: ignore
    finally:
        engine.dispose()
    with db.connect(url, 5, "cjh-test") as raw:
        assert raw.prepare_threshold is None
    lock = LeaderLock(url, 5)
    try:
        assert lock.ensure()
        assert lock._conn is not None and lock._conn.prepare_threshold is None
    finally:
        lock.close()
