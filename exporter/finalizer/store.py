"""Every SQL statement the finalizer runs against the CJ tables, each with one job.

All functions take a Connection inside the caller's transaction: the caller decides what is
atomic. Documents are `json`, not `jsonb`: only ->/->> are used on them, and json written here
is cast from text. Naive timestamps of cj_batch_uploads / cj_processed_essays hold UTC.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, text

from exporter.finalizer.bt import BTFit
from exporter.finalizer.projection import AnchorRef, Essay, Projection
from exporter.finalizer.scales import DEFAULT_SCALE
from exporter.upstream import events as ev


@dataclass(frozen=True)
class Batch:
    """The upload and state rows of one CJ run, as read (and possibly locked) by the finalizer."""

    cj_batch_id: int
    bos_batch_id: str
    correlation_id: str
    status: str
    state: str
    user_id: str | None
    org_id: str | None
    assignment_id: str | None
    course_code: str
    created_at: datetime  # naive UTC, as stored
    completed_at: datetime | None
    total_budget: int | None
    submitted: int
    completed: int
    failed: int
    # Seconds since the service last wrote the rows, by the database's clock, read under the
    # lock (None when a stamp is not finite): the state row's last_activity_at (upstream's
    # finalize_scoring first commits state SCORING, which stamps it: onupdate NOW()) and the
    # upload row's updated_at (onupdate NOW() too, into a naive column: in the server's
    # TimeZone, read here the same way; see refinalize._busy).
    idle_seconds: float | None = None
    upload_idle_seconds: float | None = None
    # The raw stamps: upstream's ORM bumps both on every UPDATE of the row (the fence, which
    # writes neither, tells from them whether someone wrote the rows after it).
    last_activity_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def pending(self) -> int:
        return self.submitted - self.completed - self.failed


@dataclass(frozen=True)
class Context:
    """What the projector resolves from assessment_instructions (ContextBuilder upstream)."""

    source: str  # assignment | course | default
    scale_id: str
    refs: tuple[AnchorRef, ...]


def set_timeouts(conn: Connection, statement_timeout: float, lock_timeout: float) -> None:
    """Server-side, transaction-local: a finalizer never hangs on a lock the service holds."""
    conn.execute(
        text("SELECT set_config('statement_timeout', :st, true),"
             " set_config('lock_timeout', :lt, true)"),
        {"st": f"{int(statement_timeout * 1000)}ms", "lt": f"{int(lock_timeout * 1000)}ms"},
    )


_UPLOAD = (
    "SELECT id, bos_batch_id, event_correlation_id, status::text AS status, user_id, org_id,"
    " assignment_id, course_code, created_at, completed_at, updated_at,"
    " CASE WHEN isfinite(updated_at)"
    "  THEN EXTRACT(EPOCH FROM CAST(clock_timestamp() AS timestamp) - updated_at) END"
    "  AS upload_idle_seconds FROM cj_batch_uploads WHERE id = :id"
)
_STATE = (
    "SELECT state::text AS state, total_budget, submitted_comparisons, completed_comparisons,"
    " failed_comparisons, last_activity_at, CASE WHEN isfinite(last_activity_at)"
    "  THEN EXTRACT(EPOCH FROM clock_timestamp() - last_activity_at) END AS idle_seconds"
    " FROM cj_batch_states WHERE batch_id = :id"
)
_LOCK = " FOR UPDATE SKIP LOCKED"


def read_batch(conn: Connection, batch_id: int, lock: bool) -> Batch | str:
    """The batch, or why it cannot be had: missing, or (lock=True) row-locked by another
    transaction. SKIP LOCKED never waits, so a finalizer can never deadlock with the service
    or with another finalizer; it simply leaves the batch to whoever holds it."""
    suffix = _LOCK if lock else ""
    upload = conn.execute(text(_UPLOAD + suffix), {"id": batch_id}).mappings().first()
    if upload is None:
        return _missing_or_locked(conn, "cj_batch_uploads", "id", batch_id)
    state = conn.execute(text(_STATE + suffix), {"id": batch_id}).mappings().first()
    if state is None:
        return _missing_or_locked(conn, "cj_batch_states", "batch_id", batch_id)
    return Batch(
        cj_batch_id=int(upload["id"]), bos_batch_id=upload["bos_batch_id"],
        correlation_id=upload["event_correlation_id"], status=upload["status"],
        state=state["state"], user_id=upload["user_id"], org_id=upload["org_id"],
        assignment_id=upload["assignment_id"], course_code=upload["course_code"],
        created_at=upload["created_at"], completed_at=upload["completed_at"],
        total_budget=state["total_budget"], submitted=int(state["submitted_comparisons"]),
        completed=int(state["completed_comparisons"]), failed=int(state["failed_comparisons"]),
        idle_seconds=_seconds(state["idle_seconds"]),
        upload_idle_seconds=_seconds(upload["upload_idle_seconds"]),
        last_activity_at=state["last_activity_at"], updated_at=upload["updated_at"],
    )


def _seconds(value: Any) -> float | None:
    return None if value is None else float(value)


def _missing_or_locked(conn: Connection, table: str, column: str, batch_id: int) -> str:
    exists = conn.execute(text(f"SELECT 1 FROM {table} WHERE {column} = :id"),
                          {"id": batch_id}).first()
    return (f"{table} row is locked by another transaction" if exists
            else f"no {table} row for cj_batch_id {batch_id}")


@dataclass(frozen=True)
class Written:
    """The events of this CJ run already in the outbox, published or not (rules R1-R3 of
    docs/finalizer.md): what the finalizer may still add is decided from these counts."""

    completed: int  # completion events with this run's cj_assessment_job_id (R2: at most one)
    results: int  # result events of this run's aggregate
    resources: int  # resource events with this run's processing_id (R1: at most one)
    unpublished_results: int  # R3: a correction waits while one of these is still queued
    last_result: dict[str, Any] | None  # event_data of the newest result row, if parseable
    newest_age: float | None = None  # seconds since the newest of them was created (db clock)
    # Completion and resource events of the BOS batch's aggregate whose document ->> cannot
    # read (sql/views/cj_health_json.sql): whose run they are is unknown, so each may be this
    # run's; never counted as absent (that would write a second completion or charge).
    unreadable_completed: int = 0
    unreadable_resources: int = 0
    last_result_unreadable: bool = False  # the newest result row: json.loads refused it

    def kinds(self) -> list[str]:
        return [k for k, n in (("completed", self.completed), ("result", self.results),
                               ("resource", self.resources)) if n]


# The BOS batch's completion and resource events (upstream's index ix_event_outbox_aggregate_id;
# re-runs share the aggregate), each document read ONCE through cj_health_json (the CTE is
# referenced several times, so PostgreSQL materializes it): one hostile document costs this
# run its automatic healing (it counts as unreadable), never the statement.
_WRITTEN = text(
    "WITH bos AS ("
    " SELECT event_type, created_at, event_data IS NOT NULL AS has_doc,"
    "  cj_health_json(event_data) AS doc FROM event_outbox"
    " WHERE aggregate_id = :bos AND event_type IN (:completed, :resource)),"
    " mine AS (SELECT event_type, created_at FROM bos"
    " WHERE (event_type = :completed AND (doc -> 'data' ->> 'cj_assessment_job_id') = :sid)"
    "  OR (event_type = :resource AND (doc -> 'data' ->> 'processing_id') = :sid))"
    " SELECT"
    " (SELECT count(*) FROM mine WHERE event_type = :completed) AS completed,"
    " (SELECT count(*) FROM event_outbox WHERE event_type = :result"
    "  AND aggregate_id = :sid) AS results,"
    " (SELECT count(*) FROM event_outbox WHERE event_type = :result"
    "  AND aggregate_id = :sid AND published_at IS NULL) AS unpublished_results,"
    " (SELECT count(*) FROM mine WHERE event_type = :resource) AS resources,"
    " (SELECT count(*) FROM bos WHERE event_type = :completed AND has_doc AND doc IS NULL)"
    "  AS unreadable_completed,"
    " (SELECT count(*) FROM bos WHERE event_type = :resource AND has_doc AND doc IS NULL)"
    "  AS unreadable_resources,"
    " (SELECT CAST(event_data AS text) FROM event_outbox WHERE event_type = :result"
    "  AND aggregate_id = :sid ORDER BY created_at DESC, published_at DESC NULLS FIRST"
    "  LIMIT 1) AS last_result,"
    " (SELECT EXTRACT(EPOCH FROM clock_timestamp()"
    "   - max(created_at) FILTER (WHERE isfinite(created_at))) FROM ("
    "   SELECT created_at FROM mine UNION ALL SELECT created_at FROM event_outbox"
    "   WHERE event_type = :result AND aggregate_id = :sid) AS t) AS newest_age"
)


def written_events(conn: Connection, batch: Batch) -> Written:
    """This run's events, keyed by the CJ batch, never by bos_batch_id alone (re-runs share
    it): the completion event's cj_assessment_job_id and the resource event's processing_id
    (upstream sets it to the CJ batch id) within the BOS batch's aggregate, and the result
    event's aggregate (the CJ batch id)."""
    row = conn.execute(_WRITTEN, {
        "completed": ev.COMPLETED_EVENT, "result": ev.RESULT_EVENT,
        "resource": ev.RESOURCE_EVENT, "sid": str(batch.cj_batch_id),
        "bos": batch.bos_batch_id}).mappings().one()
    last: Any = None
    last_unreadable = False
    if row["last_result"]:
        try:
            last = json.loads(row["last_result"])
        except (ValueError, RecursionError):  # RecursionError: nested past ~1,000 levels
            last_unreadable = True
    return Written(int(row["completed"]), int(row["results"]), int(row["resources"]),
                   int(row["unpublished_results"]), last if isinstance(last, dict) else None,
                   _seconds(row["newest_age"]), int(row["unreadable_completed"]),
                   int(row["unreadable_resources"]), last_unreadable)


