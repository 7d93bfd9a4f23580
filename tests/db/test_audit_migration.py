"""The audit table's outcome CHECK follows exporter/vocabulary.py, on a new install and on an
install made before an outcome was added (install-view --remediation migrates it)."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError

from exporter.finalizer import audit
from exporter.vocabulary import OUTCOMES

# The table as the previous release created it (outcome CHECK without `closed`), with a row.
PREVIOUS = """
CREATE TABLE cj_health_remediations (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    replica text NOT NULL,
    cj_batch_id integer NOT NULL,
    action text NOT NULL CHECK (action IN ('backfill_anchors', 'refinalize')),
    dry_run boolean NOT NULL,
    outcome text NOT NULL
        CHECK (outcome IN ('applied', 'dry_run', 'skipped', 'needs_person', 'failed')),
    detail jsonb NOT NULL DEFAULT '{}'::jsonb
);
INSERT INTO cj_health_remediations (replica, cj_batch_id, action, dry_run, outcome)
VALUES ('old', 20, 'refinalize', false, 'applied');
"""


def allowed(url: str) -> set[str]:
    engine = create_engine(url)
    with engine.connect() as conn:
        definition = conn.execute(text(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conname = 'cj_health_remediations_outcome_check'")).scalar_one()
    engine.dispose()
    return set(re.findall(r"'(\w+)'::text", definition))


@pytest.mark.parametrize("previous", [False, True], ids=["fresh", "upgraded"])
def test_every_outcome_is_allowed_and_nothing_else(cj_db: str, previous: bool) -> None:
    engine = create_engine(cj_db)
    with engine.begin() as conn:
        if previous:
            conn.execute(text(PREVIOUS))
        audit.install(conn)
        audit.install(conn)  # idempotent
    assert allowed(cj_db) == set(OUTCOMES)
    with engine.begin() as conn:
        for outcome in OUTCOMES:
            conn.execute(text("INSERT INTO cj_health_remediations (replica, cj_batch_id,"
                              " action, dry_run, outcome) VALUES ('t', 1, 'refinalize', false,"
                              " :o)"), {"o": outcome})
        kept = conn.execute(text("SELECT count(*) FROM cj_health_remediations"
                                 " WHERE replica = 'old'")).scalar_one()
    assert kept == (1 if previous else 0)
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text("INSERT INTO cj_health_remediations (replica, cj_batch_id, action,"
                          " dry_run, outcome) VALUES ('t', 1, 'refinalize', false, 'bogus')"))
    engine.dispose()
