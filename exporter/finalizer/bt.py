"""Bradley-Terry scores and standard errors, computed exactly as the CJ service does.

Upstream (cj_core_logic/scoring_ranking.py + bt_inference.py; docs/design.md §F9):
- items are every essay of the batch, anchors included, sorted by els_essay_id;
- the data are (winner, loser) index pairs from comparison rows whose winner is essay_a/essay_b
  (a pair naming an essay outside the batch is skipped);
- `choix.ilsr_pairwise(n, pairs, alpha=0.01)`, then the scores are mean-centred;
- standard errors come from the observed Fisher information (p(1-p) per comparison) with one
  reference item removed for identifiability: the anchor that comes LAST in the row order in
  which upstream reads the batch's essays (an un-ordered `SELECT ... WHERE cj_batch_id = $1`,
  i.e. physical order, reproduced by `ORDER BY ctid`: store.load_essays), or the last item in
  sorted-id order when there is no anchor. The item indices still follow the sorted ids. (Taking
  the last anchor in sorted-id order instead changed the SEs of 6 of the 10 anchored batches
  upstream's code wrote for the fixture.) The reference gets SE 0. The reduced matrix is
  inverted with `pinv(rcond=1e-10)` and every SE is capped at 2.0.
- comparison_count of an essay = usable comparisons it took part in.

A fit with no usable comparison raises NoComparisons, as upstream raises a domain error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import choix
import numpy as np
from numpy.typing import NDArray

log = logging.getLogger(__name__)

ALPHA = 0.01
SE_CAP = 2.0
PINV_RCOND = 1e-10
# Upstream treats a comparison between items more than 10 logits apart as certain (p = 0 or 1),
# so it adds no information; reproduced so that the SEs match in degenerate batches too.
CERTAIN_LOGIT_GAP = 10.0
ILL_CONDITIONED = 1e10


class NoComparisons(ValueError):
    """No comparison with a winner links two essays of the batch: nothing to score."""


@dataclass(frozen=True)
class BTFit:
    essay_ids: tuple[str, ...]  # sorted: the item order of the fit
    scores: dict[str, float]  # mean-centred abilities
    ses: dict[str, float]  # standard errors, capped at SE_CAP; the reference has 0.0
    counts: dict[str, int]  # usable comparisons per essay (cj_processed_essays.comparison_count)
    reference: str  # the essay whose ability anchors the SEs
    comparisons: int  # usable comparisons
    condition_number: float  # of the reduced Fisher information (upstream warns above 1e10)

    def summary(self) -> dict[str, float | int]:
        """The figures upstream logs as bt_se_summary, for the audit detail."""
        se = np.array([self.ses[e] for e in self.essay_ids])
        counts = np.array([self.counts[e] for e in self.essay_ids])
        return {
            "item_count": len(self.essay_ids),
            "comparison_count": self.comparisons,
            "mean_se": float(se.mean()),
            "max_se": float(se.max()),
            "min_se": float(se.min()),
            "items_at_cap": int((se >= SE_CAP).sum()),
            "isolated_items": int((counts == 0).sum()),
        }


def fit(essay_ids: Iterable[str], anchors: Sequence[str],
        outcomes: Iterable[tuple[str, str]]) -> BTFit:
    """Fit BT on (winner_id, loser_id) outcomes.

    `anchors`: the essays flagged is_anchor, in upstream's row order (the last one of the batch
    is the SE reference); an ordered sequence, never a set, since its order decides the SEs.
    """
    if isinstance(anchors, set | frozenset):
        raise TypeError("anchors must be in row order (a sequence), not a set")
    ids = tuple(sorted(set(essay_ids)))
    index = {essay: i for i, essay in enumerate(ids)}
    pairs: list[tuple[int, int]] = []
    counts = dict.fromkeys(ids, 0)
    for winner, loser in outcomes:
        if winner in index and loser in index:
            pairs.append((index[winner], index[loser]))
            counts[winner] += 1
            counts[loser] += 1
    if not pairs:
        raise NoComparisons("no comparison with a winner between two essays of the batch")
    n = len(ids)
    params = np.asarray(choix.ilsr_pairwise(n, pairs, alpha=ALPHA), dtype=float)
    params = params - params.mean()
    in_batch = [index[a] for a in anchors if a in index]
    reference = in_batch[-1] if in_batch else n - 1
    se, condition = standard_errors(n, pairs, params, reference)
    return BTFit(
        essay_ids=ids,
        scores={essay: float(params[i]) for i, essay in enumerate(ids)},
        ses={essay: float(se[i]) for i, essay in enumerate(ids)},
        counts=counts,
        reference=ids[reference],
        comparisons=len(pairs),
        condition_number=condition,
    )


def standard_errors(n: int, pairs: list[tuple[int, int]], theta: NDArray[np.float64],
                    reference: int) -> tuple[NDArray[np.float64], float]:
    """SEs from the Fisher information with `reference` fixed; returns (se, condition number)."""
    if n < 2:
        return np.zeros(n), 1.0
    winners = np.array([w for w, _ in pairs])
    losers = np.array([lo for _, lo in pairs])
    diff = theta[winners] - theta[losers]
    # Clip before exp so that a large gap never overflows; those terms are 0 anyway.
    p = 1.0 / (1.0 + np.exp(-np.clip(diff, -CERTAIN_LOGIT_GAP, CERTAIN_LOGIT_GAP)))
    v = np.where(np.abs(diff) > CERTAIN_LOGIT_GAP, 0.0, p * (1.0 - p))
    info = np.zeros((n, n))
    np.add.at(info, (winners, winners), v)
    np.add.at(info, (losers, losers), v)
    np.add.at(info, (winners, losers), -v)
    np.add.at(info, (losers, winners), -v)
    keep = np.array([i for i in range(n) if i != reference])
    reduced = info[np.ix_(keep, keep)]
    condition = float(np.linalg.cond(reduced))
    if condition > ILL_CONDITIONED:
        log.warning("ill-conditioned Fisher information (condition number %.2e): standard "
                    "errors may be unreliable", condition)
    covariance = np.linalg.pinv(reduced, rcond=PINV_RCOND)
    se = np.zeros(n)
    se[keep] = np.sqrt(np.maximum(np.diag(covariance), 0.0))
    return np.minimum(se, SE_CAP), condition
