"""The refinalize and backfill_anchors actions on a real PostgreSQL (the demo's scenarios).

`snapshot` and `remediation_db` are reused by the other finalizer/remediation test modules.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text

from exporter import outbox_events as ev
from exporter import scenarios
from exporter.finalizer import audit, bt, store
from exporter.finalizer.anchors import backfill_anchors
from exporter.finalizer.model import APPLIED, DRY_RUN, FAILED, NEEDS_PERSON, SKIPPED
from exporter.finalizer.refinalize import refinalize
from exporter.health import PROBLEMS
from exporter.scenarios import BatchSpec, Seeder
from tests.conftest import SeededDb

CJ_TABLES = {
    "essays": "SELECT els_essay_id, cj_batch_id, is_anchor, current_bt_score, current_bt_se,"
              " comparison_count, updated_at FROM cj_processed_essays ORDER BY 1",
    "states": "SELECT batch_id, state::text, last_activity_at, processing_metadata::text"
              " FROM cj_batch_states ORDER BY 1",
    "uploads": "SELECT id, status::text, completed_at, updated_at FROM cj_batch_uploads"
               " ORDER BY 1",
    "projections": "SELECT els_essay_id, cj_batch_id, primary_grade, created_at"
                   " FROM grade_projections ORDER BY 1, 2",
    "outbox": "SELECT id, event_type, aggregate_id, published_at FROM event_outbox ORDER BY 1",
}


def snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every CJ row the finalizer could touch, for "nothing changed" assertions."""
    with engine.connect() as conn:
        return {name: [tuple(r) for r in conn.execute(text(sql))]
                for name, sql in CJ_TABLES.items()}


def audit_rows(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(text(
            "SELECT replica, cj_batch_id, action, dry_run, outcome, detail"
            " FROM cj_health_remediations ORDER BY id")).mappings()]


def health(engine: Engine, batch_id: int) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM cj_batch_health WHERE cj_batch_id = :id"),
                           {"id": batch_id}).mappings().one()
    return dict(row)


def problems(row: dict[str, Any]) -> set[str]:
    return {p for p, column in PROBLEMS.items() if row[column]}


@dataclass(frozen=True)
class RemediationDb:
    url: str
    engine: Engine
    planted: dict[int, frozenset[str]]

    def batch(self, problem: str) -> int:
        return next(b for b, p in sorted(self.planted.items()) if problem in p)

    def seed(self, spec: BatchSpec) -> int:
        """One more batch; its own random ids (the demo's seeded generator would repeat)."""
        with self.engine.begin() as conn:
            return Seeder(conn, rng=random.Random()).insert_batch(spec)


def open_remediation_db(seeded_db: SeededDb) -> Iterator[RemediationDb]:
    """The demo scenarios plus the finalizer's audit and pause tables (fixture body, shared
    with the other finalizer test modules)."""
    engine = create_engine(seeded_db.url)
    with engine.begin() as conn:
        audit.install(conn)
    yield RemediationDb(seeded_db.url, engine, seeded_db.planted)
    engine.dispose()


@pytest.fixture
def remediation_db(seeded_db: SeededDb) -> Iterator[RemediationDb]:
    yield from open_remediation_db(seeded_db)


def events_of(engine: Engine, batch_id: int) -> dict[str, list[dict[str, Any]]]:
    """The batch's outbox rows by kind, keyed as the view keys them."""
    with engine.connect() as conn:
        bos = conn.execute(text("SELECT bos_batch_id FROM cj_batch_uploads WHERE id = :id"),
                           {"id": batch_id}).scalar_one()
        rows = conn.execute(text(
            "SELECT event_type, aggregate_id, aggregate_type, topic, event_key, published_at,"
            " event_data::text AS data FROM event_outbox WHERE"
            " (event_type = :c AND event_data -> 'data' ->> 'cj_assessment_job_id' = :sid)"
            " OR (event_type = :r AND aggregate_id = :sid)"
            " OR (event_type = :rc AND aggregate_id = :bos)"),
            {"c": ev.COMPLETED_EVENT, "r": ev.RESULT_EVENT, "rc": ev.RESOURCE_EVENT,
             "sid": str(batch_id), "bos": bos}).mappings().all()
    kinds = {ev.COMPLETED_EVENT: "completed", ev.RESULT_EVENT: "result",
             ev.RESOURCE_EVENT: "resource"}
    out: dict[str, list[dict[str, Any]]] = {"completed": [], "result": [], "resource": []}
    for r in rows:
        out[kinds[r["event_type"]]].append({**r, "data": json.loads(r["data"])})
    return out


