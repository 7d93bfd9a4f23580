"""exporter.poll.snapshot.build_snapshot on rows shaped as the poll query returns them: which
batches are exported, the cap and its order, malformed rows skipped and counted, the aggregates
and the duplicate counts. No database: the same function on real rows is in tests/db/."""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from exporter.poll import query
from exporter.poll.snapshot import NO_STATE, Snapshot, build_snapshot
from exporter.vocabulary import PROBLEM_COLUMNS
from tests.support.rows import EMPTY_OUTBOX, NOW, in_flight_row, view_row

RECENT = 3600.0  # the recent window of these tests, seconds


def snapshot(rows: Sequence[Mapping[str, Any]], outbox: Mapping[str, Any] = EMPTY_OUTBOX,
             max_batches: int = 100) -> Snapshot:
    return build_snapshot(rows, outbox, now=NOW, duration=0.25, recent_window=RECENT,
                          max_batches=max_batches)


def ids(snap: Snapshot) -> list[int]:
    return [b.cj_batch_id for b in snap.batches]


def test_the_row_factory_has_exactly_the_columns_the_poll_selects() -> None:
    assert sorted(view_row(1)) == sorted(query._VIEW_COLUMNS)


def test_exported_set_is_unfinished_or_problem_or_recently_active() -> None:
    rows = [
        view_row(1, idle=RECENT),  # finished, healthy, just inside the window
        view_row(2, idle=RECENT + 1),  # finished, healthy, just outside: watched only
        view_row(3, idle=30 * 86400.0, problems=["duplicate_completion"]),  # old but broken
        in_flight_row(4, idle=30 * 86400.0),  # old but unfinished
    ]
    snap = snapshot(rows)
    assert sorted(ids(snap)) == [1, 3, 4]
    assert snap.watched == 4 and snap.dropped == 0 and snap.malformed_rows == 0
    # the aggregates count every watched batch, exported or not
    assert sum(snap.by_state.values()) == 4
    assert snap.taken_at == NOW and snap.duration_seconds == 0.25


def test_the_cap_keeps_problems_then_in_flight_then_the_most_recent() -> None:
    rows = [
        view_row(10, idle=10.0),  # healthy, finished, most recent
        view_row(11, idle=20.0),
        in_flight_row(12, idle=500.0),
        in_flight_row(13, idle=100.0),
        view_row(14, idle=900.0, problems=["anchor_mismatch"]),
        view_row(15, idle=800.0, problems=["wedged"], is_terminal=False),
        view_row(16, idle=800.0, problems=["stuck_scoring"], is_terminal=False),
    ]
    full = snapshot(rows)
    # problems first (in-flight before finished, then the most recent, then the lowest id),
    # then in flight, then finished, each by most recent activity
    assert ids(full) == [15, 16, 14, 13, 12, 10, 11]
    capped = snapshot(rows, max_batches=4)
    assert ids(capped) == [15, 16, 14, 13]
    assert capped.dropped == 3 and capped.watched == 7
    # the same batches win whatever order the database returns the rows in (no flapping)
    shuffled = rows[:]
    random.Random(3).shuffle(shuffled)
    assert ids(snapshot(shuffled, max_batches=4)) == ids(capped)
    # the aggregates are over the whole watched set, not the capped one
    assert capped.problem_counts["anchor_mismatch"] == 1
    assert sum(capped.by_state.values()) == 7


def test_a_cap_above_the_exported_count_drops_nothing() -> None:
    snap = snapshot([view_row(1), view_row(2)], max_batches=2)
    assert len(snap.batches) == 2 and snap.dropped == 0


