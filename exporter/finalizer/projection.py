"""Grade projection from anchor essays, as the CJ service computes it (docs/design.md §F11).

1. Anchors (is_anchor column) get their grade from metadata anchor_grade, then known_grade,
   then the assignment's anchor references by text_storage_id, then by anchor_ref_id.
   No anchor, or fewer than 2 distinct resolved grades: no projection at all.
2. Calibration per grade of the scale, lowest first: n >= 3 anchors -> empirical mean and
   (population) variance; 1-2 -> mean shrunk towards the expected position (index+0.5)/n_grades
   with weight n/3, variance pooled*3/n; 0 -> the expected position, variance 2*pooled. Pooled
   variance = variance of all anchor scores (0.1 with <= 1 anchor); variance floor 0.01. Means
   are made non-decreasing by isotonic regression (scipy's PAVA, unit weights: what
   scikit-learn's IsotonicRegression does on x = 0..n-1). Boundaries are the midpoints between
   neighbouring means; the outer bounds are infinite (stored as +-1e10).
3. Each student: log N(bt; mean, var + se^2) + log prior per grade, -inf outside the grade's
   boundaries (so the distribution is in practice one-hot), normalised; the primary anchor
   grade is the argmax; swedish_8_anchor adds -/+ by the position within the band, the ENG5
   scales give the below-lowest grade under mean - 2 sd of the lowest grade.
4. Confidence = sqrt((1 - normalised entropy) * SE factor), the SE factor 0.3 / 0.6 / 0.8 / 1.0
   for SE >= 1.5 / >= 1.0 / >= 0.5 / below; label HIGH >= 0.7, MID >= 0.4, else LOW, capped
   at LOW for SE >= 1.5 and at MID for SE >= 1.0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import isotonic_regression

from exporter.finalizer.scales import GradeScale

MIN_ANCHORS_FOR_EMPIRICAL = 3
VARIANCE_FLOOR = 0.01
SINGLE_ANCHOR_POOLED_VARIANCE = 0.1
JSON_INFINITY = 1e10  # upstream serialises the open outer boundaries as +-1e10
LABELS = ("LOW", "MID", "HIGH")


@dataclass(frozen=True)
class Essay:
    """What projection needs to know about an essay (no text, no scores)."""

    els_essay_id: str
    is_anchor: bool  # the column, after the anchor backfill
    metadata: Mapping[str, Any]
    text_storage_id: str


@dataclass(frozen=True)
class AnchorRef:
    """A row of anchor_essay_references for the batch's assignment and grade scale."""

    ref_id: int
    grade: str
    text_storage_id: str


@dataclass(frozen=True)
class GradeParams:
    mean: float
    variance: float
    n_anchors: int


@dataclass(frozen=True)
class Calibration:
    scale: GradeScale
    params: Mapping[str, GradeParams]
    boundaries: Mapping[str, tuple[float, float]]

    def centers(self) -> dict[str, float]:
        return {g: self.params[g].mean for g in self.scale.grades}

    def boundaries_json(self) -> dict[str, list[float]]:
        return {g: [max(lo, -JSON_INFINITY), min(hi, JSON_INFINITY)]
                for g, (lo, hi) in self.boundaries.items()}


@dataclass(frozen=True)
class StudentProjection:
    els_essay_id: str
    primary_grade: str  # with modifiers
    anchor_grade: str  # the argmax grade of the scale
    confidence_score: float
    confidence_label: str
    probabilities: Mapping[str, float]
    bt_mean: float
    bt_se: float
    population_prior: float | None


