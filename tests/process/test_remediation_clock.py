"""The remediation cooldown under wall-clock steps of a real `serve` (issue 12, item 6).

The child's wall clock is stepped by tests/support/clockshim (time.time and datetime.now move,
the monotonic clock does not), a day ahead and then a day behind, while it remediates every
0.5 s with a 4 s cooldown. A batch the policy refuses (the ENG5 national scale: needs_person)
stays a candidate after every attempt, so the cooldown alone spaces its attempts: measured on
the audit rows' `at` (the database's clock), every gap is the cooldown, neither shorter (a
host ahead ended every cooldown at once before the fix: an attempt each cycle) nor much longer
(a host behind held it for a day: no attempt at all). A healable batch beside it is healed
exactly once: one completion, one result, one charge.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from datetime import timedelta
from itertools import pairwise
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from exporter.demo import scenarios
from exporter.demo.scenarios import BatchSpec, Seeder
from exporter.upstream import events as ev
from tests.support.clock import Clock
from tests.support.database import SeededDb, Server, database
from tests.support.hardening import wait_until
from tests.support.process import ExporterProcess

CYCLE = 0.5
COOLDOWN = 4.0
PHASE = 2.6 * COOLDOWN  # seconds per clock step: at least two cooldowns end in it
# An attempt is due at most one cycle after its cooldown ends; the rest is this loaded box
# (a cycle's own time, the refinalize's read-only plan).
LATE = CYCLE + 2.5
DAY = 86_400.0

REFUSED = BatchSpec(status="PERFORMING_COMPARISONS", state="SCORING", finished=False,
                    anchor_grades=tuple("123456789"), grade_scale="eng5_np_national_9_step",
                    projections=True, projection_grades=("1", "2", "4", "9"),
                    completion_runs=1, events=("completed",), idle=timedelta(minutes=50))
HEALABLE = BatchSpec(status="COMPLETE_STABLE", state="WAITING_CALLBACKS",
                     anchor_grades=scenarios.GRADES, idle=timedelta(hours=2))


@pytest.fixture
def planted(pg_server: Server) -> Iterator[tuple[SeededDb, int, int]]:
    with database(pg_server, remediation=True) as db:
        engine = create_engine(db.url)
        with engine.begin() as conn:
            seeder = Seeder(conn, rng=random.Random(1206))
            refused, healable = seeder.insert_batch(REFUSED), seeder.insert_batch(HEALABLE)
        engine.dispose()
        yield db, refused, healable


def serve(db: SeededDb, clock: Clock) -> ExporterProcess:
    env = {
        **clock.env(),
        "CJ_HEALTH_REMEDIATION_ENABLED": "true",
        "CJ_HEALTH_REMEDIATION_WRITE_DSN": db.url,
        "CJ_HEALTH_REMEDIATION_ACTIONS": "refinalize",
        "CJ_HEALTH_REMEDIATION_DRY_RUN": "false",
        "CJ_HEALTH_REMEDIATION_INTERVAL_SECONDS": str(CYCLE),
        "CJ_HEALTH_REMEDIATION_COOLDOWN_SECONDS": str(COOLDOWN),
        "CJ_HEALTH_REMEDIATION_MIN_WEDGED_SECONDS": "60",
        "CJ_HEALTH_REMEDIATION_MAX_ATTEMPTS": "1000",
        "CJ_HEALTH_REMEDIATION_REPLICA_ID": "clock-stepped",
    }
    return ExporterProcess(db.url, poll_interval=1.0, env=env)


def attempts(url: str, batch: int) -> list[tuple[float, str]]:
    """(database time, outcome) of every refinalize audited for the batch, oldest first."""
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT EXTRACT(EPOCH FROM at), outcome FROM cj_health_remediations"
            " WHERE cj_batch_id = :b AND action = 'refinalize' AND NOT dry_run ORDER BY at"),
            {"b": batch}).all()
    engine.dispose()
    return [(float(at), str(outcome)) for at, outcome in rows]


def events(url: str, batch: int) -> dict[str, int]:
    engine = create_engine(url)
    with engine.connect() as conn:
        bos = conn.execute(text("SELECT bos_batch_id FROM cj_batch_uploads WHERE id = :b"),
                           {"b": batch}).scalar_one()
        counts = {event_type: int(n) for event_type, n in conn.execute(text(
            "SELECT event_type, count(*) FROM event_outbox WHERE aggregate_id IN (:b, :bos)"
            " GROUP BY 1"), {"b": str(batch), "bos": bos})}
    engine.dispose()
    return counts


def test_the_cooldown_holds_across_wall_clock_steps_of_the_exporter(
        planted: tuple[SeededDb, int, int], tmp_path: Path) -> None:
    db, refused, healable = planted
    clock = Clock(tmp_path / "offset")
    report = []
    with serve(db, clock) as exp:
        wait_until(lambda: len(attempts(db.url, refused)) >= 1, 30, "the first attempt")
        for step in (DAY, -DAY):
            clock.set(step)
            before = len(attempts(db.url, refused))
            time.sleep(PHASE)
            during = attempts(db.url, refused)[before:]
            report.append(f"host {step:+.0f}s: {len(during)} attempt(s) in {PHASE:.1f}s")
            assert 2 <= len(during) <= PHASE / COOLDOWN + 1, (step, during)
        clock.set(0)
        output = exp.output()
    seen = attempts(db.url, refused)
    assert {outcome for _, outcome in seen} == {"needs_person"}
    gaps = [later - earlier for (earlier, _), (later, _) in pairwise(seen)]
    print(f"\ncooldown {COOLDOWN}s under clock steps: " + "; ".join(report)
          + f"; gaps {', '.join(f'{g:.2f}' for g in gaps)} s (database clock)")
    assert all(COOLDOWN <= g < COOLDOWN + LATE for g in gaps), gaps
    healed = attempts(db.url, healable)
    assert [outcome for _, outcome in healed] == ["applied"], healed
    assert events(db.url, healable) == {ev.COMPLETED_EVENT: 1, ev.RESULT_EVENT: 1,
                                        ev.RESOURCE_EVENT: 1}
    assert "Traceback" not in output and "remediation cycle failed" not in output, output