def counts(written: Written) -> tuple[int, int, int, int]:
    """(completions, results, resource events, unreadable events of the BOS aggregate): what
    the fence and the final re-check compare (an unreadable event written meanwhile may be
    this run's: it counts like one of its own)."""
    return (written.completed, written.results, written.resources,
            written.unreadable_completed + written.unreadable_resources)


def added_by(rows: Sequence[ev.OutboxRow]) -> tuple[int, int, int, int]:
    """The same counts for the rows this transaction inserts (they count in its own re-read)."""
    types = [r.event_type for r in rows]
    return (types.count(ev.COMPLETED_EVENT), types.count(ev.RESULT_EVENT),
            types.count(ev.RESOURCE_EVENT), 0)


@dataclass(frozen=True)
class Waiter:
    """A session waiting for this transaction to end (for one of the rows it locked or wrote)."""

    pid: int
    user: str | None
    application: str | None


# Sessions waiting on this transaction's id: every row lock it holds (FOR UPDATE, the rows it
# updated) and every unique-index entry it inserted (idx_outbox_unique_unpublished,
# grade_projections_pkey) makes a second writer wait on exactly that lock (PostgreSQL's
# XactLockTableWait); a second writer of the same row queues behind the first on the tuple
# lock. Relation-level waits (DDL, CREATE INDEX CONCURRENTLY) are not counted: they do not
# finalize batches. pg_locks and these pg_stat_activity columns are readable by any role.
_WAITERS = text(
    "SELECT w.pid, a.usename AS user, a.application_name AS application"
    " FROM pg_locks AS w LEFT JOIN pg_stat_activity AS a ON a.pid = w.pid"
    " WHERE NOT w.granted AND w.locktype = 'transactionid' AND w.transactionid = ("
    "  SELECT l.transactionid FROM pg_locks AS l WHERE l.pid = pg_backend_pid()"
    "  AND l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock' AND l.granted LIMIT 1)"
    " ORDER BY w.pid"
)


