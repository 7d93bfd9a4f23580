"""The documented least privileges (sql/remediation/grants.example.sql) are enough for a whole
remediation cycle, and the exporter's read-only role cannot remediate at all."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from exporter import sqlfiles
from exporter.finalizer.model import APPLIED, FAILED
from exporter.finalizer.refinalize import refinalize
from tests.conftest import SeededDb
from tests.test_finalizer_refinalize import (
    RemediationDb,
    health,
    open_remediation_db,
    problems,
)
from tests.test_remediation_service import remediator


@pytest.fixture
def remediation_db(seeded_db: SeededDb) -> Iterator[RemediationDb]:
    yield from open_remediation_db(seeded_db)


@pytest.fixture
def role(remediation_db: RemediationDb) -> Iterator[str]:
    """A fresh login role (roles are cluster-wide: a unique name, dropped afterwards)."""
    name = f"cjh_fin_{uuid.uuid4().hex[:8]}"
    with remediation_db.engine.begin() as conn:
        conn.execute(text(f"CREATE ROLE {name} LOGIN PASSWORD 'pw'"))
    yield name
    with remediation_db.engine.begin() as conn:
        conn.execute(text(f"DROP OWNED BY {name}"))
        conn.execute(text(f"DROP ROLE {name}"))


def as_role(url: str, role: str) -> str:
    return make_url(url).set(username=role, password="pw").render_as_string(
        hide_password=False)


def test_the_documented_grants_are_enough_for_a_cycle(remediation_db: RemediationDb,
                                                      role: str) -> None:
    db = remediation_db
    grants = sqlfiles.read("remediation/grants.example.sql").replace("cj_finalizer", role)
    with db.engine.begin() as conn:
        sqlfiles.run_script(conn, grants)
    restricted = as_role(db.url, role)
    rem = remediator(restricted)
    try:
        report = rem.run_cycle()
    finally:
        rem.close()
    assert report.error is None
    assert [r.outcome for r in report.results] == [APPLIED] * 3, [r.line() for r in
                                                                  report.results]
    for batch in (db.batch("wedged"), db.batch("stuck_scoring")):
        assert problems(health(db.engine, batch)) == set()


def test_a_role_without_write_grants_cannot_change_anything(remediation_db: RemediationDb,
                                                            role: str) -> None:
    db = remediation_db
    with db.engine.begin() as conn:  # what the exporter's read-only role typically has
        conn.execute(text(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"))
    engine = create_engine(as_role(db.url, role))
    try:
        result = refinalize(engine, db.batch("wedged"), replica="ro", dry_run=False)
        preview = refinalize(engine, db.batch("wedged"), replica="ro", dry_run=True)
    finally:
        engine.dispose()
    assert result.outcome == FAILED and "permission denied" in result.reason
    assert preview.outcome == "dry_run"  # a dry run needs reads only
    assert "wedged" in problems(health(db.engine, db.batch("wedged")))
