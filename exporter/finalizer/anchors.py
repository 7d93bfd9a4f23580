"""Action `backfill_anchors`: is_anchor = true where the essay's metadata says it is an anchor.

The metadata flag is canonical (upstream sets the column from it on insert); the action never
clears a flag, so a reverse mismatch (column true, metadata false) stays for a person; nor
does it flag an essay whose metadata ->> cannot read (sql/views/cj_health_json.sql: it says
nothing, and the statement never fails on it: the batch's other anchors are flagged). One
batch per transaction; the UPDATE is idempotent (IS DISTINCT FROM true), so concurrent runs
cannot double-apply it.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from exporter import db
from exporter.finalizer import audit, store
from exporter.finalizer.model import DEFAULT_LIMITS, Limits, Result
from exporter.vocabulary import APPLIED, BACKFILL_ANCHORS, DRY_RUN, FAILED, SKIPPED

_PENDING = text(
    "SELECT els_essay_id FROM cj_processed_essays WHERE cj_batch_id = :id"
    " AND lower(cj_health_json(processing_metadata) ->> 'is_anchor') = 'true'"
    " AND is_anchor IS DISTINCT FROM true ORDER BY els_essay_id"
)


def backfill_anchors(engine: Engine, batch_id: int, *, replica: str, dry_run: bool,
                     limits: Limits = DEFAULT_LIMITS) -> Result:
    started = time.monotonic()
    try:
        result = _run(engine, batch_id, replica, dry_run, limits, started)
    except DBAPIError as exc:
        result = Result(BACKFILL_ANCHORS, batch_id, FAILED, {"reason": db.describe_error(exc)})
    return replace(result, detail={**result.detail, "took_ms": _ms_since(started)})


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


def _run(engine: Engine, batch_id: int, replica: str, dry_run: bool, limits: Limits,
         started: float) -> Result:
    with engine.connect() as conn, conn.begin() as tx:
        store.set_timeouts(conn, limits.statement_timeout, limits.lock_timeout)
        if dry_run:
            ids = list(conn.execute(_PENDING, {"id": batch_id}).scalars())
        else:
            ids = store.backfill_anchor_flags(conn, batch_id)
        if not ids:
            tx.rollback()
            return Result(BACKFILL_ANCHORS, batch_id, SKIPPED,
                          {"reason": "no essay whose metadata says anchor lacks the flag"})
        detail: dict[str, Any] = {
            "reason": f"{'would flag' if dry_run else 'flagged'} {len(ids)} anchor(s)",
            "plan": [f"set is_anchor = true on {len(ids)} essay(s) of batch {batch_id}"],
            "essays": sorted(ids),
        }
        if dry_run:
            tx.rollback()
            return Result(BACKFILL_ANCHORS, batch_id, DRY_RUN, detail)
        detail["took_ms"] = _ms_since(started)  # the audit row's figure, before COMMIT
        result = Result(BACKFILL_ANCHORS, batch_id, APPLIED, detail, audited=True)
        audit.insert(conn, result, replica, dry_run=False)
        return result
