"""One poll: the watched batches of cj_batch_health and the outbox facts, in one read-only
snapshot, turned into a Snapshot (exporter.poll.snapshot)."""

from __future__ import annotations

import time
from dataclasses import fields

from sqlalchemy import Engine, text

from exporter.config import Settings
from exporter.db import read_only_snapshot
from exporter.poll.snapshot import TIER_COLUMNS, BatchRow, Snapshot, build_snapshot
from exporter.poll.watched import WATCHED_CTE, is_watched
from exporter.vocabulary import PROBLEM_COLUMNS, UNREADABLE_DOCUMENT_COLUMNS

_VIEW_COLUMNS = [f.name for f in fields(BatchRow) if f.name not in
                 ("last_activity", "completed_at", "problems", "unreadable", "anchor_tiers")]
_VIEW_COLUMNS += ["last_activity_at", "completed_at", *PROBLEM_COLUMNS.values(),
                  *UNREADABLE_DOCUMENT_COLUMNS.values(), *TIER_COLUMNS.values()]
# Times are fetched as epoch seconds: 'infinity' (a valid timestamptz) or a year past 9999 has no
# Python datetime, and psycopg would fail the whole fetch on it, so one odd row would make every
# poll fail. As a double it arrives as inf and only its own row is skipped (and counted).
_EPOCH_COLUMNS = ("last_activity_at", "completed_at")


def _select(column: str) -> str:
    if column in _EPOCH_COLUMNS:
        return f"extract(epoch FROM h.{column})::double precision AS {column}"
    return f"h.{column}"


POLL_SQL = text(
    f"{WATCHED_CTE} SELECT {', '.join(_select(c) for c in _VIEW_COLUMNS)}"
    f" FROM cj_batch_health AS h WHERE {is_watched('h')}"
)
OUTBOX_SQL = text(
    "SELECT unpublished_events, failed_events, oldest_unpublished_age_seconds,"
    " undated_unpublished_events FROM cj_outbox_health"
)


def poll(engine: Engine, settings: Settings) -> Snapshot:
    """Read the watched batches and the outbox in one read-only snapshot."""
    started = time.monotonic()
    with read_only_snapshot(engine, settings.statement_timeout_seconds,
                            settings.lock_timeout_seconds) as conn:
        rows = conn.execute(POLL_SQL, {"lookback": settings.lookback_seconds}).mappings().all()
        outbox = conn.execute(OUTBOX_SQL).mappings().one()
    return build_snapshot(rows, outbox, now=time.time(), duration=time.monotonic() - started,
                          recent_window=settings.recent_window_seconds,
                          max_batches=settings.max_batches)
