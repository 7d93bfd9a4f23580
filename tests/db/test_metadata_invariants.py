"""Issue 16: the invariants of the metadata-persistence work, on the CJ service's migrated schema
with the upstream fixture loaded beside (its batches must stay as MANIFEST.md says).

Each violation is planted next to the legitimate case it must not be confused with, and the
view must flag exactly the violations: the budget source (service_default through three
continuations, a runner override, and the flips), the rehydrated request (every named field, and
differences that are not differences), the anchor-grade tiers (each tier, an anchor no tier
resolves), and budget progress against partial scoring. A pre-ADR-0020 batch (NULL state
metadata, which upstream tolerates) is never flagged by these rules.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, text

from exporter.demo.scenarios import GRADES, BatchSpec, Seeder
from exporter.vocabulary import PROBLEM_COLUMNS
from tests.support.database import Server
from tests.support.manifest import EXPECTED_PROBLEMS
from tests.support.upstream import UpstreamDb, upstream_database

# In flight with callbacks pending: nothing else is wrong with these batches.
IN_FLIGHT: dict[str, Any] = {"status": "PERFORMING_COMPARISONS", "state": "WAITING_CALLBACKS",
                              "budget": 120, "submitted": 90, "completed": 80,
                              "finished": False, "idle": timedelta(minutes=1)}
RUNNER: dict[str, Any] = {**IN_FLIGHT, "budget": 48, "submitted": 40, "completed": 30,
                           "request": {"max_comparisons_override": 48}}
OVERRIDES = {"model_override": "gpt-5.1", "temperature_override": 0.3}

Change = Callable[[dict[str, Any]], None]


def state_doc(change: Change) -> Callable[[Connection, int], None]:
    """A post-insert change of the state row's processing_metadata (read, change, write back)."""
    def apply(conn: Connection, batch: int) -> None:
        doc = json.loads(conn.execute(text(
            "SELECT processing_metadata::text FROM cj_batch_states WHERE batch_id = :b"),
            {"b": batch}).scalar_one())
        change(doc)
        conn.execute(text("UPDATE cj_batch_states SET processing_metadata = CAST(:m AS json)"
                          " WHERE batch_id = :b"), {"m": json.dumps(doc), "b": batch})
    return apply


def raw_state_doc(document: str) -> Callable[[Connection, int], None]:
    def apply(conn: Connection, batch: int) -> None:
        conn.execute(text("UPDATE cj_batch_states SET processing_metadata = CAST(:m AS json)"
                          " WHERE batch_id = :b"), {"m": document, "b": batch})
    return apply


def null_state_doc(conn: Connection, batch: int) -> None:
    conn.execute(text("UPDATE cj_batch_states SET processing_metadata = NULL"
                      " WHERE batch_id = :b"), {"b": batch})


def anchors_moved(conn: Connection, batch: int) -> None:
    """The anchors' text_storage_id no reference has (content re-uploaded): tier 3 misses."""
    conn.execute(text("UPDATE cj_processed_essays SET text_storage_id = 'moved-' || els_essay_id"
                      " WHERE cj_batch_id = :b AND is_anchor"), {"b": batch})


def set_budget(max_pairs: int) -> Change:
    def change(doc: dict[str, Any]) -> None:
        doc["comparison_budget"]["max_pairs_requested"] = max_pairs
    return change