@dataclass(frozen=True)
class Projection:
    available: bool
    reason: str  # why not, or a one-line summary
    anchor_grades: Mapping[str, str]  # anchor essay id -> resolved grade
    calibration: Calibration | None = None
    students: tuple[StudentProjection, ...] = ()

    def metadata(self, student: StudentProjection, context_source: str) -> dict[str, Any]:
        """grade_projections.calculation_metadata, with upstream's keys."""
        assert self.calibration is not None
        return {
            "bt_mean": student.bt_mean,
            "bt_se": student.bt_se,
            "grade_probabilities": dict(student.probabilities),
            "grade_centers": self.calibration.centers(),
            "grade_boundaries": self.calibration.boundaries_json(),
            "context_source": context_source,
            "calibration_method": "gaussian_mixture",
            "primary_anchor_grade": student.anchor_grade,
            "grade_scale": self.calibration.scale.scale_id,
        }


def resolve_anchor_grades(anchors: Sequence[Essay], refs: Sequence[AnchorRef]) -> dict[str, str]:
    """Anchor essay id -> grade, in upstream's lookup order; unresolvable anchors are left out."""
    by_storage = {r.text_storage_id: r.grade for r in refs}
    by_id = {str(r.ref_id): r.grade for r in refs}
    grades: dict[str, str] = {}
    for anchor in anchors:
        meta = anchor.metadata
        storage = anchor.text_storage_id or meta.get("text_storage_id")
        ref_id = meta.get("anchor_ref_id")
        grade = (meta.get("anchor_grade") or meta.get("known_grade")
                 or (by_storage.get(str(storage)) if storage else None)
                 or (by_id.get(str(ref_id)) if ref_id else None))
        if grade:
            grades[anchor.els_essay_id] = str(grade)
    return grades


def calibrate(scale: GradeScale, anchor_scores: Sequence[tuple[str, float]]) -> Calibration:
    """Per-grade centres and spreads from (grade, bt score) of the anchors."""
    by_grade: dict[str, list[float]] = {}
    for grade, score in anchor_scores:
        if grade in scale.grades:
            by_grade.setdefault(grade, []).append(score)
    every = [s for scores in by_grade.values() for s in scores]
    pooled = float(np.var(every)) if len(every) > 1 else SINGLE_ANCHOR_POOLED_VARIANCE
    n_grades = len(scale.grades)
    means: list[float] = []
    variances: list[float] = []
    counts: list[int] = []
    for i, grade in enumerate(scale.grades):
        scores = by_grade.get(grade, [])
        expected = (i + 0.5) / n_grades
        if len(scores) >= MIN_ANCHORS_FOR_EMPIRICAL:
            mean, variance = float(np.mean(scores)), float(np.var(scores))
        elif scores:
            weight = len(scores) / MIN_ANCHORS_FOR_EMPIRICAL
            mean = weight * float(np.mean(scores)) + (1 - weight) * expected
            variance = pooled * (MIN_ANCHORS_FOR_EMPIRICAL / len(scores))
        else:
            mean, variance = expected, pooled * 2.0
        means.append(mean)
        variances.append(max(variance, VARIANCE_FLOOR))
        counts.append(len(scores))
    monotone = isotonic_regression(np.array(means), increasing=True).x
    params = {g: GradeParams(float(monotone[i]), variances[i], counts[i])
              for i, g in enumerate(scale.grades)}
    boundaries: dict[str, tuple[float, float]] = {}
    for i, grade in enumerate(scale.grades):
        lower = -math.inf if i == 0 else (monotone[i - 1] + monotone[i]) / 2
        upper = math.inf if i == n_grades - 1 else (monotone[i] + monotone[i + 1]) / 2
        boundaries[grade] = (float(lower), float(upper))
    return Calibration(scale, params, boundaries)


def probabilities(bt: float, se: float, cal: Calibration) -> dict[str, float]:
    log_probs: dict[str, float] = {}
    for grade in cal.scale.grades:
        lower, upper = cal.boundaries[grade]
        if not lower <= bt <= upper:
            log_probs[grade] = -math.inf
            continue
        p = cal.params[grade]
        var = p.variance + se**2
        prior = cal.scale.prior(grade)
        log_prior = math.log(prior) if prior > 0 else -math.inf
        log_likelihood = -0.5 * (math.log(2 * math.pi * var) + (bt - p.mean) ** 2 / var)
        log_probs[grade] = log_likelihood + log_prior
    top = max(log_probs.values())
    if top == -math.inf:  # cannot happen with finite scores; upstream falls back to uniform
        return {g: 1.0 / len(log_probs) for g in log_probs}
    raw = {g: 0.0 if lp == -math.inf else math.exp(lp - top) for g, lp in log_probs.items()}
    total = sum(raw.values())
    return {g: v / total for g, v in raw.items()}


