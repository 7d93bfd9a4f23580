"""The rows of one poll -> an immutable Snapshot: parsing, the exported set, the aggregates.

Pure (no database, no Prometheus): exporter.poll.query fetches the rows (exporter.poll.incremental
keeps them between polls), exporter.collector turns a Snapshot into metric families. A row that
does not fit the contract is skipped and counted, never fatal.
"""

from __future__ import annotations

import logging
import math
import sys
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from exporter.vocabulary import PROBLEM_COLUMNS

log = logging.getLogger(__name__)

NO_STATE = "NONE"  # label for a batch that has no cj_batch_states row yet


# slots: the incremental poll keeps one BatchRow per watched batch between polls (11,200 at 10k
# in flight), and a slotted row is less than half the size of one with a __dict__.
@dataclass(frozen=True, slots=True)
class BatchRow:
    cj_batch_id: int
    bos_batch_id: str
    cj_state: str
    upload_status: str
    last_activity: float  # Unix seconds
    completed_at: float | None
    total_budget: int | None
    total_comparisons: int | None
    submitted_comparisons: int | None
    completed_comparisons: int | None
    failed_comparisons: int | None
    pending_callbacks: int | None
    progress_ratio: float | None
    grade_projections: int
    anchors_flagged: int
    anchors_in_metadata: int
    anchors_by_id: int
    anchor_mismatches: int
    completion_events: int
    result_events: int
    resource_events: int
    completion_event_burst: int
    is_terminal: bool
    problems: frozenset[str]


@dataclass(frozen=True)
class OutboxFacts:
    unpublished_events: int
    failed_events: int
    oldest_unpublished_age_seconds: float


@dataclass(frozen=True)
class Snapshot:
    taken_at: float
    duration_seconds: float
    batches: tuple[BatchRow, ...]  # the exported set, capped at max_batches
    watched: int
    dropped: int
    malformed_rows: int
    by_state: Mapping[tuple[str, str], int]
    problem_counts: Mapping[str, int]
    duplicate_events: Mapping[str, int]
    outbox: OutboxFacts
    full_poll: bool = True  # every watched row was read (else only the changed ones)
    batches_read: int = 0  # rows of cj_batch_health this poll read


def build_snapshot(rows: Sequence[Mapping[Any, Any]], outbox: Mapping[Any, Any], *,
                   now: float, duration: float, recent_window: float,
                   max_batches: int) -> Snapshot:
    """A Snapshot from every watched row of one full read (the reference an incremental poll
    must equal, exporter.poll.incremental)."""
    parsed = [b for b in (_parse_row(r) for r in rows) if b is not None]
    snap = assemble(parsed, len(rows) - len(parsed), parse_outbox(outbox), now=now,
                    duration=duration, recent_window=recent_window, max_batches=max_batches)
    return replace(snap, batches_read=len(rows))


def assemble(parsed: Collection[BatchRow], malformed: int, outbox: OutboxFacts, *, now: float,
             duration: float, recent_window: float, max_batches: int) -> Snapshot:
    """The exported set and the aggregates of the watched batches `parsed`."""
    exported = [b for b in parsed if _exported(b, now, recent_window)]
    # Problems first, then in-flight, then the most recently active: the cap drops the least
    # useful series, and the same batches win from one poll to the next (no flapping).
    exported.sort(key=_export_order)
    return Snapshot(
        taken_at=now,
        duration_seconds=duration,
        batches=tuple(exported[:max_batches]),
        watched=len(parsed),
        dropped=max(len(exported) - max_batches, 0),
        malformed_rows=malformed,
        by_state=Counter((b.cj_state, b.upload_status) for b in parsed),
        problem_counts=_problem_counts(parsed),
        duplicate_events=_duplicates(parsed),
        outbox=outbox,
    )


def parse_outbox(outbox: Mapping[Any, Any]) -> OutboxFacts:
    return OutboxFacts(
        unpublished_events=int(outbox["unpublished_events"]),
        failed_events=int(outbox["failed_events"]),
        oldest_unpublished_age_seconds=float(outbox["oldest_unpublished_age_seconds"]),
    )


