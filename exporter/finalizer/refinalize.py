"""Action `refinalize`: heal a wedged batch by the healing policy, in ONE transaction, exactly once.

Exactly-once rests on this transaction alone (never on leadership, which PgBouncer or a
recycled connection can silently lose):
1. `SELECT ... FOR UPDATE SKIP LOCKED` on the batch's cj_batch_uploads and cj_batch_states rows.
   If another finalizer (or the service) holds either, this one skips: it never waits.
2. Every check runs AFTER the locks, in the same READ COMMITTED transaction: each statement then
   reads a snapshot taken after the lock was granted, so it sees everything a previous holder
   committed (state COMPLETED, its outbox rows). A finalizer that got the lock after another
   one committed therefore always skips. Checking before locking would let two finalizers pass
   one after the other and both write events. The upload's status is re-read under the lock
   too, so upstream's completion sweeper (which reads the status, then finalizes) is not raced.
3. Anchor backfill, BT scores, projections, the outbox rows, the state/status change and the
   audit row all commit together, or (error, kill -9, lost connection) none of them does.

What is written is decided per event type from what this CJ run already has in the outbox
(docs/finalizer.md, "The policy"): R2 at most one completion per run, R1 at most one resource
event per run and none without a user, R3 a result only when none was sent or the one sent
says something else (a correction) and no result row is still unpublished; R4 a superseded run
is never rescored nor republished; R5 projections are replaced, never inserted twice. Every row
is checked against its consumer's contract first (exporter/upstream/contracts.py): a row the
consumer would reject rolls everything back as needs_person, so a batch whose result cannot be
delivered (the ENG5 national scale) is never marked COMPLETED.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from psycopg import errors as pg_errors
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from exporter import db
from exporter.finalizer import audit, bt, events, scales, store
from exporter.finalizer.model import DEFAULT_LIMITS, Limits, Result
from exporter.finalizer.projection import Essay, Projection, project, resolve_anchor_grades
from exporter.upstream import contracts
from exporter.upstream import events as ev
from exporter.vocabulary import (
    APPLIED,
    CLOSED,
    DRY_RUN,
    FAILED,
    NEEDS_PERSON,
    REFINALIZE,
    SKIPPED,
)

log = logging.getLogger(__name__)

WEDGED_STATES = ("WAITING_CALLBACKS", "SCORING")

# How quiet the batch's state row must be, on the locked row by the database's clock, before
# it is finalized: upstream's finalize_scoring commits state SCORING (stamping
# last_activity_at) and then rescores for as long as the batch takes before its next write.
# Far above a rescoring's duration, far below min_wedged_seconds (the valve, read from the
# view before the lock); it holds for `remediate --yes` too, which skips the valves.
QUIET_SECONDS = 30.0


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class Hooks:
    """Test seams inside the finalization's transaction: after its first statement (its
    snapshot exists); after every write (the final re-checks and COMMIT are next: e.g. kill -9
    the process there); after the final re-checks, right before COMMIT (the residual window
    of docs/finalizer.md). And in the fence's transaction (_fence), right before its COMMIT."""

    after_begin: Callable[[], None] = field(default=_nothing)
    before_commit: Callable[[], None] = field(default=_nothing)
    after_checks: Callable[[], None] = field(default=_nothing)
    fence_checked: Callable[[], None] = field(default=_nothing)


@dataclass(frozen=True)
class Close:
    """Nothing to publish: the run's state is closed in the CJ database (outcome `closed`)."""

    batch: store.Batch
    reason: str
    flagged: list[str]
    decisions: dict[str, str]
    at: datetime  # the database's clock, read once after the locks
    written: store.Written  # the run's events as the guard found them (the final re-check)
    rows: tuple[ev.OutboxRow, ...] = ()  # a close writes none

    def detail(self) -> dict[str, Any]:
        return {"reason": self.reason, "decisions": self.decisions,
                "anchors_flagged": self.flagged, "events": [],
                "plan": [f"lock cj_batch_uploads/cj_batch_states rows of batch"
                         f" {self.batch.cj_batch_id} (FOR UPDATE SKIP LOCKED)",
                         "no rescoring, no projection, no event",
                         f"set state COMPLETED (status {self.batch.status} kept),"
                         " completed_at if unset", FINAL_CHECKS]}


