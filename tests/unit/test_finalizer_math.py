"""Golden tests of the finalizer's math against independent computations (no database).

BT scores: choix's I-LSR with alpha=0.01 is not the plain maximum-likelihood estimate. At its
fixed point the LSR Markov chain balances, which works out to
    grad loglik(theta)_i = alpha * n * (n * softmax(theta)_i - 1)
i.e. the stationarity condition of the *penalised* log-likelihood
    loglik(theta) - alpha * n * (n * logsumexp(theta) - sum(theta)),
(choix rescales the weights to mean 1 between iterations, hence the softmax). That objective is
concave and shift-invariant, so it has one maximiser up to a shift, which centring removes. The
golden values come from a plain NumPy Newton solver of that objective, written here; choix
stops when successive iterates differ by < 1e-8 (L1), so both agree to well within 1e-6.
For scale, the same test shows the unregularised MLE differs by more than that (the
regularisation is real) while ranking the essays identically.

SEs: an independent numerical Hessian (finite differences of the log-likelihood) with the
reference row and column removed, inverted with np.linalg.inv, agrees with the analytic
Fisher information within 1e-5 (central differences with h = 1e-4 are accurate to ~1e-8).

Grades: an independent calibration (own pool-adjacent-violators, own interval lookup) gives the
same grades and boundaries as exporter.finalizer.projection.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from exporter.finalizer import bt, projection, scales
from exporter.finalizer.projection import AnchorRef, Essay

ALPHA = 0.01

# A fixed batch: four anchors (grades E, D, C, B of swedish_8_anchor) and four students whose
# true order interleaves them. Every neighbour pair is compared three times, the better essay
# winning twice, plus a few long-range comparisons: the comparison graph is strongly connected,
# so the unregularised MLE exists too.
ORDER = ["ANCHOR_1_e0", "s-1", "ANCHOR_2_d0", "s-2", "ANCHOR_3_c0", "s-3", "ANCHOR_4_b0", "s-4"]
GRADES = {"ANCHOR_1_e0": "E", "ANCHOR_2_d0": "D", "ANCHOR_3_c0": "C", "ANCHOR_4_b0": "B"}


def golden_outcomes() -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for low, high in itertools.pairwise(ORDER):
        out += [(high, low), (high, low), (low, high)]
    out += [("s-4", "ANCHOR_1_e0"), ("s-3", "s-1"), ("ANCHOR_4_b0", "s-2"),
            ("s-2", "ANCHOR_1_e0"), ("s-1", "ANCHOR_3_c0")]
    return out


def loglik(theta: np.ndarray, pairs: list[tuple[int, int]]) -> float:
    return float(sum(-np.logaddexp(0.0, theta[lo] - theta[w]) for w, lo in pairs))


def newton(pairs: list[tuple[int, int]], n: int, alpha: float) -> np.ndarray:
    """Maximise loglik - alpha*n*(n*logsumexp - sum) with theta[n-1] = 0, then centre."""
    theta = np.zeros(n)
    for _ in range(100):
        grad = np.zeros(n)
        hess = np.zeros((n, n))
        for w, lo in pairs:
            p = 1.0 / (1.0 + math.exp(theta[lo] - theta[w]))  # P(w beats lo)
            grad[w] += 1.0 - p
            grad[lo] -= 1.0 - p
            v = p * (1.0 - p)
            hess[w, w] -= v
            hess[lo, lo] -= v
            hess[w, lo] += v
            hess[lo, w] += v
        s = np.exp(theta - theta.max())
        s /= s.sum()
        grad -= alpha * n * (n * s - 1.0)
        hess -= alpha * n * n * (np.diag(s) - np.outer(s, s))
        step = np.linalg.solve(hess[:-1, :-1], -grad[:-1])
        theta[:-1] += step
        if np.abs(step).max() < 1e-14:
            break
    centred: np.ndarray = theta - theta.mean()
    return centred


def indices(outcomes: list[tuple[str, str]]) -> tuple[list[str], list[tuple[int, int]]]:
    ids = sorted({e for pair in outcomes for e in pair})
    index = {e: i for i, e in enumerate(ids)}
    return ids, [(index[w], index[lo]) for w, lo in outcomes]


def test_bt_scores_match_an_independent_penalised_mle() -> None:
    outcomes = golden_outcomes()
    fit = bt.fit(ORDER, sorted(GRADES), outcomes)
    ids, pairs = indices(outcomes)
    expected = newton(pairs, len(ids), ALPHA)
    got = np.array([fit.scores[e] for e in ids])
    assert np.abs(got - expected).max() < 1e-6
    assert abs(got.mean()) < 1e-12  # mean-centred
    # The regularisation matters (the plain MLE is further away than our tolerance) but it
    # does not change the ranking of this well-connected batch.
    mle = newton(pairs, len(ids), 0.0)
    assert np.abs(mle - expected).max() > 1e-4
    assert list(np.argsort(mle)) == list(np.argsort(got))
    # The fit recovers the designed order.
    assert sorted(ORDER, key=lambda e: fit.scores[e]) == ORDER


def numeric_hessian(theta: np.ndarray, pairs: list[tuple[int, int]], h: float = 1e-4) -> np.ndarray:
    n = len(theta)
    hess = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            def f(di: float, dj: float, i: int = i, j: int = j) -> float:
                t = theta.copy()
                t[i] += di
                t[j] += dj
                return loglik(t, pairs)
            hess[i, j] = (f(h, h) - f(h, -h) - f(-h, h) + f(-h, -h)) / (4 * h * h)
    return hess


def test_standard_errors_match_a_numerical_fisher_information() -> None:
    outcomes = golden_outcomes()
    fit = bt.fit(ORDER, sorted(GRADES), outcomes)
    ids, pairs = indices(outcomes)
    theta = np.array([fit.scores[e] for e in ids])
    ref = ids.index("ANCHOR_4_b0")  # the last anchor in sorted-id order
    assert fit.reference == "ANCHOR_4_b0"
    keep = [i for i in range(len(ids)) if i != ref]
    info = -numeric_hessian(theta, pairs)
    cov = np.linalg.inv(info[np.ix_(keep, keep)])
    expected = np.zeros(len(ids))
    expected[keep] = np.minimum(np.sqrt(np.diag(cov)), bt.SE_CAP)
    got = np.array([fit.ses[e] for e in ids])
    assert np.abs(got - expected).max() < 1e-5
    assert fit.ses["ANCHOR_4_b0"] == 0.0
    assert fit.counts == {e: sum(e in p for p in outcomes) for e in ORDER}
    assert fit.comparisons == len(outcomes)


def test_reference_is_the_last_item_without_anchors_and_se_is_capped() -> None:
    # b beat a once, a never beat b: the MLE is infinite, alpha keeps it finite, and the SE of
    # the isolated third essay (never compared) hits the cap.
    fit = bt.fit(["a", "b", "c"], [], [("b", "a")])
    assert fit.reference == "c"
    assert fit.ses["c"] == 0.0
    assert fit.ses["a"] == bt.SE_CAP and fit.ses["b"] == bt.SE_CAP
    assert fit.counts == {"a": 1, "b": 1, "c": 0}
    assert fit.summary()["isolated_items"] == 1


def test_no_usable_comparison_raises_and_outsiders_are_skipped() -> None:
    with pytest.raises(bt.NoComparisons):
        bt.fit(["a", "b"], [], [])
    with pytest.raises(bt.NoComparisons):
        bt.fit(["a", "b"], [], [("a", "elsewhere")])  # upstream skips unknown essays
    fit = bt.fit(["a", "b"], [], [("a", "b"), ("a", "elsewhere")])
    assert fit.comparisons == 1


def pav(values: list[float]) -> list[float]:
    """Pool-adjacent-violators with unit weights, the textbook way."""
    blocks: list[list[float]] = []
    for v in values:
        blocks.append([v, 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, w2 = blocks.pop()
            m1, w1 = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2])
    out: list[float] = []
    for mean, weight in blocks:
        out += [mean] * int(weight)
    return out


def test_projected_grades_match_an_independent_calibration() -> None:
    outcomes = golden_outcomes()
    fit = bt.fit(ORDER, sorted(GRADES), outcomes)
    scale = scales.resolve("swedish_8_anchor")
    essays = [Essay(e, e in GRADES, {"known_grade": GRADES[e]} if e in GRADES else {}, "t")
              for e in ORDER]
    result = projection.project(scale, essays, [], fit.scores, fit.ses)
    assert result.available and result.calibration is not None

    grades = list(scale.grades)
    anchor_scores = [fit.scores[a] for a in GRADES]
    pooled = float(np.var(anchor_scores))
    means = []
    for i, g in enumerate(grades):
        expected_position = (i + 0.5) / len(grades)
        scores = [fit.scores[a] for a, ag in GRADES.items() if ag == g]
        means.append(scores[0] / 3 + expected_position * 2 / 3 if scores else expected_position)
    centres = pav(means)
    cuts = [(a + b) / 2 for a, b in itertools.pairwise(centres)]
    assert result.calibration.centers() == pytest.approx(dict(zip(grades, centres, strict=True)),
                                                         abs=1e-12)
    variances = [max(pooled * 3 if g in GRADES.values() else pooled * 2, 0.01) for g in grades]
    assert [result.calibration.params[g].variance for g in grades] == pytest.approx(variances)

    by_student = {s.els_essay_id: s for s in result.students}
    assert set(by_student) == {"s-1", "s-2", "s-3", "s-4"}
    for student, p in by_student.items():
        score = fit.scores[student]
        band = int(np.searchsorted(cuts, score))  # the grade interval holding the score
        assert p.anchor_grade == grades[band]
        lower = -math.inf if band == 0 else cuts[band - 1]
        upper = math.inf if band == len(cuts) else cuts[band]
        position = (score - lower) / (upper - lower) if math.isfinite(upper - lower) else 0.5
        grade = grades[band]
        if grade in ("E", "D", "C", "B", "A") and position < 0.25:
            grade += "-"
        elif grade in ("E", "B") and position > 0.75:
            grade += "+"
        assert p.primary_grade == grade
        assert p.probabilities[p.anchor_grade] == pytest.approx(1.0)  # one-hot
        assert p.population_prior == scale.priors[p.anchor_grade]
        meta = result.metadata(p, "assignment")
        assert set(meta) == {"bt_mean", "bt_se", "grade_probabilities", "grade_centers",
                             "grade_boundaries", "context_source", "calibration_method",
                             "primary_anchor_grade", "grade_scale"}
        assert meta["grade_boundaries"]["F"][0] == -1e10
        assert meta["grade_boundaries"]["A"][1] == 1e10
    # Scores in the golden batch increase with the designed order: so do the grades' bands.
    bands = [grades.index(by_student[s].anchor_grade) for s in ("s-1", "s-2", "s-3", "s-4")]
    assert bands == sorted(bands)


@pytest.mark.parametrize(("entropy", "se", "label", "score"), [
    (0.0, 0.3, "HIGH", 1.0),
    (0.0, 0.7, "HIGH", math.sqrt(0.8)),
    (0.0, 1.2, "MID", math.sqrt(0.6)),  # 0.775 would be HIGH: the SE caps it at MID
    (0.0, 1.5, "LOW", math.sqrt(0.3)),  # 0.548 would be MID: the SE caps it at LOW
    (0.1, 1.0, "MID", math.sqrt(0.9 * 0.6)),
    (0.8, 0.3, "MID", math.sqrt(0.2)),
    (0.9, 0.2, "LOW", math.sqrt(0.1)),
])
def test_confidence_is_the_geometric_mean_capped_by_the_se(entropy: float, se: float,
                                                            label: str, score: float) -> None:
    got_score, got_label = projection.confidence(entropy, se)
    assert got_score == pytest.approx(score) and got_label == label


def test_unusable_anchors_and_grade_lookup_order() -> None:
    refs = [AnchorRef(7, "B", "storage-b"), AnchorRef(8, "A", "storage-a")]
    anchors = [
        Essay("ANCHOR_1", True, {"anchor_grade": "C", "known_grade": "D"}, "x"),
        Essay("ANCHOR_2", True, {"known_grade": "D"}, "x"),
        Essay("ANCHOR_3", True, {}, "storage-b"),
        Essay("ANCHOR_4", True, {"anchor_ref_id": "8"}, "x"),
        Essay("ANCHOR_5", True, {}, "unknown"),
    ]
    assert projection.resolve_anchor_grades(anchors, refs) == {
        "ANCHOR_1": "C", "ANCHOR_2": "D", "ANCHOR_3": "B", "ANCHOR_4": "A"}
    scale = scales.resolve("swedish_8_anchor")
    one_grade = [Essay("ANCHOR_1", True, {"known_grade": "C"}, "x"),
                 Essay("ANCHOR_2", True, {"known_grade": "C"}, "x"),
                 Essay("s", False, {}, "x")]
    scores = {"ANCHOR_1": 0.1, "ANCHOR_2": -0.1, "s": 0.0}
    result = projection.project(scale, one_grade, [], scores, dict.fromkeys(scores, 0.3))
    assert not result.available and "fewer than 2 distinct anchor grades" in result.reason
    assert not projection.project(scale, [Essay("s", False, {}, "x")], [], scores, scores).available


def test_eng5_below_lowest_grade_and_unknown_scale_fallback() -> None:
    assert scales.resolve("no-such-scale").scale_id == "swedish_8_anchor"
    scale = scales.resolve("eng5_np_national_9_step")
    cal = projection.calibrate(scale, [("1", -1.0), ("1", -1.2), ("1", -0.8), ("9", 1.0)])
    lowest = cal.params["1"]
    far_below = lowest.mean - 2 * math.sqrt(lowest.variance) - 0.01
    assert projection.final_grade(far_below, "1", cal) == "0"
    assert projection.final_grade(lowest.mean, "1", cal) == "1"
    legacy = projection.calibrate(scales.resolve("eng5_np_legacy_9_step"),
                                  [("F+", -1.0), ("A", 1.0)])
    assert projection.final_grade(-50.0, "F+", legacy) == "F"