def parse_row(row: Mapping[Any, Any]) -> BatchRow | None:
    """One view row, or None (logged) when it does not fit the contract."""
    return _parse_row(row)


def _export_order(b: BatchRow) -> tuple[bool, bool, float, int]:
    return (not b.problems, b.is_terminal, -b.last_activity, b.cj_batch_id)


def _problem_counts(batches: Iterable[BatchRow]) -> dict[str, int]:
    counts = dict.fromkeys(PROBLEM_COLUMNS, 0)
    for b in batches:
        for p in b.problems:
            counts[p] += 1
    return counts


def _exported(b: BatchRow, now: float, recent_window: float) -> bool:
    return not b.is_terminal or bool(b.problems) or now - b.last_activity <= recent_window


def _duplicates(batches: Collection[BatchRow]) -> dict[str, int]:
    """Events beyond the first per watched batch; resource events beyond one per BOS batch
    run are counted once per BOS batch (its runs share the same events)."""
    resource: dict[str, int] = {}
    for b in batches:
        if "duplicate_charge" in b.problems:  # the runs of one BOS batch agree; max: no order
            resource[b.bos_batch_id] = max(resource.get(b.bos_batch_id, 0),
                                           b.resource_events - 1)
    return {
        "completed": sum(max(b.completion_events - 1, 0) for b in batches),
        "result": sum(max(b.result_events - 1, 0) for b in batches),
        "resource": sum(resource.values()),
    }


def _parse_row(row: Mapping[Any, Any]) -> BatchRow | None:
    """A row that does not fit the contract is logged and skipped, never fatal."""
    try:
        return BatchRow(
            cj_batch_id=int(row["cj_batch_id"]),
            bos_batch_id=str(row["bos_batch_id"]),
            # Interned: thousands of cached rows share a handful of states and statuses.
            cj_state=sys.intern(str(row["cj_state"] or NO_STATE)),
            upload_status=sys.intern(str(row["upload_status"])),
            last_activity=_timestamp(row["last_activity_at"]),
            completed_at=_optional_timestamp(row["completed_at"]),
            total_budget=_optional_int(row["total_budget"]),
            total_comparisons=_optional_int(row["total_comparisons"]),
            submitted_comparisons=_optional_int(row["submitted_comparisons"]),
            completed_comparisons=_optional_int(row["completed_comparisons"]),
            failed_comparisons=_optional_int(row["failed_comparisons"]),
            pending_callbacks=_optional_int(row["pending_callbacks"]),
            progress_ratio=None if row["progress_ratio"] is None else float(row["progress_ratio"]),
            grade_projections=int(row["grade_projections"]),
            anchors_flagged=int(row["anchors_flagged"]),
            anchors_in_metadata=int(row["anchors_in_metadata"]),
            anchors_by_id=int(row["anchors_by_id"]),
            anchor_mismatches=int(row["anchor_mismatches"]),
            completion_events=int(row["completion_events"]),
            result_events=int(row["result_events"]),
            resource_events=int(row["resource_events"]),
            completion_event_burst=int(row["completion_event_burst"]),
            is_terminal=bool(row["is_terminal"]),
            problems=_shared(frozenset(p for p, column in PROBLEM_COLUMNS.items()
                                       if row[column])),
        )
    except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
        log.warning("skipping malformed cj_batch_health row %r: %s",
                    row.get("cj_batch_id"), exc)
        return None


_PROBLEM_SETS: dict[frozenset[str], frozenset[str]] = {}


def _shared(problems: frozenset[str]) -> frozenset[str]:
    """One object per distinct problem set (at most 2^8 of them), not one per cached row."""
    return _PROBLEM_SETS.setdefault(problems, problems)


def _timestamp(value: float | datetime) -> float:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("naive timestamp from the view")
        value = value.timestamp()
    if not math.isfinite(value):
        raise ValueError(f"timestamp is {value}")
    return float(value)


def _optional_timestamp(value: float | datetime | None) -> float | None:
    return None if value is None else _timestamp(value)


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)
