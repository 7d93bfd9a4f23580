"""The exporter behind a real PgBouncer (Debian `pgbouncer`), in transaction and session mode
(issue 12, item 2; docs/security.md and docs/finalizer.md, "Behind PgBouncer").

Every pool is shared with other clients, as in production: "neighbours" on psycopg's defaults
run short transactions the whole time, and in transaction mode every server connection of each
pool is first left holding `_pg3_0.._pg3_29` prepared statements (what a psycopg application
on its defaults leaves behind). A connection of ours that auto-prepared a statement would then
fail at once with `prepared statement "_pg3_0" already exists`, so these tests fail for any
connection path that forgets `prepare_threshold=None` (before the fix: 14 of 103 polls failed,
up=0 in 7 of 60 scrapes; docs/security.md, "Behind PgBouncer"). The processes run under the roles of
sql/roles.sql, each role with its own PgBouncer pool.

Measured, bounded: 40 polls and their scrapes per mode; `inspect` and `install-view --indexes`
(CREATE INDEX CONCURRENTLY through the pooler) while the poller and the neighbours run; two
remediating replicas with the leader lock held as `remediation.leader_election` says.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from exporter import db as exporter_db
from exporter.demo import scenarios
from exporter.demo.scenarios import BatchSpec, Seeder
from exporter.finalizer.leader import LOCK_KEY
from exporter.vocabulary import POLL_ERROR_REASONS
from tests.support.database import Server, database, url_string
from tests.support.exposition import sample_value
from tests.support.hardening import apply_roles, drop_roles, wait_until
from tests.support.pgbouncer import Neighbours, PgBouncer, conninfo, poison_pool
from tests.support.process import ExporterProcess, run_cli

POOL_SIZE = 4
POLLS = 40
INTERVAL = 0.5  # remediation cycle, seconds
WEDGED = BatchSpec(status="COMPLETE_STABLE", state="WAITING_CALLBACKS",
                   anchor_grades=scenarios.GRADES, anchors_flagged=False,
                   idle=timedelta(hours=2))
EVENTS = ("huleedu.cj_assessment.completed.v1", "assessment.result.published")
ROLES = ("cj_health_operator", "cj_health_ro", "cj_health_remediator")


@dataclass(frozen=True)
class RolesDb:
    admin: URL
    ro: URL
    rw: URL

    def query(self, sql: str, **params: object) -> list[tuple[Any, ...]]:
        engine = create_engine(self.admin)
        try:
            with engine.connect() as conn:
                return [tuple(r) for r in conn.execute(text(sql), params).all()]
        finally:
            engine.dispose()


@pytest.fixture
def roles_db(pg_server: Server) -> Iterator[RolesDb]:
    """The demo scenarios, the audit tables, and the roles of sql/roles.sql."""
    try:
        with database(pg_server, demo=True, remediation=True) as db:
            admin = pg_server.url(db.name)
            result = apply_roles(admin, ro_password="ro-pw", rw_password="rw-pw")
            assert result.returncode == 0, result.stderr
            yield RolesDb(admin, admin.set(username="cj_health_ro", password="ro-pw"),
                          admin.set(username="cj_health_remediator", password="rw-pw"))
    finally:  # after the database (and the grants in it) is gone
        drop_roles(pg_server.url(), *ROLES)


def bouncer(db: RolesDb, mode: str, pool_size: int = POOL_SIZE, **extra: str | int) -> PgBouncer:
    return PgBouncer(db.admin, mode, pool_size=pool_size,
                     users={"cj_health_ro": "ro-pw", "cj_health_remediator": "rw-pw"}, **extra)


def share_pools(stack: ExitStack, pgb: PgBouncer, mode: str, *urls: URL) -> list[Neighbours]:
    """Poison (transaction mode) and load every pool the exporter will use."""
    neighbours = []
    for url in urls:
        if mode == "transaction":
            assert poison_pool(pgb.url(url), POOL_SIZE) == POOL_SIZE
        # In session mode each neighbour holds a server connection for its whole life.
        neighbours.append(stack.enter_context(
            Neighbours(pgb.url(url), 2 if mode == "transaction" else 1)))
    return neighbours


def errors(body: str) -> dict[str, float]:
    return {r: sample_value(body, "cj_health_poll_errors_total", reason=r) or 0.0
            for r in POLL_ERROR_REASONS}


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_poll_inspect_and_install_view_through_pgbouncer(roles_db: RolesDb, mode: str) -> None:
    db = roles_db
    planted = max(b for (b,) in db.query("SELECT id FROM cj_batch_uploads"))
    # The recommended indexes go, so install-view really builds them through the pooler.
    for (index,) in db.query("SELECT c.relname FROM pg_index AS i JOIN pg_class AS c ON"
                             " c.oid = i.indexrelid WHERE c.relname LIKE 'cj\\_health\\_%'"
                             " AND NOT EXISTS (SELECT 1 FROM pg_constraint AS k"
                             " WHERE k.conindid = i.indexrelid)"):
        engine = create_engine(db.admin, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f"DROP INDEX {index}"))
        engine.dispose()
    with ExitStack() as stack:
        pgb = stack.enter_context(bouncer(db, mode))
        neighbours = share_pools(stack, pgb, mode, db.ro, db.admin)
        exp = stack.enter_context(ExporterProcess(url_string(pgb.url(db.ro)), poll_interval=0.2))
        first = sample_value(exp.metrics(), "cj_health_polls_total") or 0
        scrapes = down = 0
        deadline = time.monotonic() + 60
        body = exp.metrics()
        while (sample_value(body, "cj_health_polls_total") or 0) < first + POLLS:
            assert time.monotonic() < deadline, f"fewer than {POLLS} polls in 60 s"
            body = exp.metrics()
            scrapes += 1
            down += sample_value(body, "cj_health_up") != 1
            if scrapes == 5:  # the one-shot commands, while the poller and neighbours run
                # (as the owner: the polling role may not read the outbox inspect shows)
                shown = run_cli("inspect", str(planted), "--dsn", url_string(pgb.url(db.admin)))
                installed = run_cli("install-view", "--dsn", url_string(pgb.url(db.admin)))
            time.sleep(0.1)
        polls = (sample_value(body, "cj_health_polls_total") or 0) - first
        print(f"\nPgBouncer {mode} mode, pool {POOL_SIZE}: {polls:.0f} polls, errors"
              f" {errors(body)}, up=0 in {down} of {scrapes} scrapes; neighbours"
              f" {sum(n.transactions for n in neighbours)} transactions")
        assert errors(body) == dict.fromkeys(POLL_ERROR_REASONS, 0.0), exp.output()[-2000:]
        assert down == 0
        assert shown.returncode == 0 and f"CJ batch {planted}" in shown.stdout, shown.stderr
        assert installed.returncode == 0, installed.stderr
        built = [line.split()[1] for line in installed.stdout.splitlines()
                 if line.startswith("index ")]
        assert built, installed.stdout
        invalid = db.query("SELECT c.relname FROM pg_index AS i JOIN pg_class AS c ON"
                           " c.oid = i.indexrelid WHERE c.relname = ANY(:names)"
                           " AND NOT i.indisvalid", names=built)
        present = db.query("SELECT count(*) FROM pg_indexes WHERE indexname = ANY(:names)",
                           names=built)
        assert invalid == [] and present == [(len(built),)]
        assert "Traceback" not in exp.output()


def test_timeouts_and_session_state_through_transaction_pooling(roles_db: RolesDb) -> None:
    """The poll's timeouts are transaction-local and hold through the pooler; nothing of a poll
    (timeouts, READ ONLY) stays on the server connection for the next transaction or client;
    PgBouncer needs no ignore_startup_parameters for our connections."""
    db = roles_db
    with bouncer(db, "transaction", pool_size=1, ignore_startup_parameters="") as pgb:
        engine = exporter_db.make_engine(pgb.url(db.admin), 5)
        try:
            started = time.monotonic()
            with pytest.raises(DBAPIError) as failed, \
                    exporter_db.read_only_snapshot(engine, 0.5, 0.5) as conn:
                conn.execute(text("SELECT pg_sleep(3)"))
            took = time.monotonic() - started
            assert exporter_db.error_reason(failed.value) == "timeout" and took < 2.0, took
            with exporter_db.read_only_snapshot(engine, 0.5, 0.5) as conn:
                conn.execute(text("SELECT 1 FROM cj_batch_health LIMIT 1"))
            # Pool of one server connection: the next client gets the very same backend.
            with psycopg.connect(conninfo(pgb.url(db.admin)), prepare_threshold=None,
                                 autocommit=True) as other:
                row = other.execute("SELECT current_setting('statement_timeout'),"
                                    " current_setting('lock_timeout'),"
                                    " current_setting('transaction_read_only')").fetchone()
            assert row == ("0", "0", "off"), row
            with engine.begin() as conn:  # the exporter's own next transaction: writable again
                assert conn.execute(text("SHOW transaction_read_only")).scalar_one() == "off"
        finally:
            engine.dispose()
    print(f"\nthrough transaction pooling: a 3 s statement cancelled after {took:.2f}s"
          " (statement_timeout 0.5 s); nothing left on the server connection")


# --- remediation: two replicas, the leader lock through the pooler --------------------------

def replica(db: RolesDb, pgb: PgBouncer, name: str, election: str) -> ExporterProcess:
    env = {
        "CJ_HEALTH_REMEDIATION_ENABLED": "true",
        "CJ_HEALTH_REMEDIATION_WRITE_DSN": url_string(pgb.url(db.rw)),
        "CJ_HEALTH_REMEDIATION_ACTIONS": "backfill_anchors,refinalize",
        "CJ_HEALTH_REMEDIATION_DRY_RUN": "false",
        "CJ_HEALTH_REMEDIATION_INTERVAL_SECONDS": str(INTERVAL),
        "CJ_HEALTH_REMEDIATION_MIN_WEDGED_SECONDS": "0",
        "CJ_HEALTH_REMEDIATION_MAX_WEDGED_FOR_AUTO": "1000",
        "CJ_HEALTH_REMEDIATION_MAX_ACTIONS_PER_CYCLE": "1000",
        "CJ_HEALTH_REMEDIATION_COOLDOWN_SECONDS": "0",
        "CJ_HEALTH_REMEDIATION_REPLICA_ID": name,
        "CJ_HEALTH_REMEDIATION_LEADER_ELECTION": election,
    }
    return ExporterProcess(url_string(pgb.url(db.ro)), poll_interval=0.5, env=env)


def gauge(exp: ExporterProcess, name: str, **labels: str) -> float:
    value = sample_value(exp.metrics(), name, **labels)
    return -1.0 if value is None else value


def lock_holders(db: RolesDb) -> list[int]:
    rows = db.query("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
                    " AND classid = :c AND objid = :o AND objsubid = 2",
                    c=LOCK_KEY[0], o=LOCK_KEY[1])
    return [int(pid) for (pid,) in rows]


def plant(db: RolesDb, count: int, seed: int) -> list[int]:
    engine = create_engine(db.admin)
    with engine.begin() as conn:
        seeder = Seeder(conn, rng=random.Random(seed))
        ids = [seeder.insert_batch(WEDGED) for _ in range(count)]
    engine.dispose()
    return ids


def healed(db: RolesDb, ids: list[int]) -> bool:
    rows = db.query("SELECT count(*) FROM cj_batch_states WHERE batch_id = ANY(:ids)"
                    " AND state = 'COMPLETED'", ids=ids)
    return bool(rows[0][0] == len(ids))


def assert_exactly_once(db: RolesDb, ids: list[int]) -> dict[str, int]:
    """Each event once per batch, one `applied` audit row per batch; returns them by replica."""
    wanted = {str(i) for i in ids}
    for event in EVENTS:
        column = ("event_data -> 'data' ->> 'cj_assessment_job_id'" if event == EVENTS[0]
                  else "aggregate_id")
        rows = dict(db.query(f"SELECT {column}, count(*) FROM event_outbox"
                             " WHERE event_type = :e GROUP BY 1", e=event))
        assert {k: v for k, v in rows.items() if k in wanted} == dict.fromkeys(wanted, 1), \
            (event, rows)
    applied = db.query("SELECT cj_batch_id, replica FROM cj_health_remediations WHERE"
                       " action = 'refinalize' AND outcome = 'applied'"
                       " AND cj_batch_id = ANY(:ids)", ids=ids)
    assert sorted(b for b, _ in applied) == sorted(ids), applied
    by_replica: dict[str, int] = {}
    for _, name in applied:
        by_replica[name] = by_replica.get(name, 0) + 1
    return by_replica


def leaders(replicas: dict[str, ExporterProcess]) -> set[str]:
    return {n for n, r in replicas.items() if gauge(r, "cj_health_remediation_leader") == 1}


def sample_leaders(replicas: dict[str, ExporterProcess], seconds: float) -> list[set[str]]:
    seen = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        seen.append(leaders(replicas))
        time.sleep(0.2)
    return seen


@pytest.mark.parametrize(("mode", "election"), [
    ("transaction", "auto"), ("session", "auto"), ("transaction", "none")])
def test_two_replicas_through_pgbouncer(roles_db: RolesDb, mode: str, election: str) -> None:
    db = roles_db
    # Session mode pins a server connection per client connection for its whole life: the
    # pool must hold every connection of both replicas (docs/finalizer.md).
    with ExitStack() as stack:
        pgb = stack.enter_context(bouncer(db, mode, POOL_SIZE if mode == "transaction" else 8))
        share_pools(stack, pgb, mode, db.ro, db.rw)
        replicas = {n: stack.enter_context(replica(db, pgb, n, election)) for n in "ab"}
        method = "none" if election == "none" else "transaction_lock"
        for r in replicas.values():
            r.wait_for(lambda body: sample_value(body, "cj_health_remediation_leader_election",
                                           method=method) == 1, 15)
        if election == "none":
            wait_until(lambda: leaders(replicas) == {"a", "b"}, 10, "every replica to act")
            assert lock_holders(db) == []
        else:
            wait_until(lambda: len(leaders(replicas)) == 1, 10, "one leader")
            seen = sample_leaders(replicas, 2.0)
            assert all(len(s) == 1 for s in seen) and len({frozenset(s) for s in seen}) == 1, \
                seen
            assert len(lock_holders(db)) == 1
        first = plant(db, 6, seed=11)
        wait_until(lambda: healed(db, first), 40, "the batches to be healed")
        time.sleep(3 * INTERVAL)  # a late duplicate would land by now
        by_replica = assert_exactly_once(db, first)
        report = f"\nPgBouncer {mode} mode, leader_election={election}: applied by {by_replica}"
        if election != "none":
            [leader] = leaders(replicas)
            assert set(by_replica) == {leader}, "only the leader remediates"
            follower = next(n for n in replicas if n != leader)
            killed = time.monotonic()
            replicas[leader].stop(signal.SIGKILL)
            wait_until(lambda: gauge(replicas[follower], "cj_health_remediation_leader") == 1,
                       10, "the follower to take over")
            report += f"; SIGKILL of the leader: the other leads after" \
                      f" {time.monotonic() - killed:.2f}s"
            second = plant(db, 3, seed=12)
            wait_until(lambda: healed(db, second), 40, "the new leader to heal")
            time.sleep(3 * INTERVAL)
            assert set(assert_exactly_once(db, second)) == {follower}
            survivors = [replicas[follower]]
        else:
            survivors = list(replicas.values())
        for r in survivors:
            body = r.metrics()
            assert errors(body) == dict.fromkeys(POLL_ERROR_REASONS, 0.0), r.output()[-2000:]
            assert sample_value(body, "cj_health_remediation_cycles_total", result="error") == 0, \
                r.output()[-2000:]
        for r in survivors:
            assert r.stop(signal.SIGTERM) == 0
        # Both replicas gone: no lock is left on a PgBouncer server connection (a session lock
        # taken through transaction pooling was, until PgBouncer closed that connection).
        wait_until(lambda: lock_holders(db) == [], 5, "the leader lock to be released")
        print(report + "; no lock held after both stopped")
