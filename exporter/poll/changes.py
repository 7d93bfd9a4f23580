"""Which batches changed since the last poll: the signals of an incremental poll.

Every poll records a Mark: the database's now() and the xmin of its snapshot (the oldest
transaction that was still running when the snapshot was taken). The next poll looks, through
plain btree indexes on timestamp columns (sql/views/indexes.sql), at the rows stamped since
`mark.at - commit_lag_seconds`:

- cj_batch_states.last_activity_at (the service's ORM moves it on every update; callbacks, the
  monitor and failures set it too),
- cj_batch_uploads.updated_at (ORM onupdate; status changes),
- cj_processed_essays.updated_at (inserts, flag and metadata changes, re-parenting by the ORM),
- grade_projections.created_at and event_outbox.created_at (new rows),

and keeps only row versions the previous snapshot could not have seen: those whose xmin is not
older than the previous mark's xmin. The timestamp finds candidates cheaply; the xmin test drops
the ones already read, so a change inside the commit-lag window is re-read once, not at every
poll of the window. A changed row marks its batch and, through bos_batch_id, every run of the
same BOS batch (their resource-event and finalized-run counts are shared, and a re-run takes
its essays over from the previous run); the poll finds the runs among the rows it keeps
(exporter.poll.ledger), asking the database only for the BOS batch of a changed batch it does
not keep. Outbox rows mark the runs of their aggregate_id: the BOS batch for completion and
resource events (docs/design.md §F6), the batch itself for result events. No event document
is read: the polling role may not read events (sql/roles.sql), and a document `->` would
refuse cannot fail the poll (§F4).

What no column signals (an UPDATE by hand that moves no timestamp or moves it back, deleted
rows, a changed anchor_essay_references grade, a completion event whose cj_assessment_job_id
or a charge whose processing_id names a batch of another BOS batch than its aggregate_id, a
transaction that commits more than commit_lag_seconds after stamping its rows) is found by the
next full poll (exporter.poll.incremental).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, INTEGER

XID_SPAN = 2**32


@dataclass(frozen=True)
class Mark:
    """Where a poll's snapshot stood: the next poll reads what changed after it."""

    at: datetime  # now() of the poll's transaction (the database's clock)
    xmin: int  # pg_snapshot_xmin of its snapshot, 64-bit
    xmax: int  # pg_snapshot_xmax of its snapshot, 64-bit


MARK_SQL = text(
    "SELECT now() AS at, pg_snapshot_xmin(s)::text::bigint AS xmin,"
    " pg_snapshot_xmax(s)::text::bigint AS xmax FROM pg_current_snapshot() AS s"
)
# What the signals need: without an index a signal would scan its table, without a grant it
# fails; with anything missing every poll is a full one (exporter.poll.incremental).
CHANGE_INDEXES = (
    "cj_health_states_last_activity_idx",
    "cj_health_uploads_updated_idx",
    "cj_health_essays_updated_idx",
    "cj_health_projections_created_idx",
    "cj_health_outbox_created_idx",
)
CHANGE_COLUMNS = {  # table -> the columns the change query reads (sql/roles.sql grants them)
    "cj_batch_states": ("batch_id", "last_activity_at", "xmin"),
    "cj_batch_uploads": ("id", "bos_batch_id", "updated_at", "xmin"),
    "cj_processed_essays": ("cj_batch_id", "updated_at", "xmin"),
    "grade_projections": ("cj_batch_id", "created_at", "xmin"),
    "event_outbox": ("aggregate_id", "created_at", "xmin"),
}
INDEXES_SQL = text(
    "SELECT c.relname FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid"
    " WHERE c.relname = ANY (:names) AND i.indisvalid AND pg_table_is_visible(i.indrelid)"
)
GRANTS_SQL = text(
    "SELECT t.name || '.' || t.col FROM unnest(CAST(:tables AS text[]), CAST(:cols AS text[]))"
    " AS t(name, col) WHERE NOT has_column_privilege(t.name, t.col, 'SELECT')"
)