NO_GRADE = {"known_grade": None}
# name -> (spec, post-insert changes, the new kinds the view must flag)
CASES: dict[str, tuple[BatchSpec, tuple[Callable[[Connection, int], None], ...], set[str]]] = {
    # --- 1. the budget source never flips ----------------------------------------------------
    "service_default_through_three_continuations": (
        BatchSpec(**IN_FLIGHT, iteration=4), (), set()),
    "runner_override": (BatchSpec(**RUNNER, iteration=3), (), set()),
    "runner_override_at_its_first_submission_without_the_override_stored": (
        # the fixture's batches 4-8: nothing has acted on the missing override yet
        BatchSpec(**IN_FLIGHT, iteration=1, budget_source="runner_override"), (), set()),
    "service_default_although_the_request_has_an_override": (
        BatchSpec(**RUNNER, iteration=1, budget_source="service_default"), (),
        {"budget_source_flip"}),
    "runner_override_after_a_continuation_that_no_request_explains": (
        BatchSpec(**IN_FLIGHT, iteration=3, budget_source="runner_override"), (),
        {"budget_source_flip"}),
    "an_override_derived_from_max_pairs_cap": (
        # the continuation wrote max_pairs_cap into the state's copy as an override
        BatchSpec(**IN_FLIGHT, iteration=3, state_request={"max_comparisons_override": 120},
                  budget_source="runner_override"), (),
        {"budget_source_flip", "rehydration_mismatch"}),
    "a_continuation_changed_the_budget": (
        BatchSpec(**IN_FLIGHT, iteration=3), (state_doc(set_budget(150)),),
        {"budget_source_flip"}),
    "the_same_budget_at_the_first_submission_is_no_change": (
        BatchSpec(**IN_FLIGHT, iteration=1), (state_doc(set_budget(150)),), set()),
    # --- 2. continuations rehydrate from the original request ----------------------------------
    "both_copies_equal": (BatchSpec(**IN_FLIGHT, request={
        "llm_config_overrides": OVERRIDES, "batch_config_overrides": {"batch_size": 10}}),
        (), set()),
    "objects_equal_in_another_key_order_and_null_for_absent": (
        BatchSpec(**IN_FLIGHT, request={"llm_config_overrides": OVERRIDES}),
        (state_doc(lambda d: d["original_request"].update(
            llm_config_overrides=dict(reversed(list(OVERRIDES.items()))),
            batch_config_overrides=None)),), set()),
    **{f"{field}_differs": (BatchSpec(**IN_FLIGHT, request={field: upload}),
                            (state_doc(lambda d, f=field, v=state:  # type: ignore[misc]
                                       d["original_request"].update({f: v})),),
                             {"rehydration_mismatch"})
       for field, upload, state in (
           ("assignment_id", "asg-1", "asg-2"), ("user_id", "teacher-1", "teacher-2"),
           ("language", "sv", "en"), ("course_code", "SV1", "ENG5"),
           ("max_comparisons_override", 48, 60),
           ("llm_config_overrides", OVERRIDES, {**OVERRIDES, "temperature_override": 0.9}),
           ("batch_config_overrides", {"batch_size": 10}, {"batch_size": 20}))},
    "no_state_copy_to_compare": (
        # nothing to compare (metadata_incomplete says what that costs, not this rule)
        BatchSpec(**IN_FLIGHT), (state_doc(lambda d: d.pop("original_request")),), set()),
    # --- 3. anchor grades resolve, and by which tier ---------------------------------------------
    "anchors_by_anchor_grade": (
        BatchSpec(**IN_FLIGHT, anchor_grades=GRADES,
                  anchor_metadata={"anchor_grade": "B", "known_grade": None}), (), set()),
    "anchors_by_known_grade": (BatchSpec(**IN_FLIGHT, anchor_grades=GRADES), (), set()),
    "anchors_by_text_storage_id": (
        BatchSpec(**IN_FLIGHT, anchor_grades=GRADES, anchor_metadata=NO_GRADE), (), set()),
    "anchors_by_anchor_ref_id": (
        BatchSpec(**IN_FLIGHT, anchor_grades=GRADES,
                  anchor_metadata={**NO_GRADE, "text_storage_id": None}), (anchors_moved,),
        set()),
    "an_anchor_no_tier_resolves": (
        BatchSpec(**IN_FLIGHT, anchor_grades=GRADES, unresolved_anchors=1), (),
        {"anchor_grade_unresolved"}),
    "an_anchor_ref_id_that_is_a_number": (
        # upstream looks anchor_ref_id up among str(ref.id): the number 7 is never found
        BatchSpec(**IN_FLIGHT, anchor_grades=("E", "A"),
                  anchor_metadata={**NO_GRADE, "text_storage_id": None, "anchor_ref_id": 7}),
        (anchors_moved,), {"anchor_grade_unresolved"}),
    # --- pre-ADR-0020 batches are never flagged by these rules -----------------------------------
    "pre_adr_0020_with_every_fault": (
        BatchSpec(**IN_FLIGHT, iteration=3, anchor_grades=GRADES, unresolved_anchors=2,
                  request={"user_id": "someone-else"}), (null_state_doc,), set()),
    "unreadable_state_document": (
        # \u0000: ->/->> cannot read it, so its facts are unknown, never a violation
        BatchSpec(**IN_FLIGHT, iteration=3, anchor_grades=GRADES, unresolved_anchors=2),
        (raw_state_doc('{"comparison_budget": {"source": "runner_override", "note":'
                       ' "\\u0000"}}'),), set()),
}


@pytest.fixture(scope="module")
def planted(pg_server: Server) -> Iterator[tuple[UpstreamDb, dict[str, int]]]:
    with upstream_database(pg_server, "alembic_head") as db:
        ids: dict[str, int] = {}
        with db.engine.begin() as conn:
            seeder = Seeder(conn)
            for name, (spec, changes, _) in CASES.items():
                ids[name] = seeder.insert_batch(spec)
                for change in changes:
                    change(conn, ids[name])
        yield db, ids


@pytest.fixture(scope="module")
def rows(planted: tuple[UpstreamDb, dict[str, int]]) -> dict[int, dict[str, Any]]:
    db, _ = planted
    with db.engine.connect() as conn:
        found = conn.execute(text("SELECT * FROM cj_batch_health ORDER BY cj_batch_id"))
        return {r["cj_batch_id"]: dict(r) for r in found.mappings()}


def problems(row: dict[str, Any]) -> set[str]:
    return {p for p, column in PROBLEM_COLUMNS.items() if row[column]}


@pytest.mark.parametrize("name", list(CASES))
def test_exactly_the_planted_violations_are_flagged(
        name: str, planted: tuple[UpstreamDb, dict[str, int]],
        rows: dict[int, dict[str, Any]]) -> None:
    _, ids = planted
    assert problems(rows[ids[name]]) == CASES[name][2], rows[ids[name]]


