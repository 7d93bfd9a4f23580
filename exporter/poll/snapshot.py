"""The rows of one poll -> an immutable Snapshot: parsing, the exported set, the aggregates.

Pure (no database, no Prometheus, no logging): exporter.poll.query fetches the rows
(exporter.poll.incremental keeps them between polls), exporter.collector turns a Snapshot into
metric families, and the poller logs what the Snapshot reports (rate-limited,
exporter.poll.warnings). A row that does not fit the contract is skipped and counted, never
fatal; a batch with unreadable JSON documents is exported with the facts the view could read and
its unreadable_* counts.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from types import MappingProxyType
from typing import Any

from exporter.vocabulary import (
    ANCHOR_GRADE_TIERS,
    PROBLEM_COLUMNS,
    UNREADABLE_DOCUMENT_COLUMNS,
    UNRESOLVED,
)

NO_STATE = "NONE"  # label for a batch that has no cj_batch_states row yet
# tier label -> view column (cj_batch_anchor_grade_resolution{tier})
TIER_COLUMNS: Mapping[str, str] = {
    **{tier: f"anchors_by_{tier}" for tier in ANCHOR_GRADE_TIERS}, UNRESOLVED: "anchors_unresolved"}


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
    charge_events: int  # resource-consumption events naming this run (data.processing_id)
    overcharged_quantity: float
    budget_progress: float | None  # completed / total_budget
    partial_scoring_triggered: bool | None
    partial_scoring_threshold_reached: bool | None
    is_terminal: bool
    problems: frozenset[str]
    # document label (vocabulary.UNREADABLE_DOCUMENT_COLUMNS) -> count, only the kinds above 0
    unreadable: Mapping[str, int]
    # tier (TIER_COLUMNS) -> anchors it resolves; empty for a batch without anchors
    anchor_tiers: Mapping[str, int]

    @property
    def flagged(self) -> bool:
        """A problem, or facts lost to unreadable documents: worth a series however old."""
        return bool(self.problems or self.unreadable)


@dataclass(frozen=True)
class OutboxFacts:
    unpublished_events: int
    failed_events: int
    oldest_unpublished_age_seconds: float
    undated_unpublished_events: int


@dataclass(frozen=True)
class Snapshot:
    taken_at: float  # Unix seconds on the database's clock (its now() of the poll)
    duration_seconds: float
    batches: tuple[BatchRow, ...]  # the exported set, capped at max_batches
    watched: int
    dropped: int
    malformed_rows: int
    malformed: Mapping[str, str]  # "row <cj_batch_id>" of each skipped row -> why
    unreadable_documents: Mapping[str, int]  # document label -> count over the watched set
    by_state: Mapping[tuple[str, str], int]
    problem_counts: Mapping[str, int]
    duplicate_events: Mapping[str, int]
    overcharged_quantity: float  # over the watched set
    outbox: OutboxFacts
    full_poll: bool = True  # every watched row was read (else only the changed ones)
    batches_read: int = 0  # rows of cj_batch_health this poll read


def build_snapshot(rows: Sequence[Mapping[Any, Any]], outbox: Mapping[Any, Any], *,
                   now: float, duration: float, recent_window: float,
                   max_batches: int) -> Snapshot:
    """A Snapshot from every watched row of one full read (the reference an incremental poll
    must equal, exporter.poll.incremental)."""
    parsed: list[BatchRow] = []
    malformed: dict[str, str] = {}
    for row in rows:
        result = parse_row(row)
        if isinstance(result, BatchRow):
            parsed.append(result)
        else:
            malformed[malformed_key(row.get("cj_batch_id", "?"))] = result
    snap = assemble(parsed, malformed, parse_outbox(outbox), now=now, duration=duration,
                    recent_window=recent_window, max_batches=max_batches)
    return replace(snap, batches_read=len(rows))


def assemble(parsed: Collection[BatchRow], malformed: Mapping[str, str], outbox: OutboxFacts, *,
             now: float, duration: float, recent_window: float, max_batches: int) -> Snapshot:
    """The exported set and the aggregates of the watched batches `parsed`."""
    exported = [b for b in parsed if _exported(b, now, recent_window)]
    exported.sort(key=export_order)
    return Snapshot(
        taken_at=now,
        duration_seconds=duration,
        batches=tuple(exported[:max_batches]),
        watched=len(parsed),
        dropped=max(len(exported) - max_batches, 0),
        malformed_rows=len(malformed),
        malformed=malformed,
        unreadable_documents={d: sum(b.unreadable.get(d, 0) for b in parsed)
                              for d in UNREADABLE_DOCUMENT_COLUMNS},
        by_state=Counter((b.cj_state, b.upload_status) for b in parsed),
        problem_counts=_problem_counts(parsed),
        duplicate_events=_duplicates(parsed),
        overcharged_quantity=sum(b.overcharged_quantity for b in parsed),
        outbox=outbox,
    )


def parse_outbox(outbox: Mapping[Any, Any]) -> OutboxFacts:
    return OutboxFacts(
        unpublished_events=int(outbox["unpublished_events"]),
        failed_events=int(outbox["failed_events"]),
        oldest_unpublished_age_seconds=float(outbox["oldest_unpublished_age_seconds"]),
        undated_unpublished_events=int(outbox["undated_unpublished_events"]),
    )


def parse_row(row: Mapping[Any, Any]) -> BatchRow | str:
    """The row as a BatchRow, or why it does not fit the contract (it is skipped, never
    fatal)."""
    return _parse_row(row)


def malformed_key(cj_batch_id: object) -> str:
    """How Snapshot.malformed names a skipped row (the poller's log line says it)."""
    return f"row {cj_batch_id}"


Key = tuple[bool, bool, bool, float, int]


def export_order(b: BatchRow) -> Key:
    """Problems first, then unreadable documents, then in-flight, then the most recently
    active: the cap drops the least useful series, and the same batches win from one poll to
    the next (no flapping). exporter.poll.ledger keeps its lists in this order too."""
    return (not b.problems, not b.unreadable, b.is_terminal, -b.last_activity, b.cj_batch_id)


def _problem_counts(batches: Iterable[BatchRow]) -> dict[str, int]:
    counts = dict.fromkeys(PROBLEM_COLUMNS, 0)
    for b in batches:
        for p in b.problems:
            counts[p] += 1
    return counts


def _exported(b: BatchRow, now: float, recent_window: float) -> bool:
    return not b.is_terminal or b.flagged or now - b.last_activity <= recent_window


def _duplicates(batches: Collection[BatchRow]) -> dict[str, int]:
    """Events beyond the first per watched batch. Charges are the run's own (attributed by
    data.processing_id), so a BOS batch's runs never share one and nothing is counted twice."""
    return {
        "completed": sum(max(b.completion_events - 1, 0) for b in batches),
        "result": sum(max(b.result_events - 1, 0) for b in batches),
        "resource": sum(max(b.charge_events - 1, 0) for b in batches),
    }


def _parse_row(row: Mapping[Any, Any]) -> BatchRow | str:
    """The row as a BatchRow, or why it does not fit the contract (it is skipped, never
    fatal)."""
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
            charge_events=int(row["charge_events"]),
            overcharged_quantity=float(row["overcharged_quantity"]),
            budget_progress=_optional_float(row["budget_progress"]),
            partial_scoring_triggered=_optional_bool(row["partial_scoring_triggered"]),
            partial_scoring_threshold_reached=_optional_bool(
                row["partial_scoring_threshold_reached"]),
            is_terminal=bool(row["is_terminal"]),
            problems=_shared(frozenset(p for p, column in PROBLEM_COLUMNS.items()
                                       if row[column])),
            unreadable=_counts({d: int(row[column])
                                for d, column in UNREADABLE_DOCUMENT_COLUMNS.items()}),
            anchor_tiers=_anchor_tiers(row),
        )
    except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
        return f"{type(exc).__name__}: {exc}"


_PROBLEM_SETS: dict[frozenset[str], frozenset[str]] = {}


def _shared(problems: frozenset[str]) -> frozenset[str]:
    """One object per distinct problem set, not one per kept row."""
    return _PROBLEM_SETS.setdefault(problems, problems)


_NONE: Mapping[str, int] = MappingProxyType({})


def _counts(counts: dict[str, int]) -> Mapping[str, int]:
    """Only the kinds above 0; the shared empty mapping when there are none (almost every row:
    the incremental poll keeps one row per watched batch)."""
    above = {k: n for k, n in counts.items() if n}
    return above if above else _NONE


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


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _optional_bool(value: Any) -> bool | None:
    return None if value is None else bool(value)


def _anchor_tiers(row: Mapping[Any, Any]) -> Mapping[str, int]:
    """Every tier (zeros too) for a batch with anchors; none for one without."""
    counts = {tier: int(row[column]) for tier, column in TIER_COLUMNS.items()}
    return counts if any(counts.values()) else _NONE
