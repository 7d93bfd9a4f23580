"""Which batches the finalizer may act on, read from the cj_batch_health view.

Only the watched set is read, with the poll's own SQL (exporter.poll.watched): the cost follows
the active batches, not the years of history. Wedged and stuck-SCORING batches are refinalize
candidates; batches with an essay whose metadata says anchor but whose column does not are
backfill_anchors candidates (a reverse mismatch is never a candidate: nothing to backfill).
Essay documents are read through cj_health_json (sql/views/cj_health_json.sql): the planner may
evaluate the EXISTS for every watched batch, and one document ->> cannot read would otherwise fail
the whole cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, text

from exporter.finalizer.valves import Candidate
from exporter.poll.watched import WATCHED_CTE, is_watched
from exporter.vocabulary import BACKFILL_ANCHORS, REFINALIZE

_SQL = text(
    f"{WATCHED_CTE}"
    " SELECT h.cj_batch_id, (h.is_wedged OR h.is_stuck_scoring) AS wedged,"
    "  h.state_age_seconds,"
    "  (h.has_anchor_mismatch AND EXISTS (SELECT 1 FROM cj_processed_essays AS e"
    "   WHERE e.cj_batch_id = h.cj_batch_id"
    "   AND lower(cj_health_json(e.processing_metadata) ->> 'is_anchor') = 'true'"
    "   AND e.is_anchor IS DISTINCT FROM true)) AS anchors_to_flag"
    f" FROM cj_batch_health AS h WHERE {is_watched('h')}"
    "  AND (h.is_wedged OR h.is_stuck_scoring OR h.has_anchor_mismatch)"
    " ORDER BY h.state_age_seconds DESC, h.cj_batch_id"
)


@dataclass(frozen=True)
class Found:
    candidates: tuple[Candidate, ...]  # oldest first; per batch backfill before refinalize
    wedged: int  # batches wedged or stuck in SCORING right now (max_wedged_for_auto)


def find(conn: Connection, lookback_seconds: float, actions: tuple[str, ...]) -> Found:
    candidates: list[Candidate] = []
    wedged = 0
    for row in conn.execute(_SQL, {"lookback": lookback_seconds}).mappings():
        quiet = float(row["state_age_seconds"] or 0.0)
        bid = int(row["cj_batch_id"])
        wedged += bool(row["wedged"])
        # Backfill first: refinalize then finds the anchors flagged (and has less to do).
        if row["anchors_to_flag"] and BACKFILL_ANCHORS in actions:
            candidates.append(Candidate(bid, BACKFILL_ANCHORS, quiet))
        if row["wedged"] and REFINALIZE in actions:
            candidates.append(Candidate(bid, REFINALIZE, quiet))
    return Found(tuple(candidates), wedged)