def waiters(conn: Connection) -> list[Waiter]:
    """Who is blocked by this transaction right now (the CJ service's next write on the batch,
    typically): the finalizer then rolls back and lets it through (refinalize.py)."""
    return [Waiter(int(r["pid"]), r["user"], r["application"])
            for r in conn.execute(_WAITERS).mappings()]


def superseded_by(conn: Connection, batch: Batch) -> list[int]:
    """Newer runs of the same BOS batch that now own essays this run compared (R4).

    cj_processed_essays is keyed by els_essay_id alone: a re-run with the same ELS essays
    moves their rows to the new CJ batch, and the old run keeps comparisons without essays.
    """
    return [int(b) for b in conn.execute(
        text("SELECT DISTINCT e.cj_batch_id FROM cj_comparison_pairs AS p"
             " JOIN cj_processed_essays AS e"
             "  ON e.els_essay_id IN (p.essay_a_els_id, p.essay_b_els_id)"
             " JOIN cj_batch_uploads AS u ON u.id = e.cj_batch_id"
             " WHERE p.cj_batch_id = :id AND e.cj_batch_id <> :id AND u.bos_batch_id = :bos"
             " ORDER BY 1"),
        {"id": batch.cj_batch_id, "bos": batch.bos_batch_id}).scalars()]


