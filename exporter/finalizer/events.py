"""The three completion events of a finalized batch, with upstream's payloads.

What `publish_dual_assessment_events` (cj_core_logic/dual_event_publisher.py) puts in them,
field by field (docs/finalizer.md, "Parity with upstream"):
- completion to ELS: students are told apart from anchors by the `ANCHOR_` id prefix (not the
  column); status completed_successfully when any student has a score, else failed_critically;
  single_essay_batch exactly when one ranking is a student;
- result to RAS: every essay ranked by score (anchors included, flagged is_anchor, graded "U"
  because projections exist for students only), bt_score None -> 0.0, rank default 999, the
  15-step normalized score of the grade, the anchor grade distribution upstream computes (all
  zeros for that same reason), an *estimated* comparison_count n(n-1)/2 over all rankings, the
  upload's assignment_id at the top level (RAS reads it there) and in assessment_metadata,
  model/provider from the comparisons or the configured defaults, the configured temperature;
- resource consumption: quantity = students(students-1)/2, processing_id = the CJ batch id;
  only when the upload has a user_id (upstream raises and swallows otherwise).
Upstream quirks are kept on purpose: consumers already rely on these shapes.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from exporter.finalizer.projection import Projection
from exporter.finalizer.store import Batch
from exporter.upstream import events as ev

ANCHOR_PREFIX = "ANCHOR_"
# grade_utils._grade_to_normalized upstream; anything else (the ENG5 scales' grades) is 0.0.
GRADE_TO_NORMALIZED: Mapping[str, float] = {
    "A": 1.00, "A-": 0.93, "B+": 0.87, "B": 0.80, "B-": 0.73, "C+": 0.67, "C": 0.60,
    "C-": 0.53, "D+": 0.47, "D": 0.40, "D-": 0.33, "E+": 0.27, "E": 0.20, "E-": 0.13,
    "F+": 0.07, "F": 0.00, "U": 0.00,
}
DISTRIBUTION_GRADES = ("A", "B", "C", "D", "E", "F", "U")


@dataclass(frozen=True)
class Defaults:
    """Upstream's overridable settings the events carry (CJ_ASSESSMENT_SERVICE_* upstream;
    remediation.default_llm_model / default_llm_provider / llm_temperature here)."""

    model: str = "gpt-5.1"
    provider: str = "openai"
    temperature: float = 0.1
    model_version: str | None = None


DEFAULTS = Defaults()


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


@dataclass(frozen=True)
class Built:
    """The rows a finalization of the batch publishes, one per event type (resource: None
    without a user_id)."""

    completion: ev.OutboxRow
    result: ev.OutboxRow
    resource: ev.OutboxRow | None


def build(batch: Batch, scores: Mapping[str, float | None], projection: Projection | None,
          model: tuple[str, str] | None, at: datetime, defaults: Defaults = DEFAULTS
          ) -> Built:
    batch = replace(batch, correlation_id=canonical_uuid(batch.correlation_id))
    rankings = rank(scores)
    students = [r for r in rankings if not r.is_anchor]
    anchors = [r for r in rankings if r.is_anchor]
    started = batch.created_at.replace(tzinfo=UTC)
    resource = None
    if batch.user_id:
        quantity = len(students) * (len(students) - 1) // 2
        resource = ev.resource_row(batch.bos_batch_id, batch.correlation_id, batch.user_id,
                                   batch.org_id, quantity, at,
                                   processing_id=str(batch.cj_batch_id))
    return Built(completion(batch, students, started, at),
                 result(batch, rankings, anchors, projection, model, defaults, started, at),
                 resource)


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
        "single_essay_batch": len(students) == 1,
    }
    status = "completed_successfully" if ok else "failed_critically"
    return ev.completion_row(batch.cj_batch_id, batch.bos_batch_id, batch.correlation_id,
                             summary, at, status=status, started_at=started)


def essay_results(rankings: Sequence[Ranked],
                  projection: Projection | None) -> list[dict[str, Any]]:
    projected = {s.els_essay_id: s for s in (projection.students if projection else ())}
    out: list[dict[str, Any]] = []
    for r in rankings:
        p = projected.get(r.els_essay_id)
        grade = p.primary_grade if p else "U"
        out.append({
            "essay_id": r.els_essay_id,
            "normalized_score": GRADE_TO_NORMALIZED.get(grade, 0.0),
            "letter_grade": grade,
            "confidence_score": p.confidence_score if p else 0.0,
            "confidence_label": p.confidence_label if p else "LOW",
            "bt_score": r.score or 0.0,
            "rank": r.rank,  # every ranking has one (upstream's default 999 never applies)
            "is_anchor": r.is_anchor,
            "feedback_uri": None,
            "metrics_uri": None,
            "display_name": f"ANCHOR GRADE {grade}" if r.is_anchor else None,
        })
    return out


def result(batch: Batch, rankings: Sequence[Ranked], anchors: Sequence[Ranked],
           projection: Projection | None, model: tuple[str, str] | None, defaults: Defaults,
           started: datetime, at: datetime) -> ev.OutboxRow:
    projected = {s.els_essay_id: s for s in (projection.students if projection else ())}
    distribution = ({g: sum(1 for a in anchors if a.els_essay_id in projected
                            and projected[a.els_essay_id].primary_grade == g)
                     for g in DISTRIBUTION_GRADES} if anchors else {})
    provider, model_name = model or (defaults.provider, defaults.model)
    payload = {
        "assignment_id": batch.assignment_id,
        "assessment_method": "cj_assessment",
        "model_used": model_name,
        "model_provider": provider,
        "model_version": defaults.model_version,
        "essay_results": essay_results(rankings, projection),
        "assessment_metadata": {
            "anchor_essays_used": len(anchors),
            "calibration_method": "anchor" if anchors else "default",
            "anchor_grade_distribution": distribution,
            "comparison_count": len(rankings) * (len(rankings) - 1) // 2,
            "processing_duration_seconds": (at - started).total_seconds(),
            "llm_temperature": defaults.temperature,
            "assignment_id": batch.assignment_id,
            "course_code": batch.course_code,
        },
        "assessed_at": ev.timestamp(at),
    }
    return ev.result_row(batch.cj_batch_id, batch.bos_batch_id, batch.correlation_id,
                         payload, at)


def same_substance(last: Any, new: Mapping[str, Any]) -> bool:
    """Whether the last result sent (`data` of its envelope) says what `new` says.

    Compared: the assignment and, per essay, its grade, normalized score, confidence, rank, BT
    score and anchor flag (numbers within 1e-6). Not compared: what changes on every build
    (event ids, timestamps, durations) and labels that change no student's result (model
    names, temperature). R3: a correction is published only when these differ, since every
    re-publish costs one more BatchAssessmentCompletedV1 and teacher notification downstream.
    """
    old, fresh = _substance(last), _substance(new)
    if old is None or fresh is None or old[0] != fresh[0] or old[1].keys() != fresh[1].keys():
        return False
    return all(_close(a, b) for essay, row in fresh[1].items()
               for a, b in zip(old[1][essay], row, strict=True))


_COMPARED = ("letter_grade", "normalized_score", "confidence_label", "confidence_score", "rank",
             "bt_score", "is_anchor")


def _substance(data: Any) -> tuple[Any, dict[str, tuple[Any, ...]]] | None:
    if not isinstance(data, Mapping) or not isinstance(data.get("essay_results"), list):
        return None
    essays: dict[str, tuple[Any, ...]] = {}
    for e in data["essay_results"]:
        if not isinstance(e, Mapping):
            return None
        essays[str(e.get("essay_id"))] = tuple(e.get(k) for k in _COMPARED)
    return data.get("assignment_id"), essays


def _close(a: Any, b: Any) -> bool:
    numbers = (int, float)
    if (isinstance(a, numbers) and isinstance(b, numbers)
            and not isinstance(a, bool) and not isinstance(b, bool)):
        return math.isclose(float(a), float(b), rel_tol=0.0, abs_tol=1e-6)
    return bool(a == b) and type(a) is type(b)
