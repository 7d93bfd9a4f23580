"""The three completion events of a finalized batch, with upstream's payloads.

What `publish_dual_assessment_events` (cj_core_logic/dual_event_publisher.py) puts in them:
- completion to ELS: students are told apart from anchors by the `ANCHOR_` id prefix (not the
  column); status completed_successfully when any student has a score, else failed_critically;
- result to RAS: every essay ranked by score (anchors included, flagged is_anchor, graded "U"
  because projections exist for students only), the anchor grade distribution upstream
  computes (all zeros for that same reason), an *estimated* comparison_count n(n-1)/2;
- resource consumption: quantity = students(students-1)/2, processing_id = the CJ batch id;
  only written when the upload has a user_id (upstream raises and swallows otherwise).
Upstream quirks are kept on purpose: consumers already rely on these shapes.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from exporter.finalizer.projection import Projection
from exporter.finalizer.store import Batch
from exporter.upstream import events as ev

ANCHOR_PREFIX = "ANCHOR_"
UNKNOWN = "unknown"  # model / provider when no comparison recorded one
GRADE_TO_NORMALIZED = {"A": 1.0, "B": 0.8, "C": 0.6, "D": 0.4, "E": 0.2, "F": 0.0, "U": 0.0}
DISTRIBUTION_GRADES = ("A", "B", "C", "D", "E", "F", "U")


@dataclass(frozen=True)
class Ranked:
    els_essay_id: str
    score: float | None
    rank: int

    @property
    def is_anchor(self) -> bool:
        return self.els_essay_id.startswith(ANCHOR_PREFIX)


def rank(scores: Mapping[str, float | None]) -> list[Ranked]:
    """Score descending, NULLs last (get_essay_rankings); ties broken by id for determinism."""
    ordered = sorted(scores.items(),
                     key=lambda kv: (kv[1] is None, -(kv[1] or 0.0), kv[0]))
    return [Ranked(essay, score, i) for i, (essay, score) in enumerate(ordered, start=1)]


def canonical_uuid(value: str) -> str:
    """Upstream publishes UUID(event_correlation_id): the canonical lower-case form."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return value


def build(batch: Batch, scores: Mapping[str, float | None], projection: Projection | None,
          model: tuple[str | None, str | None], at: datetime) -> list[ev.OutboxRow]:
    batch = replace(batch, correlation_id=canonical_uuid(batch.correlation_id))
    rankings = rank(scores)
    students = [r for r in rankings if not r.is_anchor]
    anchors = [r for r in rankings if r.is_anchor]
    started = batch.created_at.replace(tzinfo=UTC)
    rows = [
        completion(batch, students, started, at),
        result(batch, rankings, anchors, projection, model, started, at),
    ]
    if batch.user_id:
        quantity = len(students) * (len(students) - 1) // 2
        rows.append(ev.resource_row(batch.bos_batch_id, batch.correlation_id, batch.user_id,
                                    batch.org_id, quantity, at,
                                    processing_id=str(batch.cj_batch_id)))
    return rows


def completion(batch: Batch, students: Sequence[Ranked], started: datetime,
               at: datetime) -> ev.OutboxRow:
    ok = [s.els_essay_id for s in students if s.score is not None]
    failed = [s.els_essay_id for s in students if s.score is None]
    summary = {
        "total_essays": len(students),
        "successful": len(ok),
        "failed": len(failed),
        "successful_essay_ids": ok,
        "failed_essay_ids": failed,
        "processing_time_seconds": round((at - started).total_seconds(), 2),
        "single_essay_batch": False,
    }
    status = "completed_successfully" if ok else "failed_critically"
    return ev.completion_row(batch.cj_batch_id, batch.bos_batch_id, batch.correlation_id,
                             summary, at, status=status, started_at=started)


def result(batch: Batch, rankings: Sequence[Ranked], anchors: Sequence[Ranked],
           projection: Projection | None, model: tuple[str | None, str | None],
           started: datetime, at: datetime) -> ev.OutboxRow:
    projected = {s.els_essay_id: s for s in (projection.students if projection else ())}
    essay_results: list[dict[str, Any]] = []
    for r in rankings:
        p = projected.get(r.els_essay_id)
        grade = p.primary_grade if p else "U"
        essay_results.append({
            "essay_id": r.els_essay_id,
            "normalized_score": GRADE_TO_NORMALIZED.get(grade, 0.0),
            "letter_grade": grade,
            "confidence_score": p.confidence_score if p else 0.0,
            "confidence_label": p.confidence_label if p else "LOW",
            "bt_score": r.score or 0.0,
            "rank": r.rank,
            "is_anchor": r.is_anchor,
            "feedback_uri": None,
            "metrics_uri": None,
            "display_name": f"ANCHOR GRADE {grade}" if r.is_anchor else None,
        })
    distribution = ({g: sum(1 for a in anchors if a.els_essay_id in projected
                            and projected[a.els_essay_id].primary_grade == g)
                     for g in DISTRIBUTION_GRADES} if anchors else {})
    provider, model_name = model
    payload = {
        "assessment_method": "cj_assessment",
        "model_used": model_name or UNKNOWN,
        "model_provider": provider or UNKNOWN,
        "model_version": None,
        "essay_results": essay_results,
        "assessment_metadata": {
            "anchor_essays_used": len(anchors),
            "calibration_method": "anchor" if anchors else "default",
            "anchor_grade_distribution": distribution,
            "comparison_count": len(rankings) * (len(rankings) - 1) // 2,
            "processing_duration_seconds": (at - started).total_seconds(),
            "llm_temperature": None,
            "assignment_id": batch.assignment_id,
            "course_code": batch.course_code,
        },
        "assessed_at": ev.timestamp(at),
    }
    return ev.result_row(batch.cj_batch_id, batch.bos_batch_id, batch.correlation_id,
                         payload, at)