def final_grade(bt: float, anchor_grade: str, cal: Calibration) -> str:
    scale = cal.scale
    lower, upper = cal.boundaries[anchor_grade]
    width = upper - lower
    position = (bt - lower) / width if math.isfinite(width) and width > 0 else 0.5
    if scale.modifiers:
        if anchor_grade in scale.never_modified:
            return anchor_grade
        if anchor_grade in scale.minus_for and position < 0.25:
            return f"{anchor_grade}-"
        if anchor_grade in scale.plus_for and position > 0.75:
            return f"{anchor_grade}+"
        return anchor_grade
    if scale.below_lowest and anchor_grade == scale.grades[0]:
        lowest = cal.params[anchor_grade]
        if bt < lowest.mean - 2 * math.sqrt(lowest.variance):
            return scale.below_lowest
    return anchor_grade


def normalized_entropy(probs: Mapping[str, float]) -> float:
    nonzero = [p for p in probs.values() if p > 1e-10]
    if len(nonzero) <= 1:
        return 0.0
    max_entropy = math.log(len(probs))
    return -sum(p * math.log(p) for p in nonzero) / max_entropy if max_entropy > 0 else 0.0


def confidence(entropy: float, se: float) -> tuple[float, str]:
    """Geometric mean of the entropy and SE confidences; a large SE caps the label."""
    if se >= 1.5:
        se_conf, cap = 0.3, "LOW"
    elif se >= 1.0:
        se_conf, cap = 0.6, "MID"
    elif se >= 0.5:
        se_conf, cap = 0.8, "HIGH"
    else:
        se_conf, cap = 1.0, "HIGH"
    score = math.sqrt(max(1.0 - entropy, 0.0) * se_conf)
    label = "HIGH" if score >= 0.7 else "MID" if score >= 0.4 else "LOW"
    return score, min(label, cap, key=LABELS.index)


def project(scale: GradeScale, essays: Sequence[Essay], refs: Sequence[AnchorRef],
            scores: Mapping[str, float], ses: Mapping[str, float]) -> Projection:
    """Project every student of the batch, or say why the batch cannot be projected."""
    anchors = [e for e in essays if e.is_anchor]
    if not anchors:
        return Projection(False, "no anchor essays", {})
    grades = resolve_anchor_grades(anchors, refs)
    distinct = sorted(set(grades.values()))
    if len(distinct) < 2:
        return Projection(False, f"fewer than 2 distinct anchor grades ({len(anchors)} anchors,"
                                 f" grades: {', '.join(distinct) or 'none resolvable'})", grades)
    cal = calibrate(scale, [(grades[a.els_essay_id], scores[a.els_essay_id])
                            for a in anchors if a.els_essay_id in grades])
    students = []
    for essay in essays:
        if essay.is_anchor:
            continue
        bt, se = scores[essay.els_essay_id], ses[essay.els_essay_id]
        probs = probabilities(bt, se, cal)
        anchor_grade = max(probs.items(), key=lambda item: item[1])[0]
        score, label = confidence(normalized_entropy(probs), se)
        students.append(StudentProjection(
            els_essay_id=essay.els_essay_id, primary_grade=final_grade(bt, anchor_grade, cal),
            anchor_grade=anchor_grade, confidence_score=score, confidence_label=label,
            probabilities=probs, bt_mean=bt, bt_se=se,
            population_prior=scale.priors.get(anchor_grade)))
    return Projection(True, f"{len(students)} students projected from {len(anchors)} anchors "
                            f"({', '.join(distinct)})", grades, cal, tuple(students))