@dataclass(frozen=True)
class Plan:
    """Rescore and publish what the run lacks (outcome `applied`)."""

    batch: store.Batch
    flagged: list[str]  # anchors the backfill flags
    essays: list[Essay]  # with is_anchor as it is after the backfill, in row order
    context: store.Context
    fit: bt.BTFit
    projection: Projection | None  # None: no anchors expected, nothing to project
    rows: list[ev.OutboxRow]  # to write, each checked against its contract
    decisions: dict[str, str]  # per event type: what is written and why
    status: str
    at: datetime  # the database's clock, read once after the locks: every time written
    written: store.Written  # the run's events as the guard found them (the final re-check)

    def detail(self) -> dict[str, Any]:
        b = self.batch
        projected = len(self.projection.students) if self.projection else 0
        names = [_KIND[r.event_type] for r in self.rows]
        steps = [
            f"lock cj_batch_uploads/cj_batch_states rows of batch {b.cj_batch_id}"
            " (FOR UPDATE SKIP LOCKED)",
            f"flag {len(self.flagged)} anchor(s) whose metadata says is_anchor",
            f"write BT scores of {len(self.essays)} essays from {self.fit.comparisons}"
            f" comparisons (reference {self.fit.reference})",
            (f"write {projected} grade projection(s), replacing any ({self.context.scale_id},"
             f" context {self.context.source})" if self.projection
             else "no grade projections: the batch expects no anchors"),
            (f"write outbox events: {', '.join(names)} (correlation {b.correlation_id}),"
             " each checked against its consumer's contract" if names
             else "write no outbox event"),
            f"set state COMPLETED, status {self.status}, completed_at",
            FINAL_CHECKS,
        ]
        return {
            "reason": f"{b.state}/{b.status} -> COMPLETED/{self.status}",
            "plan": steps,
            "decisions": self.decisions,
            "anchors_flagged": self.flagged,
            "essays": len(self.essays),
            "comparisons": self.fit.comparisons,
            "bt": self.fit.summary(),
            "projection": self.projection.reason if self.projection else "not expected",
            "projections": projected,
            "events": names,
            "contracts": "every event valid (formats checked)" if names else "no event",
            "status": self.status,
        }


FINAL_CHECKS = ("last, right before COMMIT: re-count the run's events and look for sessions"
                " waiting on the batch's rows; either found: roll back (the CJ service is"
                " finalizing it)")

_KIND = {ev.COMPLETED_EVENT: "completed", ev.RESULT_EVENT: "result",
         ev.RESOURCE_EVENT: "resource"}


def refinalize(engine: Engine, batch_id: int, *, replica: str, dry_run: bool,
               limits: Limits = DEFAULT_LIMITS, hooks: Hooks | None = None,
               defaults: events.Defaults = events.DEFAULTS) -> Result:
    """Run the action; never raises for a batch-level problem (the Result says what happened)."""
    started = time.monotonic()
    try:
        result = _dry_run(engine, batch_id, limits, defaults) if dry_run else _apply(
            engine, batch_id, replica, limits, hooks or Hooks(), defaults, started)
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


@dataclass(frozen=True)
class Fence:
    """The upload status this finalization committed before it began (see _fence)."""

    batch_id: int
    original: str  # the status the service's guard saw until then
    status: str  # the COMPLETE_* status the finalization writes anyway
    rows: tuple[str, datetime | None, datetime | None]  # state, last_activity_at, updated_at

    def describe(self) -> str:
        return (f"status {self.original} -> {self.status} committed first, so that the CJ"
                " service's own finalization stops at its guard")


def _apply(engine: Engine, batch_id: int, replica: str, limits: Limits, hooks: Hooks,
           defaults: events.Defaults, started: float) -> Result:
    fence = _fence(engine, batch_id, limits, hooks, defaults)
    if isinstance(fence, Result):
        return fence
    try:
        result = _finalize(engine, batch_id, replica, limits, hooks, defaults, started, fence)
    except Exception:
        if fence is not None:
            _unfence(engine, fence, limits)
        raise
    if fence is not None and result.outcome not in (APPLIED, CLOSED):
        _unfence(engine, fence, limits)
    return result