@pytest.mark.parametrize(("column", "value"), [
    ("last_activity_at", math.inf),  # 'infinity' in Postgres
    ("last_activity_at", -math.inf),
    ("last_activity_at", math.nan),
    ("completed_at", math.inf),
    ("last_activity_at", datetime(2025, 6, 1, 12, 0)),  # naive: the zone is unknown
    ("last_activity_at", None),
    ("cj_batch_id", "not-a-number"),
    ("grade_projections", None),  # NOT NULL in the view: a drifted view
    ("completion_events", "many"),
])
def test_a_malformed_row_is_skipped_and_counted_never_fatal(
        column: str, value: Any, caplog: pytest.LogCaptureFixture) -> None:
    rows = [view_row(1), view_row(2, **{column: value}), in_flight_row(3)]
    with caplog.at_level(logging.WARNING, logger="exporter.poll.snapshot"):
        snap = snapshot(rows)
    assert sorted(ids(snap)) == [1, 3]
    assert snap.malformed_rows == 1 and snap.watched == 2
    assert "skipping malformed cj_batch_health row" in caplog.text


def test_a_row_missing_a_column_is_malformed() -> None:
    broken = view_row(2)
    del broken["is_wedged"]
    snap = snapshot([view_row(1), broken])
    assert ids(snap) == [1] and snap.malformed_rows == 1


def test_values_are_parsed_and_timestamps_may_be_aware_datetimes() -> None:
    at = datetime(2025, 6, 15, 8, 0, tzinfo=UTC)
    row = in_flight_row(7, last_activity_at=at, cj_state=None, total_budget=None,
                        progress_ratio=None, pending_callbacks=None)
    (batch,) = snapshot([row]).batches
    assert batch.last_activity == at.timestamp() and batch.completed_at is None
    assert batch.cj_state == NO_STATE  # no cj_batch_states row yet
    assert batch.total_budget is None and batch.progress_ratio is None
    assert batch.pending_callbacks is None and batch.problems == frozenset()
    with pytest.raises(dataclasses.FrozenInstanceError):
        batch.cj_state = "COMPLETED"  # type: ignore[misc]


def test_problem_counts_by_state_and_the_outbox() -> None:
    rows = [
        view_row(1, problems=["wedged", "anchor_mismatch", "missing_projections"],
                 cj_state="WAITING_CALLBACKS"),
        view_row(2, problems=["stuck_scoring"], cj_state="SCORING",
                 upload_status="FETCHING_CONTENT", is_terminal=False),
        view_row(3, problems=["anchor_mismatch"]),
        view_row(4, idle=RECENT * 10),  # watched, not exported: still counted
    ]
    outbox = {"unpublished_events": 7, "failed_events": 3,
              "oldest_unpublished_age_seconds": 1500.5}
    snap = snapshot(rows, outbox)
    assert dict(snap.problem_counts) == {**dict.fromkeys(PROBLEM_COLUMNS, 0), "wedged": 1,
                                         "anchor_mismatch": 2, "missing_projections": 1,
                                         "stuck_scoring": 1}
    assert dict(snap.by_state) == {("WAITING_CALLBACKS", "COMPLETE_STABLE"): 1,
                                   ("SCORING", "FETCHING_CONTENT"): 1,
                                   ("COMPLETED", "COMPLETE_STABLE"): 2}
    assert (snap.outbox.unpublished_events, snap.outbox.failed_events,
            snap.outbox.oldest_unpublished_age_seconds) == (7, 3, 1500.5)
    assert sorted(b.cj_batch_id for b in snap.batches if b.problems) == [1, 2, 3]


def test_duplicates_beyond_the_first_and_resource_events_once_per_bos_batch() -> None:
    rows = [
        # a runaway loop: 83 runs of the three events for one CJ batch
        view_row(1, problems=["duplicate_completion", "duplicate_charge"],
                 completion_events=83, result_events=83, resource_events=83),
        # one BOS batch run twice, each run finalized once: resource events are per BOS
        # batch, so both runs see 2 of them, which is legitimate (no duplicate_charge)
        view_row(2, bos_batch_id="bos-rerun", resource_events=2),
        view_row(3, bos_batch_id="bos-rerun", resource_events=2),
        # a BOS batch charged three times over its two runs: counted once, not per run
        view_row(4, bos_batch_id="bos-charged", problems=["duplicate_charge"], resource_events=3),
        view_row(5, bos_batch_id="bos-charged", problems=["duplicate_charge"], resource_events=3),
        in_flight_row(6),  # no events yet: never negative
    ]
    assert snapshot(rows).duplicate_events == {"completed": 82, "result": 82,
                                               "resource": 82 + 2}
