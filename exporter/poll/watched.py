"""The watched set: which batches a poll (and a remediation cycle) reads at all.

Batches whose state machine or upload status is not finished, plus batches active within
`lookback_seconds`. Each branch is an index scan on a small partial index
(sql/views/indexes.sql), and the ids reach the view as ONE array parameter
(`= ANY (ARRAY(SELECT id FROM watched))`), so cj_batch_uploads is read by primary key. With
`IN (SELECT ...)` PostgreSQL hash-joins the ids against a sequential scan of every upload, a cost
that grows with history (docs/performance.md). The poll and the finalizer both use this text, so
the two can never drift apart again.
"""

from __future__ import annotations

# Bind :lookback (seconds). Terminal statuses are spelled out so that the partial index
# cj_health_uploads_unfinished_idx (same predicate) serves the third branch.
WATCHED_CTE = (
    "WITH watched AS ("
    " SELECT batch_id AS id FROM cj_batch_states"
    "  WHERE state NOT IN ('COMPLETED', 'FAILED', 'CANCELLED')"
    " UNION SELECT batch_id FROM cj_batch_states"
    "  WHERE last_activity_at > now() - make_interval(secs => :lookback)"
    " UNION SELECT id FROM cj_batch_uploads"
    "  WHERE status NOT IN ('COMPLETE_STABLE', 'COMPLETE_MAX_COMPARISONS',"
    "   'COMPLETE_INSUFFICIENT_ESSAYS', 'COMPLETE_FORCED_RECOVERY', 'ERROR_PROCESSING',"
    "   'ERROR_ESSAY_PROCESSING'))"
)


def is_watched(alias: str) -> str:
    """The WHERE condition selecting the watched rows of cj_batch_health `alias`."""
    return f"{alias}.cj_batch_id = ANY (ARRAY(SELECT id FROM watched))"
