"""The refinalize and backfill_anchors actions on a real PostgreSQL (the demo's scenarios).

The shared helpers are in tests/support/remediation.py, the `remediation_db` fixture in
tests/conftest.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from exporter.demo import scenarios
from exporter.demo.scenarios import BatchSpec
from exporter.finalizer import bt, store
from exporter.finalizer.anchors import backfill_anchors
from exporter.finalizer.refinalize import refinalize
from exporter.upstream import events as ev
from exporter.vocabulary import APPLIED, DRY_RUN, FAILED, NEEDS_PERSON, SKIPPED
from tests.support.remediation import (
    RemediationDb,
    audit_rows,
    events_of,
    health,
    problems,
    snapshot,
)


def test_batch20_wedge_is_healed_end_to_end(remediation_db: RemediationDb) -> None:
    db, engine = remediation_db, remediation_db.engine
    b20 = db.batch("wedged")
    before = health(engine, b20)
    assert problems(before) == {"wedged", "anchor_mismatch", "missing_projections"}
    anchors = len(scenarios.GRADES)
    assert before["anchors_flagged"] == 0 and before["anchors_in_metadata"] == anchors

    result = refinalize(engine, b20, replica="test", dry_run=False)

    assert result.outcome == APPLIED, result.line()
    after = health(engine, b20)
    assert problems(after) == set()
    assert after["anchors_flagged"] == anchors and after["anchor_mismatches"] == 0
    assert after["grade_projections"] == after["student_essays"] == scenarios.STUDENTS
    assert (after["cj_state"], after["upload_status"]) == ("COMPLETED", "COMPLETE_STABLE")
    assert after["completed_at"] == before["completed_at"]  # upstream's completion time kept
    found = events_of(engine, b20)
    # The pre-fix code already published one of each: only the corrected result is added.
    assert {k: len(v) for k, v in found.items()} == {"completed": 1, "result": 2, "resource": 1}
    assert all(r["published_at"] is not None for k in ("completed", "resource")
               for r in found[k])
    old, new = sorted(found["result"], key=lambda r: r["published_at"] is None)
    assert old["published_at"] is not None and new["published_at"] is None
    assert {r["letter_grade"] for r in old["data"]["data"]["essay_results"]} == {"U"}
    assert "assignment_id" not in old["data"]["data"]  # the pre-fix shape
    with engine.connect() as conn:
        upload = conn.execute(text("SELECT bos_batch_id, event_correlation_id, user_id,"
                                   " assignment_id FROM cj_batch_uploads WHERE id = :id"),
                              {"id": b20}).mappings().one()
        essays = conn.execute(text(
            "SELECT els_essay_id, current_bt_score, current_bt_se, comparison_count, is_anchor"
            " FROM cj_processed_essays WHERE cj_batch_id = :id ORDER BY ctid"),
            {"id": b20}).mappings().all()
        outcomes = store.load_outcomes(conn, b20)
    assert (new["aggregate_type"], new["aggregate_id"]) == ("assessment_result", str(b20))
    assert new["event_key"] == str(b20) and new["topic"] == ev.RESULT_TOPIC
    assert new["data"]["correlation_id"] == upload["event_correlation_id"]
    assert new["data"]["topic"] == new["topic"] == new["data"]["event_type"]
    assert new["data"]["source_service"] == "cj_assessment_service"
    result = new["data"]["data"]
    assert result["assignment_id"] == upload["assignment_id"]  # top level, where RAS reads it
    assert (result["model_provider"], result["model_used"]) == ("openai", "gpt-5-mini")
    assert result["assessment_metadata"]["llm_temperature"] == 0.1
    essay_results = result["essay_results"]
    assert [r["rank"] for r in essay_results] == list(range(1, scenarios.STUDENTS + anchors + 1))
    assert {r["letter_grade"] for r in essay_results if r["is_anchor"]} == {"U"}
    assert {r["letter_grade"] for r in essay_results if not r["is_anchor"]} != {"U"}

    # The stored scores are the BT fit of the stored comparisons, SEs and counts included.
    fit = bt.fit([e["els_essay_id"] for e in essays],
                 [e["els_essay_id"] for e in essays if e["is_anchor"]], outcomes)
    for e in essays:
        assert e["current_bt_score"] == pytest.approx(fit.scores[e["els_essay_id"]], abs=1e-12)
        assert e["current_bt_se"] == pytest.approx(fit.ses[e["els_essay_id"]], abs=1e-12)
        assert e["comparison_count"] == fit.counts[e["els_essay_id"]]
    assert sum(e["comparison_count"] for e in essays) == 2 * len(outcomes)
    assert len(outcomes) == scenarios.COMPARISONS  # every comparison has a winner

    rows = audit_rows(engine)
    assert [(r["cj_batch_id"], r["action"], r["outcome"], r["dry_run"]) for r in rows] == [
        (b20, "refinalize", "applied", False)]
    assert rows[0]["detail"]["projections"] == scenarios.STUDENTS
    assert rows[0]["detail"]["decisions"]["result"].startswith("corrected")


def test_a_second_run_changes_nothing(remediation_db: RemediationDb) -> None:
    engine = remediation_db.engine
    b20 = remediation_db.batch("wedged")
    assert refinalize(engine, b20, replica="test", dry_run=False).outcome == APPLIED
    before = snapshot(engine)
    again = refinalize(engine, b20, replica="test", dry_run=False)
    flags = backfill_anchors(engine, b20, replica="test", dry_run=False)
    assert (again.outcome, again.reason) == (SKIPPED, "state is already COMPLETED")
    assert flags.outcome == SKIPPED
    assert snapshot(engine) == before
    assert len(audit_rows(engine)) == 1  # skips are audited by the caller, not in-transaction


def test_dry_run_changes_nothing_and_describes_the_plan(remediation_db: RemediationDb) -> None:
    engine = remediation_db.engine
    b20, stuck = remediation_db.batch("wedged"), remediation_db.batch("stuck_scoring")
    before = snapshot(engine)
    plan = refinalize(engine, b20, replica="test", dry_run=True)
    flags = backfill_anchors(engine, b20, replica="test", dry_run=True)
    other = refinalize(engine, stuck, replica="test", dry_run=True)
    assert snapshot(engine) == before
    assert audit_rows(engine) == []
    assert plan.outcome == flags.outcome == other.outcome == DRY_RUN
    assert len(plan.detail["anchors_flagged"]) == len(scenarios.GRADES)
    assert plan.detail["projections"] == scenarios.STUDENTS
    assert plan.detail["events"] == ["result"]  # a correction: the rest is already out
    assert other.detail["events"] == ["completed", "result", "resource"]
    assert any("FOR UPDATE SKIP LOCKED" in step for step in plan.detail["plan"])
    assert len(flags.detail["essays"]) == len(scenarios.GRADES)
    assert other.detail["projections"] == 0 and "expects no anchors" in other.detail["plan"][3]


def test_unusable_anchors_are_not_finalized_and_say_why(remediation_db: RemediationDb) -> None:
    engine = remediation_db.engine
    # Two anchors of the same grade, not even flagged: the backfill inside the transaction
    # would flag them, so "nothing changed" also proves it was rolled back.
    bid = remediation_db.seed(BatchSpec(status="COMPLETE_STABLE", state="WAITING_CALLBACKS",
                                        anchor_grades=("C", "C"), anchors_flagged=False,
                                        idle=timedelta(hours=2)))
    before = snapshot(engine)
    result = refinalize(engine, bid, replica="test", dry_run=False)
    assert result.outcome == NEEDS_PERSON
    assert "unusable" in result.reason and result.detail["grades"] == ["C"]
    assert snapshot(engine) == before
    assert problems(health(engine, bid)) >= {"wedged"}


def test_batch_without_assignment_is_finalized_without_projections(
        remediation_db: RemediationDb) -> None:
    engine = remediation_db.engine
    stuck = remediation_db.batch("stuck_scoring")
    result = refinalize(engine, stuck, replica="test", dry_run=False)
    assert result.outcome == APPLIED, result.line()
    after = health(engine, stuck)
    assert problems(after) == set() and after["grade_projections"] == 0
    assert (after["cj_state"], after["upload_status"]) == ("COMPLETED", "COMPLETE_STABLE")
    assert after["completed_at"] is not None
    assert {k: len(v) for k, v in events_of(engine, stuck).items()} == {
        "completed": 1, "result": 1, "resource": 1}


def test_no_user_id_means_no_resource_event_and_short_budget_is_forced_recovery(
        remediation_db: RemediationDb) -> None:
    engine = remediation_db.engine
    bid = remediation_db.seed(BatchSpec(status="FETCHING_CONTENT", state="SCORING", budget=40,
                                        submitted=30, completed=28, failed=2, finished=False,
                                        user_id=None, idle=timedelta(hours=1)))
    result = refinalize(engine, bid, replica="test", dry_run=False)
    assert result.outcome == APPLIED, result.line()
    assert health(engine, bid)["upload_status"] == "COMPLETE_FORCED_RECOVERY"
    assert {k: len(v) for k, v in events_of(engine, bid).items()} == {
        "completed": 1, "result": 1, "resource": 0}


def test_guard_skips_batches_not_wedged_or_failed(remediation_db: RemediationDb) -> None:
    engine = remediation_db.engine
    in_flight = next(b for b, p in remediation_db.planted.items() if not p
                     and health(engine, b)["cj_state"] == "WAITING_CALLBACKS")
    failed = remediation_db.batch("inconsistent_state")  # the monitor's FAILED
    errored = remediation_db.seed(BatchSpec(status="ERROR_PROCESSING", state="SCORING",
                                            finished=False))
    before = snapshot(engine)
    results = {b: refinalize(engine, b, replica="test", dry_run=False)
               for b in (in_flight, failed, errored)}
    assert snapshot(engine) == before
    assert results[in_flight].outcome == SKIPPED and "not wedged" in results[in_flight].reason
    assert results[failed].outcome == SKIPPED and "state FAILED" in results[failed].reason
    assert results[errored].outcome == NEEDS_PERSON
    unknown = refinalize(engine, 999_999, replica="test", dry_run=False)
    assert unknown.outcome == SKIPPED and "no cj_batch_uploads row" in unknown.reason


def test_a_run_that_published_everything_is_never_completed_or_charged_twice(
        remediation_db: RemediationDb) -> None:
    """Stuck in SCORING after its three events went out (R1, R2): whatever else happens, no
    second completion and no second charge. Its result carries the demo's stand-in scores,
    not the BT fit, so the fit's result differs and is published once as a correction (R3);
    a second run finds the state COMPLETED."""
    engine = remediation_db.engine
    bid = remediation_db.seed(BatchSpec(status="FETCHING_CONTENT", state="SCORING",
                                        finished=False, completion_runs=1))
    before = {k: len(v) for k, v in events_of(engine, bid).items()}
    assert before == {"completed": 1, "result": 1, "resource": 1}
    result = refinalize(engine, bid, replica="test", dry_run=False)
    assert result.outcome == APPLIED, result.line()
    assert result.detail["decisions"]["completed"].startswith("kept")
    assert result.detail["decisions"]["resource"].startswith("kept")
    assert result.detail["decisions"]["result"].startswith("corrected")
    assert {k: len(v) for k, v in events_of(engine, bid).items()} == {
        "completed": 1, "result": 2, "resource": 1}
    again = refinalize(engine, bid, replica="test", dry_run=False)
    assert (again.outcome, again.reason) == (SKIPPED, "state is already COMPLETED")


def test_an_unpublished_event_of_another_run_rolls_everything_back(
        remediation_db: RemediationDb) -> None:
    """idx_outbox_unique_unpublished forbids a second unpublished completion event for the
    same BOS batch: the whole transaction fails, nothing is half-written."""
    engine = remediation_db.engine
    stuck = remediation_db.batch("stuck_scoring")
    with engine.begin() as conn:
        bos, corr = conn.execute(text("SELECT bos_batch_id, event_correlation_id"
                                      " FROM cj_batch_uploads WHERE id = :id"),
                                 {"id": stuck}).one()
        other_run = ev.completion_row(424242, bos, corr, {}, datetime.now(UTC))
        ev.insert_row(conn, other_run, datetime.now(UTC))  # unpublished
    before = snapshot(engine)
    result = refinalize(engine, stuck, replica="test", dry_run=False)
    assert result.outcome == FAILED and "idx_outbox_unique_unpublished" in result.reason
    assert snapshot(engine) == before
    assert audit_rows(engine) == []


def test_backfill_anchors_flags_and_never_clears(remediation_db: RemediationDb) -> None:
    engine = remediation_db.engine
    b20 = remediation_db.batch("wedged")
    with engine.begin() as conn:  # a reverse mismatch: column true, metadata false
        conn.execute(text("UPDATE cj_processed_essays SET is_anchor = true WHERE els_essay_id ="
                          " (SELECT min(els_essay_id) FROM cj_processed_essays"
                          "  WHERE cj_batch_id = :id AND els_essay_id NOT LIKE 'ANCHOR%')"),
                     {"id": b20})
    result = backfill_anchors(engine, b20, replica="test", dry_run=False)
    assert result.outcome == APPLIED and len(result.detail["essays"]) == len(scenarios.GRADES)
    row = health(engine, b20)
    assert row["anchors_flagged"] == len(scenarios.GRADES) + 1  # the student's flag stays:
    assert row["anchor_mismatches"] == 1  # never cleared
    assert [(r["action"], r["outcome"]) for r in audit_rows(engine)] == [
        ("backfill_anchors", "applied")]


def test_demo_seed_still_plants_what_the_view_flags(remediation_db: RemediationDb) -> None:
    """outbox_events was refined for the finalizer; the seeded history must stay the same."""
    engine = remediation_db.engine
    for batch_id, expected in remediation_db.planted.items():
        assert problems(health(engine, batch_id)) == expected, batch_id
    assert scenarios.DEMO_SCENARIOS  # the planted set is the demo's
