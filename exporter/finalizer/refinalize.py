"""Action `refinalize`: what upstream's finalize_scoring does, in ONE transaction, exactly once.

Exactly-once rests on this transaction alone (never on leadership, which PgBouncer or a
recycled connection can silently lose):
1. `SELECT ... FOR UPDATE SKIP LOCKED` on the batch's cj_batch_uploads and cj_batch_states rows.
   If another finalizer (or the service) holds either, this one skips: it never waits.
2. The guard runs AFTER the locks, in the same READ COMMITTED transaction: each statement then
   reads a snapshot taken after the lock was granted, so it sees everything a previous holder
   committed (state COMPLETED, its outbox rows). A finalizer that got the lock after another
   one committed therefore always skips. Checking before locking would let two finalizers pass
   the guard one after the other and both write events.
3. Anchor backfill, BT scores, projections, the three outbox rows, the state/status change and
   the audit row all commit together, or (error, kill -9, lost connection) none of them does.

A batch whose anchors cannot be used (expected but < 2 distinct grades) is left untouched and
reported as needs_person: a projection-less "completion" would be worse than a wedged batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from psycopg import errors as pg_errors
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from exporter import db
from exporter.finalizer import audit, bt, events, scales, store
from exporter.finalizer.model import DEFAULT_LIMITS, Limits, Result
from exporter.finalizer.projection import Essay, Projection, project, resolve_anchor_grades
from exporter.vocabulary import APPLIED, DRY_RUN, FAILED, NEEDS_PERSON, REFINALIZE, SKIPPED

log = logging.getLogger(__name__)

WEDGED_STATES = ("WAITING_CALLBACKS", "SCORING")


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class Hooks:
    """Test seams inside the transaction: after its first statement (its snapshot exists),
    and right before COMMIT (e.g. to kill -9 the process there)."""

    after_begin: Callable[[], None] = field(default=_nothing)
    before_commit: Callable[[], None] = field(default=_nothing)


@dataclass(frozen=True)
class Plan:
    batch: store.Batch
    flagged: list[str]  # anchors the backfill flags
    essays: list[Essay]  # with is_anchor as it is after the backfill
    context: store.Context
    fit: bt.BTFit
    projection: Projection | None  # None: no anchors expected, nothing to project
    model: tuple[str | None, str | None]
    status: str

    def detail(self) -> dict[str, Any]:
        b = self.batch
        projected = len(self.projection.students) if self.projection else 0
        event_names = ["completed", "result"] + (["resource"] if b.user_id else [])
        steps = [
            f"lock cj_batch_uploads/cj_batch_states rows of batch {b.cj_batch_id}"
            " (FOR UPDATE SKIP LOCKED)",
            f"flag {len(self.flagged)} anchor(s) whose metadata says is_anchor",
            f"write BT scores of {len(self.essays)} essays from {self.fit.comparisons}"
            f" comparisons (reference {self.fit.reference})",
            (f"insert {projected} grade projection(s) ({self.context.scale_id},"
             f" context {self.context.source})" if self.projection
             else "no grade projections: the batch expects no anchors"),
            f"write outbox events: {', '.join(event_names)} (correlation {b.correlation_id})",
            f"set state COMPLETED, status {self.status}, completed_at",
        ]
        return {
            "reason": f"{b.state}/{b.status} -> COMPLETED/{self.status}",
            "plan": steps,
            "anchors_flagged": self.flagged,
            "essays": len(self.essays),
            "comparisons": self.fit.comparisons,
            "bt": self.fit.summary(),
            "projection": self.projection.reason if self.projection else "not expected",
            "projections": projected,
            "events": event_names,
            "status": self.status,
        }


def refinalize(engine: Engine, batch_id: int, *, replica: str, dry_run: bool,
               limits: Limits = DEFAULT_LIMITS, hooks: Hooks | None = None) -> Result:
    """Run the action; never raises for a batch-level problem (the Result says what happened)."""
    started = time.monotonic()
    try:
        result = _dry_run(engine, batch_id, limits) if dry_run else _apply(
            engine, batch_id, replica, limits, hooks or Hooks(), started)
    except DBAPIError as exc:
        result = Result(REFINALIZE, batch_id, FAILED, {"reason": _explain(exc)})
    except Exception as exc:  # a bug or bad data must not kill the cycle; it is audited
        log.exception("refinalize of batch %s failed", batch_id)
        result = Result(REFINALIZE, batch_id, FAILED, {"reason": f"{type(exc).__name__}: {exc}"})
    return replace(result, detail={**result.detail, "took_ms": _ms_since(started)})


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


def _explain(exc: DBAPIError) -> str:
    orig = exc.orig
    if isinstance(orig, pg_errors.UniqueViolation) and "idx_outbox_unique_unpublished" in str(orig):
        return ("an unpublished event with the same aggregate and type is still in the outbox "
                "(idx_outbox_unique_unpublished): retry once the relay has published it")
    if isinstance(orig, pg_errors.LockNotAvailable):
        return "lock_timeout: the service holds a lock on the batch's essays; retried later"
    return db.describe_error(exc)


def _apply(engine: Engine, batch_id: int, replica: str, limits: Limits, hooks: Hooks,
           started: float) -> Result:
    with engine.connect().execution_options(isolation_level="READ COMMITTED") as conn:
        tx = conn.begin()
        try:
            store.set_timeouts(conn, limits.statement_timeout, limits.lock_timeout)
            hooks.after_begin()
            batch = store.read_batch(conn, batch_id, lock=True)
            if isinstance(batch, str):
                tx.rollback()
                return Result(REFINALIZE, batch_id, SKIPPED, {"reason": batch})
            plan = _plan(conn, batch, backfill=True)
            if isinstance(plan, Result):
                tx.rollback()  # the backfill above, if any, is undone: nothing half-done
                return plan
            at = datetime.now(UTC)
            written = store.write_scores(conn, batch_id, plan.fit)
            inserted = (store.insert_projections(conn, batch_id, plan.projection,
                                                 plan.context.source)
                        if plan.projection else 0)
            store.insert_events(conn, events.build(batch, dict(plan.fit.scores),
                                                   plan.projection, plan.model, at), at)
            store.complete_batch(conn, batch_id, plan.status, at)
            detail = {**plan.detail(), "scores_written": written, "projections": inserted,
                      "took_ms": _ms_since(started)}  # the audit row's figure, before COMMIT
            result = Result(REFINALIZE, batch_id, APPLIED, detail, audited=True)
            audit.insert(conn, result, replica, dry_run=False)
            hooks.before_commit()
            tx.commit()
            return result
        except BaseException:
            if tx.is_active:
                tx.rollback()
            raise


def _dry_run(engine: Engine, batch_id: int, limits: Limits) -> Result:
    """The same decisions on a read-only snapshot: no lock, no write, nothing to undo."""
    options = {"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
    with engine.connect().execution_options(**options) as conn, conn.begin():
        store.set_timeouts(conn, limits.statement_timeout, limits.lock_timeout)
        batch = store.read_batch(conn, batch_id, lock=False)
        if isinstance(batch, str):
            return Result(REFINALIZE, batch_id, SKIPPED, {"reason": batch})
        plan = _plan(conn, batch, backfill=False)
        if isinstance(plan, Result):
            return plan
        return Result(REFINALIZE, batch_id, DRY_RUN, plan.detail())


def _plan(conn: Connection, batch: store.Batch, backfill: bool) -> Plan | Result:
    """Guard, eligibility, anchors, BT and projection; a Result when nothing is to be written.

    backfill=True flags the anchors in the database first (apply); False computes the same
    flags in memory (dry run).
    """
    bid = batch.cj_batch_id
    if batch.state == "COMPLETED":
        return Result(REFINALIZE, bid, SKIPPED, {"reason": "state is already COMPLETED"})
    written = store.existing_events(conn, batch)
    if written:
        return Result(REFINALIZE, bid, SKIPPED, {
            "reason": f"completion events already in the outbox ({', '.join(written)}):"
                      " finalizing again would publish them twice"})
    if batch.status.startswith("ERROR"):
        return Result(REFINALIZE, bid, NEEDS_PERSON, {
            "reason": f"upload status is {batch.status}: someone marked it failed"})
    if not _wedged(batch):
        return Result(REFINALIZE, bid, SKIPPED, {
            "reason": f"not wedged (state {batch.state}, status {batch.status},"
                      f" {batch.pending} callbacks pending)"})
    if backfill:
        flagged = store.backfill_anchor_flags(conn, bid)
        essays = store.load_essays(conn, bid)
    else:
        loaded = store.load_essays(conn, bid)
        flagged = [e.els_essay_id for e in loaded
                   if not e.is_anchor and store.metadata_says_anchor(e.metadata)]
        essays = [replace(e, is_anchor=e.is_anchor or e.els_essay_id in flagged) for e in loaded]
    context = store.load_context(conn, batch)
    expects = (any(e.is_anchor or store.metadata_says_anchor(e.metadata)
                   or e.els_essay_id.startswith(events.ANCHOR_PREFIX) for e in essays)
               or store.assignment_has_anchors(conn, batch.assignment_id))
    if expects:
        anchors = [e for e in essays if e.is_anchor]
        grades = sorted(set(resolve_anchor_grades(anchors, context.refs).values()))
        if len(grades) < 2:
            return Result(REFINALIZE, bid, NEEDS_PERSON, {
                "reason": f"anchors expected but unusable: {len(anchors)} flagged anchor(s),"
                          f" distinct grades {grades or 'none'} (projection needs >= 2)",
                "anchors": [e.els_essay_id for e in anchors], "grades": grades,
                "assignment_id": batch.assignment_id})
    try:
        fit = bt.fit((e.els_essay_id for e in essays),
                     {e.els_essay_id for e in essays if e.is_anchor},
                     store.load_outcomes(conn, bid))
    except bt.NoComparisons as exc:
        return Result(REFINALIZE, bid, NEEDS_PERSON, {"reason": str(exc)})
    projection = (project(scales.resolve(context.scale_id), essays, context.refs, fit.scores,
                          fit.ses) if expects else None)
    return Plan(batch, flagged, essays, context, fit, projection, store.llm_model(conn, bid),
                _final_status(batch))


def _wedged(b: store.Batch) -> bool:
    """The view's is_wedged / is_stuck_scoring, re-checked on the locked rows."""
    if b.state == "SCORING":
        return True
    return b.state == "WAITING_CALLBACKS" and (
        b.status.startswith("COMPLETE") or (b.submitted > 0 and b.pending <= 0))


def _final_status(b: store.Batch) -> str:
    """Keep a COMPLETE_* status upstream already committed (Batch 20); otherwise STABLE, or
    FORCED_RECOVERY when the callbacks fell short of the budget (the monitor's label)."""
    if b.status.startswith("COMPLETE"):
        return b.status
    if b.total_budget and b.completed + b.failed < b.total_budget:
        return "COMPLETE_FORCED_RECOVERY"
    return "COMPLETE_STABLE"