def db_clock(conn: Connection) -> datetime:
    """The database's clock, read inside the transaction: every time the finalizer writes
    comes from here, never from the exporter host (whose clock may be off)."""
    at: datetime = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
    return at


def metadata_says_anchor(meta: Any) -> bool:
    """Python twin of `lower(cj_health_json(processing_metadata) ->> 'is_anchor') = 'true'` (for
    a document both can read: load_essays refuses the others)."""
    if not isinstance(meta, dict):
        return False
    value = meta.get("is_anchor")
    return isinstance(value, bool | str) and str(value).lower() == "true"


class UnreadableEssays(Exception):
    """Essays whose metadata cannot be read: by ->> (sql/views/cj_health_json.sql), or by
    json.loads (nested past ~1,000 levels). Whether they are anchors, and of which grade, is
    unknown, so no projection of the batch can be trusted: a person's call."""

    def __init__(self, essays: Sequence[str]) -> None:
        self.essays = sorted(essays)
        super().__init__(f"{len(self.essays)} essay(s) of the batch have metadata that cannot"
                         " be read (a \\u0000 or lone-surrogate escape, or nesting too deep):"
                         " whether they are anchors is unknown, so the batch is not rescored")


def load_essays(conn: Connection, batch_id: int) -> list[Essay]:
    """Every essay of the batch (never the essay text); `is_anchor` as the column has it.

    In upstream's row order: its get_essays_for_cj_batch is an un-ordered select, whose
    physical order `ORDER BY ctid` reproduces, and the last anchor in that order is its SE
    reference (bt.py). Rows an UPDATE rewrote (the anchor backfill) come later in that order.
    Raises UnreadableEssays when a document cannot be read (the SQL of this module reads it
    through cj_health_json and would take it for "no anchor"; Python would read it otherwise).
    """
    rows = conn.execute(
        text("SELECT els_essay_id, is_anchor, CAST(processing_metadata AS text) AS meta,"
             " (processing_metadata IS NOT NULL"
             "  AND cj_health_json(processing_metadata) IS NULL) AS unreadable,"
             " text_storage_id FROM cj_processed_essays WHERE cj_batch_id = :id"
             " ORDER BY ctid"),
        {"id": batch_id},
    ).mappings().all()
    essays, unreadable = [], []
    for r in rows:
        try:
            meta = json.loads(r["meta"]) if r["meta"] else {}
        except (ValueError, RecursionError):  # RecursionError: nested past ~1,000 levels
            meta = None
        if meta is None or r["unreadable"]:
            unreadable.append(str(r["els_essay_id"]))
            continue
        essays.append(Essay(r["els_essay_id"], bool(r["is_anchor"]),
                            meta if isinstance(meta, dict) else {}, r["text_storage_id"]))
    if unreadable:
        raise UnreadableEssays(unreadable)
    return essays


def load_outcomes(conn: Connection, batch_id: int) -> list[tuple[str, str]]:
    """(winner, loser) essay ids of every comparison with a winner, in insertion order."""
    rows = conn.execute(
        text("SELECT CASE WHEN winner = 'essay_a' THEN essay_a_els_id ELSE essay_b_els_id END,"
             " CASE WHEN winner = 'essay_a' THEN essay_b_els_id ELSE essay_a_els_id END"
             " FROM cj_comparison_pairs WHERE cj_batch_id = :id"
             " AND winner IN ('essay_a', 'essay_b') ORDER BY id"),
        {"id": batch_id},
    ).all()
    return [(str(w), str(lo)) for w, lo in rows]


