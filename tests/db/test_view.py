"""The cj_batch_health view on seeded scenarios: every column, every flag, and what must NOT
be flagged. Real PostgreSQL, the reference schema, rows written as the CJ service writes them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, create_engine, text

from exporter.demo.scenarios import (
    GRADES,
    OUTBOX_FAILED,
    OUTBOX_OLDEST,
    OUTBOX_UNPUBLISHED,
    RUNAWAY_COMPLETION_RUNS,
    RUNAWAY_DUPLICATES,
    STUDENTS,
    BatchSpec,
    Seeder,
)
from exporter.vocabulary import PROBLEM_COLUMNS as PROBLEMS
from tests.support.database import SeededDb

# The view's columns in order: the contract the exporter, `inspect`, the alert rules and the
# dashboards share (docs/design.md §3). New columns are appended, never inserted.
VIEW_COLUMNS = [
    "cj_batch_id", "bos_batch_id", "assignment_id", "created_at", "completed_at",
    "upload_status", "cj_state", "total_budget", "total_comparisons", "submitted_comparisons",
    "completed_comparisons", "failed_comparisons", "pending_callbacks", "progress_ratio",
    "pairs_with_winner", "student_essays", "anchors_flagged", "anchors_in_metadata",
    "anchors_by_id", "anchor_mismatches", "anchor_grades", "grade_projections", "projectable",
    "completion_events", "result_events", "resource_events", "first_completion_event_at",
    "last_completion_event_at", "completion_event_burst", "last_activity_at",
    "state_age_seconds", "is_terminal", "is_wedged", "is_stuck_scoring", "missing_projections",
    "has_anchor_mismatch", "has_duplicate_completion", "has_duplicate_charge",
    "inconsistent_state", "metadata_incomplete",
    # JSON documents of the batch PostgreSQL cannot read (sql/views/cj_health_json.sql)
    "unreadable_essay_documents", "unreadable_state_documents", "unreadable_completion_events",
    # issue 11: charges per run, the superseding run, the last result against what finalization
    # would publish now, unpublishable projections, more unreadable documents
    "charge_events", "charged_quantity", "overcharged_quantity", "superseded_by",
    "result_assignment_id", "result_students", "result_students_graded",
    "result_grades", "projected_grades", "unpublishable_projections", "unreadable_result_events",
    "unreadable_charge_events", "unreadable_upload_documents",
    # what upstream's diagnostics script shows, budget progress (issue 16, invariant 4)
    "partial_scoring_triggered", "completion_threshold_pct", "current_iteration",
    "llm_batching_mode", "has_config_overrides", "budget_max_pairs", "budget_source",
    "budget_progress", "partial_scoring_threshold_reached",
    # issue 16: anchors by the tier that resolves their grade, the request fields that differ,
    # the budget invariant broken
    "anchors_by_anchor_grade", "anchors_by_known_grade", "anchors_by_text_storage_id",
    "anchors_by_anchor_ref_id", "anchors_unresolved", "rehydration_mismatched_fields",
    "budget_source_violation",
    # the new problem kinds
    "has_wrong_result", "is_superseded", "has_completion_without_result", "is_unbilled",
    "has_unpublishable_result", "has_budget_source_flip", "has_rehydration_mismatch",
    "has_unresolved_anchors",
]


def health(conn: Connection, batch_id: int) -> dict[str, Any]:
    row = conn.execute(text("SELECT * FROM cj_batch_health WHERE cj_batch_id = :id"),
                       {"id": batch_id}).mappings().one()
    return dict(row)


def problems(row: dict[str, Any]) -> set[str]:
    return {p for p, column in PROBLEMS.items() if row[column]}


def test_view_has_exactly_the_design_columns(conn: Connection) -> None:
    columns = conn.execute(text("SELECT * FROM cj_batch_health LIMIT 0")).keys()
    assert list(columns) == VIEW_COLUMNS


def test_each_planted_problem_is_flagged_on_exactly_its_batch(seeded_db: SeededDb) -> None:
    engine = create_engine(seeded_db.url)
    with engine.connect() as c:
        rows = c.execute(text("SELECT * FROM cj_batch_health")).mappings().all()
    engine.dispose()
    flagged = {r["cj_batch_id"]: problems(dict(r)) for r in rows}
    for batch_id, expected in seeded_db.planted.items():
        assert flagged[batch_id] == set(expected), batch_id
    unplanted = set(flagged) - set(seeded_db.planted)
    assert all(not flagged[b] for b in unplanted)  # the old history batch is healthy
    assert set().union(*seeded_db.planted.values()) == set(PROBLEMS)  # every kind planted


def test_batch20_wedge_columns(conn: Connection) -> None:
    now = datetime.now(UTC)
    batch = Seeder(conn, now=now).insert_batch(BatchSpec(
        status="COMPLETE_STABLE", state="WAITING_CALLBACKS", anchor_grades=GRADES,
        anchors_flagged=False, idle=timedelta(hours=2), students=6, budget=30, submitted=30,
        completed=28, failed=2))
    row = health(conn, batch)
    assert row["upload_status"] == "COMPLETE_STABLE"
    assert row["cj_state"] == "WAITING_CALLBACKS"
    assert (row["total_budget"], row["submitted_comparisons"], row["completed_comparisons"],
            row["failed_comparisons"], row["pending_callbacks"]) == (30, 30, 28, 2, 0)
    assert row["progress_ratio"] == pytest.approx(1.0)
    assert row["pairs_with_winner"] == 28
    assert row["student_essays"] == 6
    anchors = len(GRADES)
    assert (row["anchors_flagged"], row["anchors_in_metadata"], row["anchors_by_id"]) == (
        0, anchors, anchors)
    assert row["anchor_mismatches"] == anchors and row["anchor_grades"] == anchors
    assert row["projectable"] is True and row["grade_projections"] == 0
    assert row["state_age_seconds"] == pytest.approx(7200, abs=60)
    assert row["last_activity_at"].tzinfo is not None
    assert row["completed_at"] == pytest.approx(now - timedelta(hours=2),
                                                abs=timedelta(seconds=1))
    # Planted without the events the pre-fix code published: nobody was charged either.
    assert problems(row) == {"wedged", "anchor_mismatch", "missing_projections", "unbilled"}
    assert row["is_terminal"] is False


def test_naive_upload_times_are_read_as_utc(conn: Connection) -> None:
    """The session time zone must not shift naive UTC timestamps (docs/design.md §F3)."""
    conn.execute(text("SET LOCAL TIME ZONE 'America/New_York'"))
    now = datetime.now(UTC)
    batch = Seeder(conn, now=now).insert_batch(BatchSpec(idle=timedelta(minutes=10)))
    row = health(conn, batch)
    assert row["completed_at"] == pytest.approx(now - timedelta(minutes=10),
                                                abs=timedelta(seconds=1))
    assert row["created_at"] == pytest.approx(now - timedelta(minutes=40),
                                              abs=timedelta(seconds=1))


def test_runaway_burst_and_event_counts(conn: Connection) -> None:
    seeder = Seeder(conn)
    runs = RUNAWAY_COMPLETION_RUNS
    batch = seeder.insert_batch(BatchSpec(completion_runs=runs,
                                          burst_spacing=timedelta(milliseconds=72)))
    row = health(conn, batch)
    assert (row["completion_events"], row["result_events"], row["resource_events"]) == (
        runs, runs, runs)
    assert row["completion_event_burst"] == runs
    span = row["last_completion_event_at"] - row["first_completion_event_at"]
    assert span < timedelta(seconds=6)
    assert problems(row) == {"duplicate_completion", "duplicate_charge"}


def test_events_spread_out_have_burst_one(conn: Connection) -> None:
    batch = Seeder(conn).insert_batch(BatchSpec(completion_runs=3,
                                                burst_spacing=timedelta(minutes=5)))
    row = health(conn, batch)
    assert row["completion_events"] == 3 and row["completion_event_burst"] == 1


def test_completed_without_anchors_has_no_projections_legitimately(conn: Connection) -> None:
    batch = Seeder(conn).insert_batch(BatchSpec(completion_runs=1))
    row = health(conn, batch)
    assert row["projectable"] is False and row["grade_projections"] == 0
    assert problems(row) == set() and row["is_terminal"] is True


def test_single_anchor_grade_is_not_projectable(conn: Connection) -> None:
    batch = Seeder(conn).insert_batch(BatchSpec(anchor_grades=("C", "C"), completion_runs=1))
    row = health(conn, batch)
    assert row["anchor_grades"] == 1 and row["projectable"] is False
    assert not row["missing_projections"]


def test_rerun_of_the_same_bos_batch_is_not_a_duplicate(conn: Connection) -> None:
    seeder = Seeder(conn)
    bos = "11111111-2222-4333-8444-555555555555"
    first = seeder.insert_batch(BatchSpec(bos_batch_id=bos, completion_runs=1))
    second = seeder.insert_batch(BatchSpec(bos_batch_id=bos, completion_runs=1))
    for batch in (first, second):
        row = health(conn, batch)
        assert (row["completion_events"], row["result_events"]) == (1, 1)
        assert row["resource_events"] == 2  # per BOS batch: one per run
        assert problems(row) == set()


def test_second_charge_for_one_run_is_flagged(conn: Connection) -> None:
    seeder = Seeder(conn)
    bos = "99999999-2222-4333-8444-555555555555"
    batch = seeder.insert_batch(BatchSpec(bos_batch_id=bos, completion_runs=1))
    seeder.write_completion_events(batch, bos, "corr", "teacher-0001",
                                   datetime.now(UTC), published=True)
    assert problems(health(conn, batch)) == {"duplicate_completion", "duplicate_charge"}


def test_in_flight_with_pending_callbacks_is_not_wedged(conn: Connection) -> None:
    batch = Seeder(conn).insert_batch(BatchSpec(
        status="FETCHING_CONTENT", state="WAITING_CALLBACKS", submitted=30, completed=10,
        failed=2, finished=False, idle=timedelta(hours=3)))
    row = health(conn, batch)
    assert row["pending_callbacks"] == 18
    assert problems(row) == set() and row["is_terminal"] is False


def test_all_callbacks_in_but_still_waiting_is_wedged(conn: Connection) -> None:
    """The completion sweep should have finalized it: nothing will."""
    batch = Seeder(conn).insert_batch(BatchSpec(
        status="FETCHING_CONTENT", state="WAITING_CALLBACKS", submitted=30, completed=29,
        failed=1, finished=False))
    assert problems(health(conn, batch)) == {"wedged"}


def test_batch_without_state_row(conn: Connection) -> None:
    batch = Seeder(conn).insert_batch(BatchSpec(status="PENDING", state=None, students=0,
                                                finished=False))
    row = health(conn, batch)
    assert row["cj_state"] is None and row["total_budget"] is None
    assert row["last_activity_at"] is not None
    assert problems(row) == set() and row["is_terminal"] is False


def test_progress_ratio_is_null_without_budget(conn: Connection) -> None:
    batch = Seeder(conn).insert_batch(BatchSpec(status="COMPLETE_INSUFFICIENT_ESSAYS",
                                                budget=None, submitted=0, completed=0))
    row = health(conn, batch)
    assert row["total_budget"] is None and row["progress_ratio"] is None
    assert not row["metadata_incomplete"]  # finished: never flagged for a missing budget


@pytest.mark.parametrize("essay_meta", [
    "a plain string", [1, 2, 3], 42, None, {"is_anchor": "yes"}, {"is_anchor": 1},
    {"is_anchor": None}, {"is_anchor": {"nested": True}}, {},
])
def test_unexpected_essay_metadata_never_breaks_the_view(conn: Connection,
                                                          essay_meta: Any) -> None:
    """Non-object or odd-typed metadata: no error, and no mismatch is invented from it."""
    batch = Seeder(conn).insert_batch(BatchSpec(essay_metadata=essay_meta, completion_runs=1))
    row = health(conn, batch)
    assert row["student_essays"] == STUDENTS
    assert row["anchor_mismatches"] == 0 and problems(row) == set()


def test_metadata_is_anchor_true_as_string_counts(conn: Connection) -> None:
    batch = Seeder(conn).insert_batch(BatchSpec(essay_metadata={"is_anchor": "TRUE"}))
    row = health(conn, batch)
    assert row["anchors_in_metadata"] == STUDENTS and row["anchor_mismatches"] == STUDENTS


MALFORMED_STATE_METADATA = [
    {"original_request": "not an object", "comparison_budget": {"max_pairs_requested": 30}},
    {"original_request": {}, "comparison_budget": None},
    {"comparison_budget": {"max_pairs_requested": 30}},
    [1, 2], "text",
]


@pytest.mark.parametrize("state_meta", MALFORMED_STATE_METADATA)
def test_in_flight_without_the_request_a_continuation_needs_is_incomplete(
        conn: Connection, state_meta: Any) -> None:
    """The upload's request asked for a budget: a state row that cannot give it back to a
    continuation (no original_request, or no comparison_budget) has a consequence."""
    batch = Seeder(conn).insert_batch(BatchSpec(
        status="FETCHING_CONTENT", state="WAITING_CALLBACKS", completed=5, finished=False,
        request={"max_comparisons_override": 30}))
    conn.execute(text("UPDATE cj_batch_states SET processing_metadata = CAST(:m AS json)"
                      " WHERE batch_id = :id"), {"m": json.dumps(state_meta), "id": batch})
    # an empty copy of the request also disagrees with the upload's, field by field
    also = {"rehydration_mismatch"} if state_meta == MALFORMED_STATE_METADATA[1] else set()
    assert problems(health(conn, batch)) == {"metadata_incomplete"} | also


@pytest.mark.parametrize("state_meta", [*MALFORMED_STATE_METADATA, None])
def test_missing_request_metadata_without_a_consequence_is_not_flagged(
        conn: Connection, state_meta: Any) -> None:
    """No override and a budget set: upstream falls back to its defaults, which is what the
    request asked for (the pre-ADR-0020 Batch 20 has NULL metadata and is not flagged)."""
    batch = Seeder(conn).insert_batch(BatchSpec(
        status="FETCHING_CONTENT", state="WAITING_CALLBACKS", completed=5, finished=False))
    conn.execute(text("UPDATE cj_batch_states SET processing_metadata = CAST(:m AS json)"
                      " WHERE batch_id = :id"),
                 {"m": None if state_meta is None else json.dumps(state_meta), "id": batch})
    also = {"rehydration_mismatch"} if state_meta == MALFORMED_STATE_METADATA[1] else set()
    assert problems(health(conn, batch)) == also


def test_anchor_grade_falls_back_to_the_reference(conn: Connection) -> None:
    """Anchors whose metadata lost known_grade still count via anchor_ref_id."""
    batch = Seeder(conn).insert_batch(BatchSpec(anchor_grades=("E", "C", "A"), projections=True,
                                                completion_runs=1))
    conn.execute(text(
        "UPDATE cj_processed_essays SET processing_metadata = json_build_object("
        " 'is_anchor', true, 'anchor_ref_id', processing_metadata ->> 'anchor_ref_id')"
        " WHERE cj_batch_id = :id AND is_anchor"), {"id": batch})
    row = health(conn, batch)
    assert row["anchor_grades"] == 3 and row["projectable"] is True


def test_monitor_failed_and_completed_with_open_status(conn: Connection) -> None:
    seeder = Seeder(conn)
    failed = seeder.insert_batch(BatchSpec(status="FETCHING_CONTENT", state="FAILED",
                                           completed=10, finished=False))
    done = seeder.insert_batch(BatchSpec(status="PERFORMING_COMPARISONS", state="COMPLETED",
                                         completion_runs=1))
    assert problems(health(conn, failed)) == {"inconsistent_state"}
    assert problems(health(conn, done)) == {"inconsistent_state"}


def test_outbox_view(seeded_db: SeededDb) -> None:
    engine = create_engine(seeded_db.url)
    with engine.connect() as c:
        row = c.execute(text("SELECT * FROM cj_outbox_health")).mappings().one()
    engine.dispose()
    assert row["unpublished_events"] == OUTBOX_UNPUBLISHED
    assert row["failed_events"] == OUTBOX_FAILED
    assert row["oldest_unpublished_age_seconds"] == pytest.approx(
        OUTBOX_OLDEST.total_seconds(), abs=60)
    assert row["duplicate_completion_events"] == RUNAWAY_DUPLICATES
    assert row["duplicate_result_events"] == RUNAWAY_DUPLICATES
    assert row["duplicate_resource_events"] == RUNAWAY_DUPLICATES


def test_infinite_timestamps_and_huge_counters_never_break_the_view(conn: Connection) -> None:
    """A corrupt row must not fail the query for every other batch (or inspect/finalizer)."""
    seeder = Seeder(conn)
    infinite = seeder.insert_batch(BatchSpec(status="FETCHING_CONTENT", state="WAITING_CALLBACKS",
                                             completed=5, finished=False))
    huge = seeder.insert_batch(BatchSpec(status="FETCHING_CONTENT", state="WAITING_CALLBACKS",
                                         budget=30, completed=5, finished=False))
    conn.execute(text("UPDATE cj_batch_states SET last_activity_at = 'infinity'"
                      " WHERE batch_id = :id"), {"id": infinite})
    conn.execute(text("UPDATE cj_batch_states SET submitted_comparisons = 2147483647,"
                      " completed_comparisons = 2147483647, failed_comparisons = 2147483647"
                      " WHERE batch_id = :id"), {"id": huge})
    seeder.outbox_backlog(pending=1, failed=0, oldest=timedelta(minutes=1))
    updated = conn.execute(text("UPDATE event_outbox SET created_at = '-infinity'"
                                " WHERE published_at IS NULL"))
    assert updated.rowcount == 1
    rows = conn.execute(text("SELECT cj_batch_id, state_age_seconds, pending_callbacks,"
                             " progress_ratio FROM cj_batch_health")).mappings().all()
    by_id = {r["cj_batch_id"]: r for r in rows}
    assert by_id[infinite]["state_age_seconds"] is None
    assert by_id[huge]["pending_callbacks"] == -2147483647
    assert by_id[huge]["progress_ratio"] == pytest.approx(2 * 2147483647 / 30)
    outbox = conn.execute(text("SELECT unpublished_events, oldest_unpublished_age_seconds"
                               " FROM cj_outbox_health")).one()
    assert tuple(outbox) == (1, 0)
