"""Rows of cj_batch_health as exporter.poll.query fetches them (times as epoch seconds, so an
'infinity' arrives as inf), for the unit tests of the snapshot and the collector. The database
tiers read real rows from the real view.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from exporter.vocabulary import PROBLEM_COLUMNS

NOW = 1_750_000_000.0  # the `now` of every unit-test snapshot: Unix seconds, June 2025
EMPTY_OUTBOX = {"unpublished_events": 0, "failed_events": 0,
                "oldest_unpublished_age_seconds": 0.0}


def view_row(cj_batch_id: int, /, *, problems: Iterable[str] = (), idle: float = 60.0,
             **columns: Any) -> dict[str, Any]:
    """A healthy finished batch last active `idle` seconds before NOW, with `problems` flagged
    and any column overridden by name (a name the view does not have is an error)."""
    row: dict[str, Any] = {
        "cj_batch_id": cj_batch_id, "bos_batch_id": f"bos-{cj_batch_id}",
        "cj_state": "COMPLETED", "upload_status": "COMPLETE_STABLE",
        "last_activity_at": NOW - idle, "completed_at": NOW - idle,
        "total_budget": 30, "total_comparisons": 30, "submitted_comparisons": 30,
        "completed_comparisons": 28, "failed_comparisons": 2, "pending_callbacks": 0,
        "progress_ratio": 1.0, "grade_projections": 6, "anchors_flagged": 5,
        "anchors_in_metadata": 5, "anchors_by_id": 5, "anchor_mismatches": 0,
        "completion_events": 1, "result_events": 1, "resource_events": 1,
        "completion_event_burst": 1, "is_terminal": True,
    }
    wanted = set(problems)
    assert wanted <= set(PROBLEM_COLUMNS), wanted - set(PROBLEM_COLUMNS)
    row.update({column: label in wanted for label, column in PROBLEM_COLUMNS.items()})
    unknown = set(columns) - set(row)
    assert not unknown, f"cj_batch_health has no column {sorted(unknown)}"
    row.update(columns)
    return row


def in_flight_row(cj_batch_id: int, /, **columns: Any) -> dict[str, Any]:
    """A batch still comparing: WAITING_CALLBACKS, not terminal, callbacks pending."""
    defaults: dict[str, Any] = {
        "cj_state": "WAITING_CALLBACKS", "upload_status": "PERFORMING_COMPARISONS",
        "completed_at": None, "completed_comparisons": 10, "failed_comparisons": 1,
        "pending_callbacks": 19, "progress_ratio": 11 / 30, "grade_projections": 0,
        "completion_events": 0, "result_events": 0, "resource_events": 0,
        "completion_event_burst": 0, "is_terminal": False,
    }
    return view_row(cj_batch_id, **{**defaults, **columns})