def _fence(engine: Engine, batch_id: int, limits: Limits, hooks: Hooks,
           defaults: events.Defaults) -> Fence | Result | None:
    """Commit the final COMPLETE_* status first, in a transaction of its own, when the batch
    is going to be finalized and its status is not terminal yet.

    Upstream's finalize_scoring reads that status without a lock and stops at COMPLETE_*:
    once the fence is committed, a service finalization that starts later stops there, and
    one that had passed its guard already has to write the state row next (its first write),
    which the finalization then sees (a fresh stamp: skipped; or its UPDATE waiting on the
    lock: rolled back). Only a service stalled between its guard and that first write for
    longer than the whole finalization gets past both (docs/finalizer.md).

    The plan comes from a read-only snapshot first (as the dry run computes it): a batch that
    would not be finalized (needs_person, closed, skipped) is never fenced. Under the locks the
    fence re-checks what the plan rests on; anything changed: no fence, and the finalization's
    own transaction decides. Returns a Result only when it yielded to a waiting writer.
    """
    with engine.connect() as conn, conn.begin():
        current = store.read_batch(conn, batch_id, lock=False)
    if isinstance(current, str) or current.status.startswith("COMPLETE"):
        return None  # upstream's guard already stops at this status (Batch 20): no plan needed
    planned = _snapshot_plan(engine, batch_id, limits, defaults)
    if not isinstance(planned, Plan) or planned.batch.status.startswith("COMPLETE"):
        return None  # nothing will be written (the finalization reports why), or no need
    before = planned.batch
    with engine.connect().execution_options(isolation_level="READ COMMITTED") as conn:
        tx = conn.begin()
        try:
            store.set_timeouts(conn, limits.statement_timeout, limits.lock_timeout)
            batch = store.read_batch(conn, batch_id, lock=True)
            if isinstance(batch, str):
                tx.rollback()
                return Result(REFINALIZE, batch_id, SKIPPED, {"reason": batch})
            if ((batch.status, batch.state) != (before.status, before.state)
                    or _guard(batch) or _busy(batch, QUIET_SECONDS)
                    or store.counts(store.written_events(conn, batch))
                    != store.counts(planned.written)):
                tx.rollback()
                return None
            store.set_status(conn, batch_id, planned.status, before.status)
            blocked = store.waiters(conn)
            if blocked:
                tx.rollback()
                return _yielded(batch_id, blocked)
            hooks.fence_checked()
            tx.commit()
        except BaseException:
            if tx.is_active:
                tx.rollback()
            raise
    return Fence(batch_id, before.status, planned.status, _stamps(batch))


def _stamps(b: store.Batch) -> tuple[str, datetime | None, datetime | None]:
    return b.state, b.last_activity_at, b.updated_at


def _unfence(engine: Engine, fence: Fence, limits: Limits) -> None:
    """The finalization did not happen: give the status back, so that upstream's guard lets
    its own finalization through again; only if nobody wrote the rows since (the service's
    ORM stamps both on every UPDATE; SKIP LOCKED: a locked row is being written, and its
    writer decides)."""
    options = {"isolation_level": "READ COMMITTED"}
    with engine.connect().execution_options(**options) as conn, conn.begin():
        store.set_timeouts(conn, limits.statement_timeout, limits.lock_timeout)
        batch = store.read_batch(conn, fence.batch_id, lock=True)
        if (not isinstance(batch, str) and batch.status == fence.status
                and _stamps(batch) == fence.rows):
            store.set_status(conn, fence.batch_id, fence.original, fence.status)


def _finalize(engine: Engine, batch_id: int, replica: str, limits: Limits, hooks: Hooks,
              defaults: events.Defaults, started: float, fence: Fence | None) -> Result:
    """The finalization's own transaction: locks, guard, plan, writes, final checks."""
    with engine.connect().execution_options(isolation_level="READ COMMITTED") as conn:
        tx = conn.begin()
        try:
            store.set_timeouts(conn, limits.statement_timeout, limits.lock_timeout)
            hooks.after_begin()
            batch = store.read_batch(conn, batch_id, lock=True)
            if isinstance(batch, str):
                tx.rollback()
                return Result(REFINALIZE, batch_id, SKIPPED, {"reason": batch})
            plan = _plan(conn, batch, backfill=True, defaults=defaults,
                         quiet_seconds=QUIET_SECONDS)
            if isinstance(plan, Result):
                tx.rollback()  # the backfill above, if any, is undone: nothing half-done
                return plan
            result = _write(conn, plan, started)
            if fence is not None:
                result = replace(result, detail={**result.detail, "fence": fence.describe()})
            audit.insert(conn, result, replica, dry_run=False)
            hooks.before_commit()
            interfered = _interference(conn, plan)
            if interfered is not None:
                tx.rollback()  # every write above, the audit row included, is undone
                return interfered
            hooks.after_checks()
            tx.commit()
            return result
        except BaseException:
            if tx.is_active:
                tx.rollback()
            raise


