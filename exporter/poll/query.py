"""The poll's SQL: the watched batches' rows of cj_batch_health (all of them, or some by id) and
the outbox facts, and `poll()`, one stateless full poll (the reference exporter.poll.incremental
must equal)."""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator, Mapping
from dataclasses import fields
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, INTEGER

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
# Rows are read by id in chunks of this many: a full poll of 11,200 watched batches never holds
# more than one chunk of them, raw or parsed. (Not a server-side cursor: closing one on a
# connection the server just dropped logs a traceback.)
CHUNK_ROWS = 1000


def _select(column: str) -> str:
    if column in _EPOCH_COLUMNS:
        return f"extract(epoch FROM h.{column})::double precision AS {column}"
    return f"h.{column}"


_SELECT = f"SELECT {', '.join(_select(c) for c in _VIEW_COLUMNS)} FROM cj_batch_health AS h"
POLL_SQL = text(f"{WATCHED_CTE} {_SELECT} WHERE {is_watched('h')}")
ROWS_BY_ID_SQL = text(f"{_SELECT} WHERE h.cj_batch_id = ANY (:ids)").bindparams(
    bindparam("ids", type_=ARRAY(INTEGER)))
WATCHED_IDS_SQL = text(f"{WATCHED_CTE} SELECT id FROM watched")
OUTBOX_SQL = text(
    "SELECT unpublished_events, failed_events, oldest_unpublished_age_seconds,"
    " undated_unpublished_events FROM cj_outbox_health"
)


def watched_rows(conn: Connection, lookback: float) -> list[Mapping[Any, Any]]:
    """Every watched batch's row, in one statement (the stateless poll below)."""
    return list(conn.execute(POLL_SQL, {"lookback": lookback}).mappings())


def rows_by_id(conn: Connection, ids: Collection[int]) -> Iterator[Mapping[Any, Any]]:
    """The rows of these batches, a chunk of ids at a time (ids without a row are absent)."""
    ordered = sorted(ids)
    for start in range(0, len(ordered), CHUNK_ROWS):
        chunk = ordered[start:start + CHUNK_ROWS]
        yield from conn.execute(ROWS_BY_ID_SQL, {"ids": chunk}).mappings()


def watched_ids(conn: Connection, lookback: float) -> set[int]:
    return {int(i) for i in conn.execute(WATCHED_IDS_SQL, {"lookback": lookback}).scalars()}


def database_now(conn: Connection) -> float:
    """now() of the poll's transaction as Unix seconds: the recent window is measured on the
    database's clock, the one its timestamps were written by (never the exporter host's)."""
    return float(conn.execute(text("SELECT extract(epoch FROM now())")).scalar_one())


def outbox_facts(conn: Connection) -> Mapping[Any, Any]:
    return conn.execute(OUTBOX_SQL).mappings().one()


def poll(engine: Engine, settings: Settings) -> Snapshot:
    """One full, stateless poll: read the watched batches and the outbox in one snapshot."""
    started = time.monotonic()
    with read_only_snapshot(engine, settings.statement_timeout_seconds,
                            settings.lock_timeout_seconds) as conn:
        now = database_now(conn)
        rows = watched_rows(conn, settings.lookback_seconds)
        outbox = outbox_facts(conn)
    return build_snapshot(rows, outbox, now=now, duration=time.monotonic() - started,
                          recent_window=settings.recent_window_seconds,
                          max_batches=settings.max_batches)
