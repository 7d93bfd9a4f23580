"""The valves decide on the database's clock, not the exporter host's (issue 12, item 6).

A real remediation cycle on a real PostgreSQL, with `time.time` of this (the exporter's)
process stepped a day ahead or behind: the cooldown holds exactly as without the step (the
refused ENG5 batch is not retried within it), and it ends when the database's clock says so
(the audit rows are aged on the database, by `cooldown_seconds`, and the batch is retried).
Before the fix the cycle compared `time.time()` with the audit rows' `at`: +1 day retried the
batch on the very next cycle, -1 day would have blocked it for a day. The same with real
`serve` processes and a stepped wall clock: tests/process/test_remediation_clock.py.
"""

from __future__ import annotations

import dataclasses
import time

import pytest
from sqlalchemy import text

from exporter import config
from exporter.config import RemediationSettings, Settings
from exporter.finalizer import audit
from exporter.finalizer.service import Remediator
from exporter.vocabulary import NEEDS_PERSON, REFINALIZE
from tests.support.remediation import RemediationDb, audit_rows

DAY = 86_400.0
COOLDOWN = 600.0


def remediator(url: str) -> Remediator:
    r = RemediationSettings(enabled=True, write_dsn=url, actions=(REFINALIZE,), dry_run=False,
                            min_wedged_seconds=60.0, max_attempts=10,
                            cooldown_seconds=COOLDOWN, replica_id="clock-test")
    settings = Settings(dsn=url, remediation=dataclasses.replace(r))
    return Remediator(settings.finalizer(), config.parse_dsn(url))


def db_now(db: RemediationDb) -> float:
    with db.engine.connect() as conn:
        return float(conn.execute(text("SELECT EXTRACT(EPOCH FROM now())")).scalar_one())


@pytest.mark.parametrize("step", [DAY, -DAY], ids=["host+1d", "host-1d"])
def test_the_cooldown_holds_on_the_database_clock_whatever_the_host_clock(
        remediation_db: RemediationDb, monkeypatch: pytest.MonkeyPatch, step: float) -> None:
    db = remediation_db
    (eng5,) = db.refused()  # needs_person on every attempt: a candidate again after each
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + step)
    assert abs(time.time() - db_now(db) - step) < 60  # the host is a day off the database
    rem = remediator(db.url)
    try:
        first = rem.run_cycle()
        assert first.error is None
        tried = [(r.cj_batch_id, r.outcome) for r in first.results if r.cj_batch_id == eng5]
        assert tried == [(eng5, NEEDS_PERSON)]
        healed = {r.cj_batch_id for r in first.results} - {eng5}
        assert healed == set(db.healed())

        # Within the cooldown (by the database's clock): held back, whatever the host says.
        second = rem.run_cycle()
        assert second.results == () and second.decision is not None
        assert second.decision.blocked["cooldown"] == 1

        # The history's clock is the database's, read in the same statement.
        with db.engine.connect() as conn, conn.begin():
            past = audit.history(conn, [eng5], dry_run=False)
        assert abs(past.now - db_now(db)) < 60
        last = past.by_action[(eng5, REFINALIZE)]
        assert last.attempts == 1 and last.last_at is not None
        assert 0 <= past.now - last.last_at < COOLDOWN

        # The cooldown ends on the database's clock: age the audit rows by it.
        with db.engine.begin() as conn:
            conn.execute(text("UPDATE cj_health_remediations SET at = at - make_interval("
                              "secs => :s)"), {"s": COOLDOWN + 1})
        third = rem.run_cycle()
        assert [(r.cj_batch_id, r.outcome) for r in third.results] == [(eng5, NEEDS_PERSON)]
        assert rem.run_cycle().results == ()  # and cools down again
    finally:
        rem.close()
    # Every healed batch was acted on once: no second charge on any.
    rows = audit_rows(db.engine)
    assert sorted(r["cj_batch_id"] for r in rows if r["cj_batch_id"] != eng5) == sorted(
        db.healed())
    assert [r["outcome"] for r in rows if r["cj_batch_id"] == eng5] == [NEEDS_PERSON] * 2