def _interference(conn: Connection, plan: Plan | Close) -> Result | None:
    """The last statements before COMMIT: did anyone else write this run in the meantime?

    The guard ran after the row locks, but the CJ service takes none: its finalize_scoring
    reads the upload status without a lock, then commits state SCORING, rescores, updates the
    status, and commits each outbox row in a transaction of its own (docs/finalizer.md, "The
    race with the CJ service"). Two traces of it can appear while this transaction runs:
    - events of this run committed since the guard (a writer that holds no lock on the
      batch): the counts no longer add up; rolled back, the next attempt's guard sees them;
    - a session blocked by this transaction: the service's UPDATE of the state or upload row
      (its guard already passed: it will finalize after our COMMIT), its projection or
      outbox INSERT waiting on ours. Rolling back lets it finish alone; committing would leave
      it to write a second set of events once unblocked.
    """
    bid = plan.batch.cj_batch_id
    expected = tuple(a + b for a, b in zip(store.counts(plan.written),
                                           store.added_by(plan.rows), strict=True))
    found = store.counts(store.written_events(conn, plan.batch))
    if found != expected:
        return Result(REFINALIZE, bid, SKIPPED, {
            "reason": "another writer (the CJ service?) committed events of this run while the"
                      " finalization ran: rolled back, nothing written; the next attempt's"
                      " guard sees them",
            "events_expected": _named(expected), "events_found": _named(found)})
    blocked = store.waiters(conn)
    return _yielded(bid, blocked) if blocked else None


def _named(counts: tuple[int, ...]) -> dict[str, int]:
    """store.counts by kind; the unreadable events of the BOS aggregate only when any."""
    named = dict(zip(("completed", "result", "resource"), counts[:3], strict=True))
    return named | ({"unreadable": counts[3]} if counts[3] else {})


def _yielded(batch_id: int, blocked: list[store.Waiter]) -> Result:
    return Result(REFINALIZE, batch_id, SKIPPED, {
        "reason": f"{len(blocked)} session(s) wait on this batch's rows (the CJ service"
                  " finalizing it?): rolled back so that it finishes alone",
        "waiting": [{"pid": w.pid, "user": w.user, "application": w.application}
                    for w in blocked]})


def _write(conn: Connection, plan: Plan | Close, started: float) -> Result:
    """The plan's writes, all stamped with the database's clock (never the exporter host's)."""
    at = plan.at
    bid = plan.batch.cj_batch_id
    if isinstance(plan, Close):
        store.complete_batch(conn, bid, plan.batch.status, at)
        return Result(REFINALIZE, bid, CLOSED,
                      {**plan.detail(), "took_ms": _ms_since(started)}, audited=True)
    written = store.write_scores(conn, bid, plan.fit)
    projected = (store.replace_projections(conn, bid, plan.projection, plan.context.source, at)
                 if plan.projection else 0)
    store.insert_events(conn, plan.rows, at)
    store.complete_batch(conn, bid, plan.status, at)
    detail = {**plan.detail(), "scores_written": written, "projections": projected,
              "took_ms": _ms_since(started)}  # the audit row's figure, before COMMIT
    return Result(REFINALIZE, bid, APPLIED, detail, audited=True)