def test_the_upstream_fixture_beside_them_is_as_the_manifest_says(
        rows: dict[int, dict[str, Any]]) -> None:
    assert {b: problems(rows[b]) for b in EXPECTED_PROBLEMS} == {
        b: set(p) for b, p in EXPECTED_PROBLEMS.items()}


def test_the_budget_violation_says_which_rule(planted: tuple[UpstreamDb, dict[str, int]],
                                              rows: dict[int, dict[str, Any]]) -> None:
    _, ids = planted
    said = {name: rows[ids[name]]["budget_source_violation"] for name in CASES
            if rows[ids[name]]["budget_source_violation"]}
    assert said == {
        "service_default_although_the_request_has_an_override":
            "service_default although the original request has max_comparisons_override",
        "runner_override_after_a_continuation_that_no_request_explains":
            "runner_override after a continuation, not in the original request",
        "an_override_derived_from_max_pairs_cap":
            "runner_override after a continuation, not in the original request",
        "a_continuation_changed_the_budget":
            "max_pairs_requested changed since the first submission fixed total_budget",
    }
    assert rows[ids["runner_override"]]["budget_source"] == "runner_override"
    assert rows[ids["service_default_through_three_continuations"]]["budget_max_pairs"] == 120


def test_the_mismatched_fields_are_named(planted: tuple[UpstreamDb, dict[str, int]],
                                         rows: dict[int, dict[str, Any]]) -> None:
    _, ids = planted
    for field in ("assignment_id", "user_id", "language", "course_code",
                  "max_comparisons_override", "llm_config_overrides", "batch_config_overrides"):
        assert rows[ids[f"{field}_differs"]]["rehydration_mismatched_fields"] == field
    assert rows[ids["an_override_derived_from_max_pairs_cap"]][
        "rehydration_mismatched_fields"] == "max_comparisons_override"


@pytest.mark.parametrize(("name", "tiers"), [
    ("anchors_by_anchor_grade", (5, 0, 0, 0, 0)),
    ("anchors_by_known_grade", (0, 5, 0, 0, 0)),
    ("anchors_by_text_storage_id", (0, 0, 5, 0, 0)),
    ("anchors_by_anchor_ref_id", (0, 0, 0, 5, 0)),
    ("an_anchor_no_tier_resolves", (0, 4, 0, 0, 1)),
    ("an_anchor_ref_id_that_is_a_number", (0, 0, 0, 0, 2)),
    # the gauges still count a pre-ADR-0020 batch's anchors: only the problem is withheld
    ("pre_adr_0020_with_every_fault", (0, 3, 0, 0, 2)),
    # an unreadable state document does not hide the essays' own facts
    ("unreadable_state_document", (0, 3, 0, 0, 2)),
])
def test_anchors_are_counted_by_the_tier_that_resolves_them(
        name: str, tiers: tuple[int, ...], planted: tuple[UpstreamDb, dict[str, int]],
        rows: dict[int, dict[str, Any]]) -> None:
    _, ids = planted
    r = rows[ids[name]]
    assert (r["anchors_by_anchor_grade"], r["anchors_by_known_grade"],
            r["anchors_by_text_storage_id"], r["anchors_by_anchor_ref_id"],
            r["anchors_unresolved"]) == tiers


def test_budget_progress_and_partial_scoring(planted: tuple[UpstreamDb, dict[str, int]]) -> None:
    """completed / total_budget, and the counters against completion_threshold_pct, just under
    and at the threshold; the stored flag is reported as it is (it triggers nothing)."""
    db, _ = planted
    with db.engine.connect() as conn, conn.begin() as tx:  # rolled back: the others' rows stay
        seeder = Seeder(conn, rng=random.Random(16))  # other ids than the module's seeder
        below = seeder.insert_batch(BatchSpec(**{**IN_FLIGHT, "budget": 30, "submitted": 30,
                                                 "completed": 28}))  # 2800 < 30 x 95
        at = seeder.insert_batch(BatchSpec(**{**IN_FLIGHT, "budget": 20, "submitted": 20,
                                              "completed": 19}))  # 1900 = 20 x 95
        conn.execute(text("UPDATE cj_batch_states SET partial_scoring_triggered = true"
                          " WHERE batch_id = :b"), {"b": below})
        got = {r["cj_batch_id"]: r for r in conn.execute(text(
            "SELECT cj_batch_id, budget_progress, partial_scoring_threshold_reached,"
            " partial_scoring_triggered, completion_threshold_pct FROM cj_batch_health"
            " WHERE cj_batch_id IN (:a, :b)"), {"a": below, "b": at}).mappings()}
        tx.rollback()
    assert got[below]["budget_progress"] == pytest.approx(28 / 30)
    assert (got[below]["partial_scoring_threshold_reached"],
            got[below]["partial_scoring_triggered"]) == (False, True)
    assert got[at]["budget_progress"] == pytest.approx(0.95)
    assert (got[at]["partial_scoring_threshold_reached"],
            got[at]["partial_scoring_triggered"]) == (True, False)
