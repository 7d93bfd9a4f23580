"""sql/roles.sql on a real PostgreSQL: the poller and the finalizer work under their roles, and
Postgres itself refuses everything else (issue 7, item 1).

roles.sql is run with psql, as docs/security.md tells operators to. The roles are cluster-wide,
so each test drops them again; their grants die with the test's database.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from exporter import config, db
from exporter.config import RemediationSettings, Settings
from exporter.finalizer.service import Remediator
from exporter.poll.scheduler import Poller
from tests.support.database import Server, database
from tests.support.exposition import sample_value
from tests.support.hardening import apply_roles, drop_roles, libpq_url
from tests.support.process import run_cli

RO, RW, OP, PERSON = "cj_health_ro", "cj_health_remediator", "cj_health_operator", "cjh_person"
RO_PASSWORD, RW_PASSWORD = "ro-test-pw-1", "rw-test-pw-2"  # test-only; docs say use \password


@dataclass(frozen=True)
class RolesDb:
    admin: URL
    ro: URL
    rw: URL
    planted: dict[int, frozenset[str]]


@pytest.fixture
def roles_db(pg_server: Server) -> Iterator[RolesDb]:
    try:
        with database(pg_server, demo=True, remediation=True) as db:
            admin = pg_server.url(db.name)
            result = apply_roles(admin, ro_password=RO_PASSWORD, rw_password=RW_PASSWORD)
            assert result.returncode == 0, result.stderr
            yield RolesDb(admin, admin.set(username=RO, password=RO_PASSWORD),
                          admin.set(username=RW, password=RW_PASSWORD), db.planted)
    finally:  # after the database: the roles own grants in it until it is dropped
        drop_roles(pg_server.url(), PERSON, OP, RO, RW)


def refused(engine: Engine, statement: str, sqlstate_class: type[Exception],
            setup: str | None = None) -> None:
    """`statement` must fail in Postgres with that error class (the driver's, not ours)."""
    with engine.connect() as conn:
        if setup:
            conn.execute(text(setup))
            conn.commit()  # a SET of a session default applies from the next transaction
        with pytest.raises(DBAPIError) as caught:
            conn.execute(text(statement))
        conn.rollback()
    assert isinstance(caught.value.orig, sqlstate_class), (statement, caught.value.orig)


def test_roles_file_is_idempotent_and_the_roles_are_powerless(roles_db: RolesDb) -> None:
    again = apply_roles(roles_db.admin)  # without passwords: keeps the ones already set
    assert again.returncode == 0, again.stderr
    engine = create_engine(roles_db.admin)
    with engine.connect() as conn:
        rows = {r.rolname: r for r in conn.execute(text(
            "SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolreplication,"
            " rolbypassrls, rolcanlogin, rolinherit, rolconnlimit, rolconfig FROM pg_roles"
            " WHERE rolname = ANY(:names)"), {"names": [RO, RW, OP]})}
    engine.dispose()
    assert set(rows) == {RO, RW, OP}
    for row in rows.values():
        assert not (row.rolsuper or row.rolcreaterole or row.rolcreatedb or row.rolreplication
                    or row.rolbypassrls)
    assert rows[RO].rolcanlogin and rows[RW].rolcanlogin and not rows[OP].rolcanlogin
    assert rows[RO].rolconnlimit == 10 and not rows[RO].rolinherit
    assert "default_transaction_read_only=on" in rows[RO].rolconfig
    assert "idle_in_transaction_session_timeout=60s" in rows[RW].rolconfig
    assert not any(c.startswith("idle_session_timeout") for c in rows[RW].rolconfig or ())


def test_poller_under_the_read_only_role_and_writes_refused(roles_db: RolesDb) -> None:
    settings = Settings(dsn=roles_db.ro.render_as_string(hide_password=False))
    engine = db.make_engine(config.parse_dsn(settings.dsn or ""), 5)
    poller = Poller(settings, engine)
    poller.poll_once()
    body = poller.store.page.metrics.text
    assert sample_value(body, "cj_health_up") == 1, poller.last_error
    for batch, problems in roles_db.planted.items():
        for problem in problems:
            assert sample_value(body, "cj_batch_problem", cj_batch_id=str(batch),
                                problem=problem) == 1, (batch, problem)
    # The role has what incremental polls need (exporter/poll/changes.py): the next poll reads
    # only what changed, and sees a callback.
    in_flight = min(b for b, p in roles_db.planted.items() if not p)
    admin = create_engine(roles_db.admin)
    with admin.begin() as conn:
        conn.execute(text("UPDATE cj_batch_states SET completed_comparisons = 29, last_activity_at"
                          " = now() WHERE batch_id = :b"), {"b": in_flight})
    poller.poll_once()
    body = poller.store.page.metrics.text
    assert sample_value(body, "cj_health_up") == 1, poller.last_error
    assert sample_value(body, "cj_health_full_polls_total") == 1
    assert sample_value(body, "cj_health_poll_batches_read") == 1
    assert sample_value(body, "cj_batch_comparisons", cj_batch_id=str(in_flight),
                        kind="completed") == 29
    errors = psycopg.errors
    # The role's transactions are read-only by default: a write grant given by mistake (a DBA
    # "fixing" a permission error) is still refused ...
    with admin.begin() as conn:
        conn.execute(text(f"CREATE TABLE cj_scratch (i int); GRANT INSERT ON cj_scratch TO {RO}"))
    admin.dispose()
    with engine.connect() as conn:
        assert conn.execute(text("SHOW default_transaction_read_only")).scalar_one() == "on"
    refused(engine, "INSERT INTO cj_scratch VALUES (1)", errors.ReadOnlySqlTransaction)
    # ... and once a session switches that default off, the missing grants refuse the rest.
    rw_session = "SET default_transaction_read_only = off"
    for statement in (
        "UPDATE cj_batch_states SET state = 'COMPLETED'",
        "DELETE FROM event_outbox",
        "INSERT INTO grade_projections (els_essay_id, cj_batch_id, primary_grade,"
        " confidence_score, confidence_label, calculation_metadata)"
        " VALUES ('x', 1, 'A', 1, 'HIGH', '{}')",
        "TRUNCATE cj_batch_uploads",
        "CREATE TABLE cj_sneaky (i int)",
        "CREATE OR REPLACE VIEW cj_batch_health AS SELECT 1 AS one",
        # and nothing personal can be read: essays, prompts, events, grades
        "SELECT assessment_input_text FROM cj_processed_essays",
        "SELECT prompt_text FROM cj_comparison_pairs",
        "SELECT event_data FROM event_outbox",
        "SELECT primary_grade FROM grade_projections",
        "SELECT processing_metadata FROM cj_batch_states",
    ):
        refused(engine, statement, errors.InsufficientPrivilege, setup=rw_session)
    engine.dispose()


def test_finalizer_under_the_remediation_role(roles_db: RolesDb) -> None:
    wedged = sorted(b for b, p in roles_db.planted.items() if "wedged" in p)
    settings = Settings(
        dsn=roles_db.ro.render_as_string(hide_password=False),
        remediation=RemediationSettings(
            enabled=True, write_dsn=roles_db.rw.render_as_string(hide_password=False),
            actions=("backfill_anchors", "refinalize"), dry_run=False, min_wedged_seconds=0,
            max_wedged_for_auto=100, max_actions_per_cycle=50, replica_id="roles-test"))
    write_url = config.parse_dsn(settings.remediation.write_dsn or "")
    remediator = Remediator(settings.finalizer(), write_url)
    try:
        report = remediator.run_cycle()
    finally:
        remediator.close()
    assert report.error is None, report.error
    outcomes = {(r.cj_batch_id, r.action): r.outcome for r in report.results}
    assert all(outcomes.get((b, "refinalize")) == "applied" for b in wedged), outcomes
    admin = create_engine(roles_db.admin)
    with admin.connect() as conn:
        states = conn.execute(text("SELECT state::text FROM cj_batch_states"
                                   " WHERE batch_id = ANY(:ids)"), {"ids": wedged}).scalars()
        assert set(states) == {"COMPLETED"}
        audited = conn.execute(text("SELECT count(*) FROM cj_health_remediations"
                                    " WHERE replica = 'roles-test'")).scalar_one()
        assert audited >= len(wedged)
    admin.dispose()

    engine = create_engine(roles_db.rw)
    errors = psycopg.errors
    for statement in (
        "DELETE FROM event_outbox",
        "UPDATE event_outbox SET published_at = now()",  # could hide an event from the relay
        "UPDATE cj_batch_uploads SET bos_batch_id = 'x'",
        # (it replaces projections, R5: UPDATE of the computed columns, never of the keys)
        "UPDATE grade_projections SET els_essay_id = 'x'",
        "UPDATE grade_projections SET cj_batch_id = 0",
        "DELETE FROM grade_projections",
        "TRUNCATE cj_comparison_pairs",
        "DELETE FROM cj_health_remediations",  # the audit trail cannot be rewritten
        "UPDATE cj_health_remediations SET outcome = 'skipped'",
        "DELETE FROM cj_health_remediation_pause",  # it cannot lift a pause
        "INSERT INTO cj_health_remediation_pause (paused_by, reason) VALUES ('x', 'y')",
        "SELECT assessment_input_text FROM cj_processed_essays",
        "SELECT justification FROM cj_comparison_pairs",
        "CREATE TABLE cj_sneaky (i int)",
        "SET ROLE cj_health_operator",
    ):
        refused(engine, statement, errors.InsufficientPrivilege)
    engine.dispose()


def test_operator_role_for_people(roles_db: RolesDb) -> None:
    admin = create_engine(roles_db.admin, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE ROLE {PERSON} LOGIN PASSWORD 'person-pw' IN ROLE {OP}"))
    admin.dispose()
    person = roles_db.admin.set(username=PERSON, password="person-pw")
    dsn = person.render_as_string(hide_password=False)
    wedged = next(b for b, p in roles_db.planted.items() if "wedged" in p)

    shown = run_cli("inspect", str(wedged), "--dsn", dsn, "--json")
    assert shown.returncode == 0, shown.stderr
    paused = run_cli("remediate", "--pause", "roles test", "--dsn", dsn, "--write-dsn", dsn)
    assert paused.returncode == 0, paused.stderr
    resumed = run_cli("remediate", "--resume", "--dsn", dsn, "--write-dsn", dsn)
    assert resumed.returncode == 0, resumed.stderr
    # psql works with the same URL form the docs give.
    assert libpq_url(person).startswith("postgresql://")