def llm_model(conn: Connection, batch_id: int) -> tuple[str, str] | None:
    """The most frequent (provider, model) over the batch's comparisons without an error code
    and with both keys set, as upstream derives the result event's model_provider/model_used;
    a tie goes to the pair met first in the row order of upstream's un-ordered select
    (`ORDER BY ctid`; Python's max keeps the first of equal counts, as upstream's does).
    None when no comparison names both: the caller uses the configured defaults."""
    counts: dict[tuple[str, str], int] = {}
    # A pair whose metadata ->> cannot read names no model (cj_health_json gives NULL): it is
    # skipped like one without the keys, never a failure of the batch's every attempt.
    for provider, model in conn.execute(
            text("SELECT p.doc ->> 'provider', p.doc ->> 'model' FROM ("
                 " SELECT ctid AS row_at, cj_health_json(processing_metadata) AS doc"
                 " FROM cj_comparison_pairs WHERE cj_batch_id = :id AND error_code IS NULL"
                 " OFFSET 0) AS p ORDER BY p.row_at"), {"id": batch_id}):
        if provider and model:
            counts[(provider, model)] = counts.get((provider, model), 0) + 1
    if not counts:
        return None
    return max(counts.items(), key=lambda item: item[1])[0]


def load_context(conn: Connection, batch: Batch) -> Context:
    """Assignment instructions (with the anchors of its grade scale), else the course's, else
    the default context: the same order as upstream's ContextBuilder."""
    if batch.assignment_id:
        scale = conn.execute(
            text("SELECT grade_scale FROM assessment_instructions WHERE assignment_id = :a"),
            {"a": batch.assignment_id},
        ).scalar()
        if scale is not None:
            refs = conn.execute(
                text("SELECT id, grade, text_storage_id FROM anchor_essay_references"
                     " WHERE assignment_id = :a AND grade_scale = :s ORDER BY id"),
                {"a": batch.assignment_id, "s": scale},
            ).all()
            return Context("assignment", str(scale),
                           tuple(AnchorRef(int(i), str(g), str(t)) for i, g, t in refs))
    scale = conn.execute(
        text("SELECT grade_scale FROM assessment_instructions WHERE course_id = :c"
             " ORDER BY id LIMIT 1"),
        {"c": batch.course_code},
    ).scalar()
    if scale is not None:
        return Context("course", str(scale), ())
    return Context("default", DEFAULT_SCALE, ())


def assignment_has_anchors(conn: Connection, assignment_id: str | None) -> bool:
    if not assignment_id:
        return False
    return conn.execute(
        text("SELECT EXISTS (SELECT 1 FROM anchor_essay_references WHERE assignment_id = :a)"),
        {"a": assignment_id},
    ).scalar_one() is True


def backfill_anchor_flags(conn: Connection, batch_id: int) -> list[str]:
    """is_anchor = true where the metadata says so; never clears a flag. Returns the ids. A
    document ->> cannot read says nothing (cj_health_json: NULL), so its essay is left."""
    return list(conn.execute(
        text("UPDATE cj_processed_essays SET is_anchor = true,"
             " updated_at = (clock_timestamp() AT TIME ZONE 'UTC')"
             " WHERE cj_batch_id = :id"
             " AND lower(cj_health_json(processing_metadata) ->> 'is_anchor') = 'true'"
             " AND is_anchor IS DISTINCT FROM true RETURNING els_essay_id"),
        {"id": batch_id},
    ).scalars())


def write_scores(conn: Connection, batch_id: int, fit: BTFit) -> int:
    ids = list(fit.essay_ids)
    return conn.execute(
        text("UPDATE cj_processed_essays AS e SET current_bt_score = v.score,"
             " current_bt_se = v.se, comparison_count = v.n,"
             " updated_at = (clock_timestamp() AT TIME ZONE 'UTC')"
             " FROM unnest(CAST(:ids AS text[]), CAST(:scores AS float8[]),"
             "  CAST(:ses AS float8[]), CAST(:counts AS integer[])) AS v(id, score, se, n)"
             " WHERE e.els_essay_id = v.id AND e.cj_batch_id = :batch"),
        {"batch": batch_id, "ids": ids, "scores": [fit.scores[e] for e in ids],
         "ses": [fit.ses[e] for e in ids], "counts": [fit.counts[e] for e in ids]},
    ).rowcount


