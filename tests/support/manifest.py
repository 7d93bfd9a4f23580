"""What ../shared/upstream/fixtures/MANIFEST.md says a correct monitor flags on each of the
upstream fixture's batches, in this project's problem labels (exporter/vocabulary.py).

MANIFEST.md's "must flag" column, kind by kind:

1 (Batch 20 wedge): wedged; missing projections although 8 anchors exist; anchor flag mismatch;
  the published result is wrong (every grade "U", no assignment_id). NOT: duplicate completion,
  duplicate charge, and NOT metadata_incomplete (its NULL processing_metadata is a harmless
  pre-ADR-0020 artefact: upstream falls back to its default budget).
2 (runaway, superseded): duplicate completion; duplicate charge (6 charges for processing_id
  "2", 5 x 28 = 140 credits over-charged); wedged; superseded (0 essays, run 3 owns them).
  NOT missing projections (no anchors: "U" is right).
3 (legitimate re-run of 2's BOS batch): wedged. NOT duplicate charge or completion.
4 (healthy), 8 (in flight after shift_clock.sql): nothing.
5 (ENG5 national, stuck in SCORING): stuck in SCORING; completion published without a result
  or a charge (so: completion without result, and unbilled); the result is unpublishable
  (grades 1-9 fail the letter_grade pattern).
6 (user_id NULL, stuck in SCORING): stuck in SCORING; no events; cannot be charged (unbilled).
7 (wedged before its first scoring): wedged (all callbacks in, still WAITING_CALLBACKS).
"""

from __future__ import annotations

from exporter.vocabulary import problem_set

EXPECTED_PROBLEMS: dict[int, frozenset[str]] = {
    1: problem_set("wedged", "missing_projections", "anchor_mismatch", "wrong_result"),
    2: problem_set("wedged", "duplicate_completion", "duplicate_charge", "superseded"),
    3: problem_set("wedged"),
    4: problem_set(),
    5: problem_set("stuck_scoring", "completion_without_result", "unbilled",
                   "unpublishable_result"),
    6: problem_set("stuck_scoring", "unbilled"),
    7: problem_set("wedged"),
    8: problem_set(),
}

# Charges per run (resource-consumption events whose data.processing_id is the run's id) and
# the quantity charged beyond the first charge (MANIFEST.md's events table).
EXPECTED_CHARGES: dict[int, tuple[int, int]] = {
    1: (1, 0), 2: (6, 140), 3: (1, 0), 4: (1, 0), 5: (0, 0), 6: (0, 0), 7: (0, 0), 8: (0, 0),
}
SUPERSEDED_BY = {2: 3}  # run 2's essays now belong to run 3 of the same BOS batch