def _snapshot_plan(engine: Engine, batch_id: int, limits: Limits,
                   defaults: events.Defaults) -> Plan | Close | Result:
    """The decisions on a read-only snapshot: no lock, no write, nothing to undo."""
    options = {"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
    with engine.connect().execution_options(**options) as conn, conn.begin():
        store.set_timeouts(conn, limits.statement_timeout, limits.lock_timeout)
        batch = store.read_batch(conn, batch_id, lock=False)
        if isinstance(batch, str):
            return Result(REFINALIZE, batch_id, SKIPPED, {"reason": batch})
        return _plan(conn, batch, backfill=False, defaults=defaults,
                     quiet_seconds=QUIET_SECONDS)


def _dry_run(engine: Engine, batch_id: int, limits: Limits, defaults: events.Defaults) -> Result:
    """The same decisions on a read-only snapshot."""
    plan = _snapshot_plan(engine, batch_id, limits, defaults)
    if isinstance(plan, Result):
        return plan
    detail = plan.detail()
    if isinstance(plan, Close):
        detail["reason"] = f"would close: {detail['reason']}"
    return Result(REFINALIZE, batch_id, DRY_RUN, detail)


def _plan(conn: Connection, batch: store.Batch, backfill: bool,
          defaults: events.Defaults, quiet_seconds: float = 0.0) -> Plan | Close | Result:
    """Guard, eligibility, the policy per event type; a Result when nothing is to be written.

    backfill=True flags the anchors in the database first (apply); False computes the same
    flags in memory (dry run).
    """
    bid = batch.cj_batch_id
    refused = _guard(batch) or _busy(batch, quiet_seconds)
    if refused is not None:
        return refused
    at = store.db_clock(conn)
    written = store.written_events(conn, batch)
    unreadable = _unreadable_events(batch, written)
    if unreadable is not None:
        return unreadable
    publishing = _publishing(batch, written, quiet_seconds)
    if publishing is not None:
        return publishing
    if written.unpublished_results:
        return Result(REFINALIZE, bid, SKIPPED, {
            "reason": f"{written.unpublished_results} result event(s) of this run still wait"
                      " for the relay (R3: no correction while one is unpublished);"
                      " retried once it has published them"})
    newer = store.superseded_by(conn, batch)
    if newer:
        return _superseded(batch, written, newer, at)
    try:
        flagged, essays = _anchors(conn, bid, backfill)
    except store.UnreadableEssays as exc:
        return Result(REFINALIZE, bid, NEEDS_PERSON, {"reason": str(exc),
                                                      "essays": exc.essays[:20]})
    if not essays:
        return Result(REFINALIZE, bid, NEEDS_PERSON, {
            "reason": "the batch has no essays and no newer run owns the ones it compared"})
    context = store.load_context(conn, batch)
    unusable = _unusable_anchors(conn, batch, essays, context)
    if unusable is not None:
        return unusable
    try:
        fit = bt.fit((e.els_essay_id for e in essays),
                     [e.els_essay_id for e in essays if e.is_anchor],
                     store.load_outcomes(conn, bid))
    except bt.NoComparisons as exc:
        return Result(REFINALIZE, bid, NEEDS_PERSON, {"reason": str(exc)})
    projection = (project(scales.resolve(context.scale_id), essays, context.refs, fit.scores,
                          fit.ses) if _expects_anchors(conn, batch, essays) else None)
    built = events.build(batch, dict(fit.scores), projection, store.llm_model(conn, bid), at,
                         defaults)
    rows, decisions = _choose(batch, written, built)
    refused = _check_contracts(bid, rows, context)
    if refused is not None:
        return refused
    if not rows:
        return Close(batch, "its events are out and still right: nothing to publish"
                            " (R1-R3), so no rescoring either", flagged, decisions, at,
                     written)
    stale = store.stale_projections(conn, bid, [e.els_essay_id for e in essays
                                                if not e.is_anchor])
    if stale and projection is not None:
        return Result(REFINALIZE, bid, NEEDS_PERSON, {
            "reason": f"{len(stale)} projection(s) of this batch belong to essays that are not"
                      " its students now: replacing the projections (R5) would leave them",
            "essays": stale})
    return Plan(batch, flagged, essays, context, fit, projection, rows, decisions,
                _final_status(batch), at, written)


def _guard(batch: store.Batch) -> Result | None:
    bid = batch.cj_batch_id
    if batch.state == "COMPLETED":
        return Result(REFINALIZE, bid, SKIPPED, {"reason": "state is already COMPLETED"})
    if batch.status.startswith("ERROR"):
        return Result(REFINALIZE, bid, NEEDS_PERSON, {
            "reason": f"upload status is {batch.status}: someone marked it failed"})
    if not _wedged(batch):
        return Result(REFINALIZE, bid, SKIPPED, {
            "reason": f"not wedged (state {batch.state}, status {batch.status},"
                      f" {batch.pending} callbacks pending)"})
    return None


def _busy(batch: store.Batch, quiet_seconds: float) -> Result | None:
    """The batch's rows were written moments ago (read on the locked rows, by the database's
    clock): upstream's finalize_scoring commits state SCORING first, then rescores for as long
    as the batch takes before its next write; finalizing now would race it.

    The upload's updated_at is naive: upstream's NOW() writes it in the server's TimeZone, and
    it is read the same way. Should a session write it in another zone, the age is off by
    hours: only a small negative age counts as recent, so a misread age never blocks a batch
    for longer than QUIET_SECONDS (it only makes this one check blind)."""
    ages = {"state": batch.idle_seconds, "upload": batch.upload_idle_seconds}
    for row, idle in ages.items():
        if idle is not None and -1.0 <= idle < quiet_seconds:
            return Result(REFINALIZE, batch.cj_batch_id, SKIPPED, {
                "reason": f"its {row} row was written {max(idle, 0.0):.1f} s ago (state"
                          f" {batch.state}, status {batch.status}): the CJ service may be"
                          f" finalizing it; retried once it has been quiet {quiet_seconds:g} s"})
    return None


def _unreadable_events(batch: store.Batch, written: store.Written) -> Result | None:
    """Events whose document cannot be read: a completion or resource event of the BOS batch
    may be this run's (whose it is, its document would say), and the newest result is what R3
    compares with. Counting them as absent could write a second completion or charge: a
    person reads them (sql/views/cj_health_json.sql says why ->> cannot)."""
    parts = [f"{n} {kind} event(s) of BOS batch {batch.bos_batch_id}" for kind, n in
             (("completion", written.unreadable_completed),
              ("resource", written.unreadable_resources)) if n]
    if parts:
        return Result(REFINALIZE, batch.cj_batch_id, NEEDS_PERSON, {
            "reason": f"{' and '.join(parts)} in the outbox cannot be read (a \\u0000 or"
                      " lone-surrogate escape, or nesting too deep for ->>): any of them may be"
                      " this run's, so nothing is written (else a second completion or charge)",
            "unreadable_events": {"completed": written.unreadable_completed,
                                  "resource": written.unreadable_resources}})
    if written.last_result_unreadable:
        return Result(REFINALIZE, batch.cj_batch_id, NEEDS_PERSON, {
            "reason": "the newest result event of this run in the outbox cannot be read"
                      " (nested too deep for json.loads): what it says is unknown (R3), so"
                      " nothing is written"})
    return None


def _publishing(batch: store.Batch, written: store.Written,
                quiet_seconds: float) -> Result | None:
    """An event of this run was created moments ago: its producer commits each outbox row in a
    transaction of its own, so the others may still be on their way (the policy would
    otherwise see a partly published run and write the rest a second time)."""
    age = written.newest_age
    if age is None or age >= quiet_seconds:
        return None
    return Result(REFINALIZE, batch.cj_batch_id, SKIPPED, {
        "reason": f"its newest event ({', '.join(written.kinds())} in the outbox) was written"
                  f" {max(age, 0.0):.1f} s ago: its producer may still be writing the others;"
                  f" retried once it has been quiet {quiet_seconds:g} s"})


def _superseded(batch: store.Batch, written: store.Written, newer: list[int],
                at: datetime) -> Close | Result:
    """R4: a newer run of the BOS batch owns this run's essays; rescoring would score an empty
    (or partial) batch and republishing would overwrite the newer run's results in RAS."""
    runs = ", ".join(map(str, newer))
    if not (written.completed or written.results):
        return Result(REFINALIZE, batch.cj_batch_id, NEEDS_PERSON, {
            "reason": f"superseded by run(s) {runs} of the same BOS batch before it published"
                      " anything: not rescored (R4), and closing it would hide an undelivered"
                      " run", "superseded_by": newer})
    decisions = {kind: f"never (R4): superseded by run(s) {runs}"
                 for kind in ("completed", "result", "resource")}
    return Close(batch, f"superseded by run(s) {runs} of the same BOS batch, which now own its"
                        " essays (R4): never rescored or republished; over-charges, if any,"
                        " are refunded by hand", [], decisions, at, written)


def _anchors(conn: Connection, bid: int, backfill: bool) -> tuple[list[str], list[Essay]]:
    """The anchor backfill and the essays as they are after it, in row order. The dry run
    computes the flags in memory and moves the rows it would flag to the end, as the UPDATE
    does (its new row versions come after the others in ctid order)."""
    if backfill:
        flagged = store.backfill_anchor_flags(conn, bid)
        return flagged, store.load_essays(conn, bid)
    loaded = store.load_essays(conn, bid)
    flagged = [e.els_essay_id for e in loaded
               if not e.is_anchor and store.metadata_says_anchor(e.metadata)]
    kept = [e for e in loaded if e.els_essay_id not in flagged]
    moved = [replace(e, is_anchor=True) for e in loaded if e.els_essay_id in flagged]
    return sorted(flagged), kept + moved


def _expects_anchors(conn: Connection, batch: store.Batch, essays: list[Essay]) -> bool:
    return (any(e.is_anchor or store.metadata_says_anchor(e.metadata)
                or e.els_essay_id.startswith(events.ANCHOR_PREFIX) for e in essays)
            or store.assignment_has_anchors(conn, batch.assignment_id))


def _unusable_anchors(conn: Connection, batch: store.Batch, essays: list[Essay],
                      context: store.Context) -> Result | None:
    """Anchors expected but fewer than 2 distinct grades: a projection-less "completion" would
    be worse than a wedged batch."""
    if not _expects_anchors(conn, batch, essays):
        return None
    anchors = [e for e in essays if e.is_anchor]
    grades = sorted(set(resolve_anchor_grades(anchors, context.refs).values()))
    if len(grades) >= 2:
        return None
    return Result(REFINALIZE, batch.cj_batch_id, NEEDS_PERSON, {
        "reason": f"anchors expected but unusable: {len(anchors)} flagged anchor(s),"
                  f" distinct grades {grades or 'none'} (projection needs >= 2)",
        "anchors": sorted(e.els_essay_id for e in anchors), "grades": grades,
        "assignment_id": batch.assignment_id})


def _choose(batch: store.Batch, written: store.Written,
            built: events.Built) -> tuple[list[ev.OutboxRow], dict[str, str]]:
    """Per event type, what this finalization writes, by R1-R3 (docs/finalizer.md)."""
    rows: list[ev.OutboxRow] = []
    decisions: dict[str, str] = {}
    if written.completed:
        decisions["completed"] = f"kept: {written.completed} already in the outbox (R2)"
    else:
        rows.append(built.completion)
        decisions["completed"] = "written: none in the outbox"
    last = (written.last_result or {}).get("data")
    if not written.results:
        rows.append(built.result)
        decisions["result"] = "written: none in the outbox"
    elif events.same_substance(last, built.result.envelope["data"]):
        decisions["result"] = (f"kept: the last of {written.results} sent says what a"
                               " finalization would publish now (R3)")
    else:
        rows.append(built.result)
        decisions["result"] = (f"corrected: the last of {written.results} sent differs from"
                               " what a finalization publishes now (R3)")
    if written.resources:
        decisions["resource"] = f"kept: {written.resources} already in the outbox (R1)"
    elif built.resource is None:
        decisions["resource"] = ("withheld: the upload has no user_id, so there is nobody to"
                                 " charge (an unbilled run: charge it once by hand)")
    else:
        rows.append(built.resource)
        decisions["resource"] = "written: none in the outbox"
    return rows, decisions


def _check_contracts(bid: int, rows: list[ev.OutboxRow],
                     context: store.Context) -> Result | None:
    """Every row against its consumer's contract, formats checked: one the consumer would
    reject (RAS drops an invalid result as a poison pill) is never written."""
    for row in rows:
        problems = contracts.violations(row.event_type, row.envelope)
        if problems:
            return Result(REFINALIZE, bid, NEEDS_PERSON, {
                "reason": f"the {_KIND.get(row.event_type, row.event_type)} event would fail"
                          f" its consumer's contract ({problems[0]}): nothing is written and"
                          " the batch is not completed",
                "violations": problems[:10], "event_type": row.event_type,
                "grade_scale": context.scale_id})
    return None


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