def _new(alias: str) -> str:
    """`alias`'s row version was written by a transaction not older than the previous mark's
    xmin. xmin is a 32-bit xid: it is widened with the epoch of the current snapshot's xmax
    (every unfrozen xid is within 2^31 of it); 0-2 are the permanent xids of frozen rows."""
    x = f"{alias}.xmin::text::bigint"
    full = f"(:xhi + {x} - CASE WHEN :xhi + {x} >= :xmax THEN {XID_SPAN} ELSE 0 END)"
    return f"({x} >= 3 AND {full} >= :prev)"


TOUCHED_SQL = text(
    "SELECT s.batch_id AS id, NULL AS aggregate FROM cj_batch_states AS s"
    f" WHERE s.last_activity_at > :since AND {_new('s')}"
    " UNION SELECT u.id, NULL FROM cj_batch_uploads AS u"
    f" WHERE u.updated_at > (:since AT TIME ZONE 'UTC') AND {_new('u')}"
    " UNION SELECT e.cj_batch_id, NULL FROM cj_processed_essays AS e"
    f" WHERE e.updated_at > (:since AT TIME ZONE 'UTC') AND {_new('e')}"
    " UNION SELECT g.cj_batch_id, NULL FROM grade_projections AS g"
    f" WHERE g.created_at > :since AND {_new('g')}"
    " UNION SELECT NULL, o.aggregate_id FROM event_outbox AS o"
    f" WHERE o.created_at > :since AND {_new('o')}"
)
BOS_SQL = text("SELECT DISTINCT bos_batch_id FROM cj_batch_uploads WHERE id = ANY (:ids)"
               ).bindparams(bindparam("ids", type_=ARRAY(INTEGER)))


@dataclass(frozen=True)
class Touched:
    """What the rows written since the previous mark name: batch ids, and outbox aggregates
    (a BOS batch id, or a CJ batch id for result events)."""

    batches: frozenset[int]
    aggregates: frozenset[str]

    def ids(self) -> set[int]:
        """The batches named, an aggregate that is a CJ batch id included."""
        return set(self.batches) | {int(a) for a in self.aggregates if _is_id(a)}


def _is_id(key: str) -> bool:
    return key.isascii() and key.isdigit() and len(key) <= 9


def mark(conn: Connection) -> Mark:
    row = conn.execute(MARK_SQL).one()
    return Mark(at=row.at, xmin=int(row.xmin), xmax=int(row.xmax))


def touched(conn: Connection, previous: Mark, current: Mark, commit_lag: float) -> Touched:
    """What the row versions `previous` could not see name (a superset of the changed batches;
    the caller keeps the watched ones and adds the other runs of their BOS batches)."""
    params = {"since": previous.at - timedelta(seconds=commit_lag), "prev": previous.xmin,
              "xhi": current.xmax - current.xmax % XID_SPAN, "xmax": current.xmax}
    batches, aggregates = set(), set()
    for bid, aggregate in conn.execute(TOUCHED_SQL, params):
        if bid is not None:
            batches.add(int(bid))
        elif aggregate is not None:
            aggregates.add(str(aggregate))
    return Touched(frozenset(batches), frozenset(aggregates))


def bos_of(conn: Connection, ids: set[int]) -> set[str]:
    """The BOS batches of these CJ batches (for the ones whose rows are not kept)."""
    return {str(b) for b in conn.execute(BOS_SQL, {"ids": sorted(ids)}).scalars()}


def missing(conn: Connection) -> list[str]:
    """The indexes and column grants the change query needs and does not have."""
    present = set(conn.execute(INDEXES_SQL, {"names": list(CHANGE_INDEXES)}).scalars())
    out = [f"index {name}" for name in CHANGE_INDEXES if name not in present]
    pairs = [(t, c) for t, cols in CHANGE_COLUMNS.items() for c in cols]
    params = {"tables": [t for t, _ in pairs], "cols": [c for _, c in pairs]}
    out += [f"SELECT on {col}" for col in conn.execute(GRANTS_SQL, params).scalars()]
    return out
