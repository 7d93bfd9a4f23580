"""The view and the poll over the batches the CJ service's own code wrote
(../shared/upstream/fixtures), loaded on the service's migrated schema and on the project's
reference schema: exactly what MANIFEST.md says a correct monitor flags on each batch, and
nothing else (tests/support/manifest.py spells it in the vocabulary's labels)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from exporter.config import Settings
from exporter.poll import query
from exporter.vocabulary import PROBLEM_COLUMNS, UNREADABLE_DOCUMENT_COLUMNS
from tests.support.database import Server
from tests.support.manifest import EXPECTED_CHARGES, EXPECTED_PROBLEMS, SUPERSEDED_BY
from tests.support.upstream import SCHEMAS, UpstreamDb, upstream_database


@pytest.fixture(scope="module", params=SCHEMAS)
def fixture_db(request: pytest.FixtureRequest, pg_server: Server) -> Iterator[UpstreamDb]:
    with upstream_database(pg_server, request.param) as db:
        yield db


@pytest.fixture(scope="module")
def rows(fixture_db: UpstreamDb) -> dict[int, dict[str, Any]]:
    with fixture_db.engine.connect() as conn:
        found = conn.execute(text("SELECT * FROM cj_batch_health ORDER BY cj_batch_id"))
        return {r["cj_batch_id"]: dict(r) for r in found.mappings()}


def problems(row: dict[str, Any]) -> frozenset[str]:
    return frozenset(p for p, column in PROBLEM_COLUMNS.items() if row[column])


def test_the_view_flags_exactly_what_the_manifest_says(rows: dict[int, dict[str, Any]]) -> None:
    assert {b: problems(r) for b, r in rows.items()} == EXPECTED_PROBLEMS


def test_nothing_is_unreadable_in_the_fixture(rows: dict[int, dict[str, Any]]) -> None:
    for row in rows.values():
        assert all(row[c] == 0 for c in UNREADABLE_DOCUMENT_COLUMNS.values()), row["cj_batch_id"]


def test_charges_are_attributed_per_run_by_processing_id(
        rows: dict[int, dict[str, Any]]) -> None:
    got = {b: (r["charge_events"], r["overcharged_quantity"]) for b, r in rows.items()}
    assert got == EXPECTED_CHARGES
    # the per-BOS count that made the re-run look like a second charge is still there
    assert rows[2]["resource_events"] == rows[3]["resource_events"] == 7
    assert (rows[1]["charged_quantity"], rows[2]["charged_quantity"]) == (15, 168)


def test_superseded_run_names_the_run_that_owns_its_essays(
        rows: dict[int, dict[str, Any]]) -> None:
    assert {b: r["superseded_by"] for b, r in rows.items() if r["superseded_by"]} == SUPERSEDED_BY
    assert rows[2]["student_essays"] == 0 and rows[2]["pairs_with_winner"] == 40


def test_the_wrong_result_of_batch_20_and_the_right_ones(rows: dict[int, dict[str, Any]]) -> None:
    wedge, healthy = rows[1], rows[4]
    assert wedge["assignment_id"] == "eng5-asg" and wedge["result_assignment_id"] is None
    assert (wedge["result_students"], wedge["result_students_graded"]) == (6, 0)
    assert wedge["projectable"] is True
    assert healthy["result_assignment_id"] == "eng5-asg"
    assert (healthy["result_students"], healthy["result_students_graded"]) == (8, 8)
    assert healthy["result_grades"] == healthy["projected_grades"] == "A,A,A,A,C,C,F,F"
    assert wedge["result_grades"] is None and wedge["projected_grades"] is None
    for rerun in (2, 3):  # no assignment: "U" is the right grade
        assert rows[rerun]["result_students_graded"] == 0 and not rows[rerun]["projectable"]


def test_a_graded_result_whose_grades_the_projections_no_longer_give_is_wrong(
        fixture_db: UpstreamDb) -> None:
    """has_wrong_result's third branch: the result graded every student, but the grades it
    published are not what the projections say now (a rescoring after it was published). The
    comparison is of the sorted grade lists (the view's comment says why): a change of the
    multiset is seen, not two students swapping grades."""
    with fixture_db.engine.connect() as conn, conn.begin() as tx:
        conn.execute(text(
            "UPDATE grade_projections SET primary_grade = 'B' WHERE cj_batch_id = 4"
            " AND els_essay_id = (SELECT min(els_essay_id) FROM grade_projections"
            " WHERE cj_batch_id = 4 AND primary_grade = 'A')"))
        row = dict(conn.execute(text(
            "SELECT * FROM cj_batch_health WHERE cj_batch_id = 4")).mappings().one())
        tx.rollback()  # the module's other tests read the fixture as loaded
    assert row["result_grades"] == "A,A,A,A,C,C,F,F"
    assert row["projected_grades"] == "A,A,A,B,C,C,F,F"
    assert problems(row) == {"wrong_result"}


def test_eng5_national_projections_cannot_be_published(rows: dict[int, dict[str, Any]]) -> None:
    assert rows[5]["unpublishable_projections"] == rows[5]["grade_projections"] == 6
    assert all(r["unpublishable_projections"] == 0 for b, r in rows.items() if b != 5)


def test_diagnostics_columns_as_upstream_s_script_shows_them(
        rows: dict[int, dict[str, Any]]) -> None:
    """inspect_batch_state.py's lines: partial scoring flag, threshold, iteration, batching
    mode, overrides, comparison budget."""
    pre_fix, head = rows[1], rows[4]
    assert (pre_fix["partial_scoring_triggered"], pre_fix["completion_threshold_pct"],
            pre_fix["current_iteration"], pre_fix["llm_batching_mode"],
            pre_fix["budget_source"], pre_fix["has_config_overrides"]) == (
                True, 95, 0, None, None, False)
    assert (head["partial_scoring_triggered"], head["current_iteration"],
            head["llm_batching_mode"], head["budget_max_pairs"], head["budget_source"],
            head["has_config_overrides"]) == (False, 1, "per_request", 48, "runner_override",
                                              False)
    assert rows[8]["budget_progress"] == pytest.approx(20 / 30)
    assert rows[8]["partial_scoring_threshold_reached"] is False
    assert head["budget_progress"] == 1.0 and head["partial_scoring_threshold_reached"] is True


def test_every_anchor_resolves_by_known_grade(rows: dict[int, dict[str, Any]]) -> None:
    anchors = {1: 8, 2: 0, 3: 0, 4: 8, 5: 9, 6: 8, 7: 8, 8: 8}
    for batch, count in anchors.items():
        r = rows[batch]
        assert (r["anchors_by_anchor_grade"], r["anchors_by_known_grade"],
                r["anchors_by_text_storage_id"], r["anchors_by_anchor_ref_id"],
                r["anchors_unresolved"]) == (0, count, 0, 0, 0), batch


def test_no_metadata_invariant_is_broken_and_pre_adr_0020_is_left_alone(
        rows: dict[int, dict[str, Any]]) -> None:
    for batch, r in rows.items():
        assert r["rehydration_mismatched_fields"] is None, batch
        assert r["budget_source_violation"] is None, batch
    for pre_adr_0020 in (1, 2, 3):  # NULL processing_metadata: harmless upstream
        assert not rows[pre_adr_0020]["metadata_incomplete"]


def test_the_poll_exports_exactly_the_manifest_s_problems(fixture_db: UpstreamDb) -> None:
    snap = query.poll(fixture_db.engine, Settings())
    flagged = {b.cj_batch_id: b.problems for b in snap.batches}
    assert {b: p for b, p in flagged.items() if p} == {
        b: p for b, p in EXPECTED_PROBLEMS.items() if p}
    assert snap.malformed_rows == 0
    assert snap.overcharged_quantity == 140
    assert snap.duplicate_events == {"completed": 5, "result": 5, "resource": 5}