def test_batch20_wedge_is_healed_end_to_end(remediation_db: RemediationDb) -> None:
    db, engine = remediation_db, remediation_db.engine
    b20 = db.batch("wedged")
    before = health(engine, b20)
    assert problems(before) == {"wedged", "anchor_mismatch", "missing_projections"}
    assert before["anchors_flagged"] == 0 and before["anchors_in_metadata"] == 5

    result = refinalize(engine, b20, replica="test", dry_run=False)

    assert result.outcome == APPLIED, result.line()
    after = health(engine, b20)
    assert problems(after) == set()
    assert after["anchors_flagged"] == 5 and after["anchor_mismatches"] == 0
    assert after["grade_projections"] == after["student_essays"] == 6
    assert (after["cj_state"], after["upload_status"]) == ("COMPLETED", "COMPLETE_STABLE")
    assert after["completed_at"] == before["completed_at"]  # upstream's completion time kept
    found = events_of(engine, b20)
    assert {k: len(v) for k, v in found.items()} == {"completed": 1, "result": 1, "resource": 1}
    with engine.connect() as conn:
        upload = conn.execute(text("SELECT bos_batch_id, event_correlation_id, user_id"
                                   " FROM cj_batch_uploads WHERE id = :id"),
                              {"id": b20}).mappings().one()
        essays = conn.execute(text(
            "SELECT els_essay_id, current_bt_score, current_bt_se, comparison_count, is_anchor"
            " FROM cj_processed_essays WHERE cj_batch_id = :id"), {"id": b20}).mappings().all()
        outcomes = store.load_outcomes(conn, b20)
    for kind, (aggregate_type, aggregate_id) in {
            "completed": ("cj_batch", upload["bos_batch_id"]),
            "result": ("assessment_result", str(b20)),
            "resource": ("resource_consumption", upload["bos_batch_id"])}.items():
        row = found[kind][0]
        assert (row["aggregate_type"], row["aggregate_id"]) == (aggregate_type, aggregate_id)
        assert row["event_key"] == aggregate_id and row["published_at"] is None
        assert row["data"]["correlation_id"] == upload["event_correlation_id"]
        assert row["data"]["topic"] == row["topic"]
        assert row["data"]["source_service"] == "cj_assessment_service"
    assert found["result"][0]["topic"] == ev.RESULT_TOPIC
    assert found["result"][0]["data"]["event_type"] == ev.RESULT_TOPIC
    completion = found["completed"][0]["data"]["data"]
    assert completion["status"] == "completed_successfully"
    assert completion["processing_summary"]["total_essays"] == 6
    resource = found["resource"][0]["data"]["data"]
    assert (resource["processing_id"], resource["quantity"]) == (str(b20), 15)  # 6*5/2
    assert resource["user_id"] == upload["user_id"]
    essay_results = found["result"][0]["data"]["data"]["essay_results"]
    assert [r["rank"] for r in essay_results] == list(range(1, 12))
    assert {r["letter_grade"] for r in essay_results if r["is_anchor"]} == {"U"}

    # The stored scores are the BT fit of the stored comparisons, SEs and counts included.
    fit = bt.fit([e["els_essay_id"] for e in essays],
                 {e["els_essay_id"] for e in essays if e["is_anchor"]}, outcomes)
    for e in essays:
        assert e["current_bt_score"] == pytest.approx(fit.scores[e["els_essay_id"]], abs=1e-12)
        assert e["current_bt_se"] == pytest.approx(fit.ses[e["els_essay_id"]], abs=1e-12)
        assert e["comparison_count"] == fit.counts[e["els_essay_id"]]
    assert sum(e["comparison_count"] for e in essays) == 2 * len(outcomes) == 60

    rows = audit_rows(engine)
    assert [(r["cj_batch_id"], r["action"], r["outcome"], r["dry_run"]) for r in rows] == [
        (b20, "refinalize", "applied", False)]
    assert rows[0]["detail"]["projections"] == 6


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
    assert len(plan.detail["anchors_flagged"]) == 5 and plan.detail["projections"] == 6
    assert plan.detail["events"] == ["completed", "result", "resource"]
    assert any("FOR UPDATE SKIP LOCKED" in step for step in plan.detail["plan"])
    assert len(flags.detail["essays"]) == 5
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


def test_guard_skips_batches_with_events_or_not_wedged(remediation_db: RemediationDb) -> None:
    engine = remediation_db.engine
    finalized_but_scoring = remediation_db.seed(BatchSpec(
        status="FETCHING_CONTENT", state="SCORING", finished=False, completion_runs=1))
    in_flight = next(b for b, p in remediation_db.planted.items() if not p
                     and health(engine, b)["cj_state"] == "WAITING_CALLBACKS")
    failed = remediation_db.batch("inconsistent_state")  # the monitor's FAILED
    errored = remediation_db.seed(BatchSpec(status="ERROR_PROCESSING", state="SCORING",
                                            finished=False))
    before = snapshot(engine)
    results = {b: refinalize(engine, b, replica="test", dry_run=False)
               for b in (finalized_but_scoring, in_flight, failed, errored)}
    assert snapshot(engine) == before
    assert results[finalized_but_scoring].outcome == SKIPPED
    # (the seeder's resource row carries the correlation id as processing_id, not the CJ
    # batch id as upstream does, so only two of the three are attributed to this run)
    assert "already in the outbox (completed, result)" in results[finalized_but_scoring].reason
    assert results[in_flight].outcome == SKIPPED and "not wedged" in results[in_flight].reason
    assert results[failed].outcome == SKIPPED and "state FAILED" in results[failed].reason
    assert results[errored].outcome == NEEDS_PERSON
    unknown = refinalize(engine, 999_999, replica="test", dry_run=False)
    assert unknown.outcome == SKIPPED and "no cj_batch_uploads row" in unknown.reason


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
    assert result.outcome == APPLIED and len(result.detail["essays"]) == 5
    row = health(engine, b20)
    assert row["anchors_flagged"] == 6 and row["anchor_mismatches"] == 1  # never cleared
    assert [(r["action"], r["outcome"]) for r in audit_rows(engine)] == [
        ("backfill_anchors", "applied")]


def test_demo_seed_still_plants_what_the_view_flags(remediation_db: RemediationDb) -> None:
    """outbox_events was refined for the finalizer; the seeded history must stay the same."""
    engine = remediation_db.engine
    for batch_id, expected in remediation_db.planted.items():
        assert problems(health(engine, batch_id)) == expected, batch_id
    assert scenarios.DEMO_SCENARIOS  # the planted set is the demo's
