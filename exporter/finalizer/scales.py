"""The grade scales the CJ service projects onto (common_core/grade_scales.py upstream).

A scale lists its grades lowest first, the population priors the projector weighs them with,
which grades may take a - or + modifier, and the grade given below the lowest anchor grade.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_SCALE = "swedish_8_anchor"


@dataclass(frozen=True)
class GradeScale:
    scale_id: str
    grades: tuple[str, ...]  # lowest first
    priors: Mapping[str, float]
    minus_for: frozenset[str] = frozenset()
    plus_for: frozenset[str] = frozenset()
    never_modified: frozenset[str] = frozenset()
    below_lowest: str | None = None  # grade for a score far below the lowest grade's centre
    modifiers: bool = False  # swedish: - / + by the score's position within its grade band

    def prior(self, grade: str) -> float:
        return self.priors.get(grade, 1.0 / len(self.grades))


def _uniform(grades: tuple[str, ...]) -> dict[str, float]:
    return {g: 1.0 / len(grades) for g in grades}


_SWEDISH = ("F", "E", "D", "D+", "C", "C+", "B", "A")
_ENG5_LEGACY = ("F+", "E-", "E+", "D-", "D+", "C-", "C+", "B", "A")
_ENG5_NATIONAL = ("1", "2", "3", "4", "5", "6", "7", "8", "9")

SCALES: Mapping[str, GradeScale] = {
    s.scale_id: s
    for s in (
        GradeScale(
            "swedish_8_anchor", _SWEDISH,
            {"F": 0.02, "E": 0.08, "D": 0.15, "D+": 0.20, "C": 0.25, "C+": 0.15, "B": 0.10,
             "A": 0.05},
            minus_for=frozenset({"E", "D", "C", "B", "A"}), plus_for=frozenset({"E", "B"}),
            never_modified=frozenset({"F", "D+", "C+"}), modifiers=True,
        ),
        GradeScale("eng5_np_legacy_9_step", _ENG5_LEGACY, _uniform(_ENG5_LEGACY),
                   below_lowest="F"),
        GradeScale("eng5_np_national_9_step", _ENG5_NATIONAL, _uniform(_ENG5_NATIONAL),
                   below_lowest="0"),
    )
}


def resolve(scale_id: str | None) -> GradeScale:
    """Upstream falls back to swedish_8_anchor (with an error log) for an unknown scale."""
    return SCALES.get(scale_id or DEFAULT_SCALE, SCALES[DEFAULT_SCALE])