def stale_projections(conn: Connection, batch_id: int, students: Sequence[str]) -> list[str]:
    """Projections of this batch for essays that are not its students now (R5 replaces the
    batch's projections; without DELETE rights such a row is left to a person)."""
    return list(conn.execute(
        text("SELECT els_essay_id FROM grade_projections WHERE cj_batch_id = :id"
             " AND NOT (els_essay_id = ANY(CAST(:ids AS text[]))) ORDER BY 1"),
        {"id": batch_id, "ids": list(students)}).scalars())


def replace_projections(conn: Connection, batch_id: int, projection: Projection,
                        context_source: str, at: datetime) -> int:
    """Write every student's projection, replacing one written before (R5: upstream's own
    retry dies on grade_projections_pkey, a plain INSERT here would too)."""
    students = projection.students
    if not students or projection.calibration is None:
        return 0
    return conn.execute(
        text("INSERT INTO grade_projections (els_essay_id, cj_batch_id, primary_grade,"
             " confidence_score, confidence_label, calculation_metadata, population_prior,"
             " grade_scale, created_at)"
             " SELECT v.id, :batch, v.grade, v.score, v.label, CAST(v.meta AS json), v.prior,"
             " :scale, :at FROM unnest(CAST(:ids AS text[]), CAST(:grades AS text[]),"
             "  CAST(:scores AS float8[]), CAST(:labels AS text[]), CAST(:metas AS text[]),"
             "  CAST(:priors AS float8[])) AS v(id, grade, score, label, meta, prior)"
             " ON CONFLICT (els_essay_id, cj_batch_id) DO UPDATE SET"
             " primary_grade = EXCLUDED.primary_grade,"
             " confidence_score = EXCLUDED.confidence_score,"
             " confidence_label = EXCLUDED.confidence_label,"
             " calculation_metadata = EXCLUDED.calculation_metadata,"
             " population_prior = EXCLUDED.population_prior,"
             " grade_scale = EXCLUDED.grade_scale, created_at = EXCLUDED.created_at"),
        {"batch": batch_id, "scale": projection.calibration.scale.scale_id, "at": at,
         "ids": [s.els_essay_id for s in students],
         "grades": [s.primary_grade for s in students],
         "scores": [s.confidence_score for s in students],
         "labels": [s.confidence_label for s in students],
         "metas": [json.dumps(projection.metadata(s, context_source)) for s in students],
         "priors": [s.population_prior for s in students]},
    ).rowcount


def insert_events(conn: Connection, rows: Sequence[ev.OutboxRow], at: datetime) -> None:
    for row in rows:
        ev.insert_row(conn, row, at)


def set_status(conn: Connection, batch_id: int, status: str, expected: str) -> None:
    """The upload's status alone (the finalizer's fence, refinalize._fence), from `expected`;
    updated_at is left alone, so that the batch's quiet check does not see the fence."""
    conn.execute(
        text("UPDATE cj_batch_uploads SET status = CAST(:status AS cj_batch_status_enum)"
             " WHERE id = :id AND status = CAST(:expected AS cj_batch_status_enum)"),
        {"id": batch_id, "status": status, "expected": expected},
    )


def complete_batch(conn: Connection, batch_id: int, status: str, at: datetime) -> None:
    """state COMPLETED, the upload's status, completed_at (naive UTC, kept if already set);
    `at` is the database's clock (db_clock)."""
    naive = at.astimezone(UTC).replace(tzinfo=None)
    conn.execute(
        text("UPDATE cj_batch_states SET state = 'COMPLETED', last_activity_at = :at"
             " WHERE batch_id = :id"),
        {"id": batch_id, "at": at},
    )
    conn.execute(
        text("UPDATE cj_batch_uploads SET status = CAST(:status AS cj_batch_status_enum),"
             " completed_at = COALESCE(completed_at, :naive), updated_at = :naive"
             " WHERE id = :id"),
        {"id": batch_id, "status": status, "naive": naive},
    )
