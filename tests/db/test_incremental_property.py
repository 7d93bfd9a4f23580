"""Property: after any sequence of service-like writes, the incremental poll's snapshot is the one
a full poll gives: at once for the changes a column signals, after the next full poll for the
others (exporter/poll/changes.py lists which are which).

Hypothesis draws the sequences (fixed seed, no example database, so CI runs the same examples
every time); each example gets a fresh database with the demo scenarios. CI runs a small budget;
CJ_HEALTH_PROPERTY_EXAMPLES=200 runs more.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import IntegrityError

from exporter.config import Settings
from exporter.poll import query
from exporter.poll.incremental import IncrementalPoll
from exporter.poll.snapshot import Snapshot
from exporter.upstream import events as ev
from tests.support.database import Server, database

EXAMPLES = int(os.environ.get("CJ_HEALTH_PROPERTY_EXAMPLES", "12"))
STATES = ("INITIALIZING", "GENERATING_PAIRS", "WAITING_CALLBACKS", "SCORING", "COMPLETED",
          "FAILED", "CANCELLED")
STATUSES = ("PENDING", "FETCHING_CONTENT", "PERFORMING_COMPARISONS", "COMPLETE_STABLE",
            "COMPLETE_MAX_COMPARISONS", "ERROR_PROCESSING", "COMPLETE_FORCED_RECOVERY")
GRADES = ("F", "E", "D", "C", "B", "A")
NOW_UTC = "(now() AT TIME ZONE 'UTC')"  # what the ORM's onupdate=NOW() stores in a naive column


@dataclass(frozen=True)
class Op:
    kind: str
    batch: int  # index into the batches, modulo their number
    value: int


# --- the writes ---------------------------------------------------------------------------------
# Each takes (conn, batch id, value) and commits in its own transaction, as the service does.

def _essay(conn: Connection, batch: int, value: int) -> str | None:
    ids = conn.execute(text("SELECT els_essay_id FROM cj_processed_essays WHERE cj_batch_id = :b"
                            " ORDER BY els_essay_id"), {"b": batch}).scalars().all()
    return ids[value % len(ids)] if ids else None


def callback(conn: Connection, batch: int, value: int) -> None:
    column = "failed_comparisons" if value % 4 == 0 else "completed_comparisons"
    conn.execute(text(f"UPDATE cj_batch_states SET {column} = {column} + 1,"
                      " last_activity_at = now() WHERE batch_id = :b"), {"b": batch})


def submit(conn: Connection, batch: int, value: int) -> None:
    conn.execute(text("UPDATE cj_batch_states SET submitted_comparisons = submitted_comparisons"
                      " + :n, total_comparisons = total_comparisons + :n, total_budget ="
                      " COALESCE(total_budget, 0) + :n, last_activity_at = now()"
                      " WHERE batch_id = :b"), {"b": batch, "n": 1 + value % 5})


def transition(conn: Connection, batch: int, value: int) -> None:
    conn.execute(text("UPDATE cj_batch_states SET state = CAST(:s AS cj_batch_state_enum),"
                      " last_activity_at = now() WHERE batch_id = :b"),
                 {"b": batch, "s": STATES[value % len(STATES)]})


def set_status(conn: Connection, batch: int, value: int) -> None:
    conn.execute(text("UPDATE cj_batch_uploads SET status = CAST(:s AS cj_batch_status_enum),"
                      f" updated_at = {NOW_UTC}, completed_at = CASE WHEN CAST(:s AS text)"
                      f" LIKE 'COMPLETE%' THEN {NOW_UTC} END WHERE id = :b"),
                 {"b": batch, "s": STATUSES[value % len(STATUSES)]})


def flag_essay(conn: Connection, batch: int, value: int) -> None:
    conn.execute(text(f"UPDATE cj_processed_essays SET is_anchor = NOT is_anchor, updated_at ="
                      f" {NOW_UTC} WHERE els_essay_id = :e"), {"e": _essay(conn, batch, value)})


def essay_metadata(conn: Connection, batch: int, value: int) -> None:
    grade = GRADES[value % len(GRADES)]
    doc = (f'{{"is_anchor": true, "known_grade": "{grade}", "anchor_ref_id": "1"}}' if value % 3
           else '{"is_anchor": false}')
    conn.execute(text(f"UPDATE cj_processed_essays SET processing_metadata = CAST(:d AS json),"
                      f" updated_at = {NOW_UTC} WHERE els_essay_id = :e"),
                 {"e": _essay(conn, batch, value), "d": doc})


def add_essay(conn: Connection, batch: int, value: int) -> None:
    anchor = value % 2 == 0
    essay_id = (f"ANCHOR_1_{uuid.uuid4().hex[:8]}" if anchor else str(uuid.uuid4()))
    doc = (f'{{"is_anchor": true, "known_grade": "{GRADES[value % len(GRADES)]}"}}' if anchor
           else '{"is_anchor": false}')
    conn.execute(text("INSERT INTO cj_processed_essays (els_essay_id, cj_batch_id,"
                      " text_storage_id, assessment_input_text, comparison_count,"
                      " processing_metadata, is_anchor) VALUES (:e, :b, 'storage', 'text', 0,"
                      " CAST(:d AS json), :a)"),
                 {"e": essay_id, "b": batch, "d": doc, "a": anchor and value % 4 == 0})


def rerun(conn: Connection, batch: int, value: int) -> None:
    """The BOS batch runs again: a new upload and state, and (as upstream re-parents by
    els_essay_id) the previous run's essays move over."""
    new = conn.execute(text(
        "INSERT INTO cj_batch_uploads (bos_batch_id, event_correlation_id, language,"
        " course_code, expected_essay_count, status, created_at, updated_at, user_id)"
        " SELECT bos_batch_id, :corr, language, course_code, expected_essay_count,"
        f" 'PENDING', {NOW_UTC}, {NOW_UTC}, user_id FROM cj_batch_uploads WHERE id = :b"
        " RETURNING id"), {"b": batch, "corr": str(uuid.uuid4())}).scalar_one()
    conn.execute(text("INSERT INTO cj_batch_states (batch_id, state, total_comparisons,"
                      " submitted_comparisons, completed_comparisons, failed_comparisons,"
                      " last_activity_at, partial_scoring_triggered, completion_threshold_pct,"
                      " current_iteration) VALUES (:n, 'INITIALIZING', 0, 0, 0, 0, now(), false,"
                      " 95, 0)"), {"n": new})
    if value % 2:
        conn.execute(text(f"UPDATE cj_processed_essays SET cj_batch_id = :n, updated_at ="
                          f" {NOW_UTC} WHERE cj_batch_id = :b AND NOT EXISTS (SELECT 1 FROM"
                          " grade_projections AS g WHERE g.els_essay_id ="
                          " cj_processed_essays.els_essay_id)"), {"n": new, "b": batch})


def project(conn: Connection, batch: int, value: int) -> None:
    conn.execute(text(
        "INSERT INTO grade_projections (els_essay_id, cj_batch_id, primary_grade,"
        " confidence_score, confidence_label, calculation_metadata)"
        " SELECT e.els_essay_id, e.cj_batch_id, 'C', 0.9, 'HIGH', '{}' FROM cj_processed_essays"
        " AS e WHERE e.cj_batch_id = :b AND NOT e.is_anchor ON CONFLICT DO NOTHING"),
        {"b": batch})


def finalize_events(conn: Connection, batch: int, value: int) -> None:
    """One finalize_scoring run's outbox rows (or only the first of them: value picks)."""
    bos, corr = conn.execute(text("SELECT bos_batch_id, event_correlation_id FROM"
                                  " cj_batch_uploads WHERE id = :b"), {"b": batch}).one()
    at = datetime.now(UTC)
    rows = [ev.completion_row(batch, bos, corr, {"total_essays": 6}, at),
            ev.result_row(batch, bos, corr, {"essay_results": []}, at),
            ev.resource_row(bos, corr, "teacher-0001", "org-demo", 30, at,
                            processing_id=str(batch))]
    for row in rows[: 1 + value % 3]:
        try:
            with conn.begin_nested():
                ev.insert_row(conn, row, at, published_at=None if value % 5 == 0 else at)
        except IntegrityError:
            pass  # idx_outbox_unique_unpublished refused it, as it refuses the service's


def relay(conn: Connection, batch: int, value: int) -> None:
    """The relay publishes the oldest unpublished row, or fails on it once more."""
    change = "published_at = now()" if value % 2 else "retry_count = retry_count + 1"
    conn.execute(text(f"UPDATE event_outbox SET {change} WHERE id = (SELECT id FROM event_outbox"
                      " WHERE published_at IS NULL ORDER BY created_at, id LIMIT 1)"))


def new_batch(conn: Connection, batch: int, value: int) -> None:
    new = conn.execute(text(
        "INSERT INTO cj_batch_uploads (bos_batch_id, event_correlation_id, language,"
        " course_code, expected_essay_count, status, created_at, updated_at)"
        f" VALUES (:bos, :corr, 'sv', 'SV1', 0, 'PENDING', {NOW_UTC}, {NOW_UTC}) RETURNING id"),
        {"bos": str(uuid.uuid4()), "corr": str(uuid.uuid4())}).scalar_one()
    if value % 3:  # a moment before its state row exists, the batch shows state NONE
        conn.execute(text("INSERT INTO cj_batch_states (batch_id, state, total_comparisons,"
                          " last_activity_at) VALUES (:n, 'INITIALIZING', 0, now())"), {"n": new})


# Writes that move no timestamp, or remove rows: found by the next full poll only.
def manual_anchor(conn: Connection, batch: int, value: int) -> None:
    conn.execute(text("UPDATE cj_processed_essays SET is_anchor = NOT is_anchor"
                      " WHERE els_essay_id = :e"), {"e": _essay(conn, batch, value)})


def manual_state(conn: Connection, batch: int, value: int) -> None:
    conn.execute(text("UPDATE cj_batch_states SET state = CAST(:s AS cj_batch_state_enum)"
                      " WHERE batch_id = :b"), {"b": batch, "s": STATES[value % len(STATES)]})


def manual_status(conn: Connection, batch: int, value: int) -> None:
    conn.execute(text("UPDATE cj_batch_uploads SET status = CAST(:s AS cj_batch_status_enum)"
                      " WHERE id = :b"), {"b": batch, "s": STATUSES[value % len(STATUSES)]})


def backdate(conn: Connection, batch: int, value: int) -> None:
    conn.execute(text("UPDATE cj_batch_states SET last_activity_at = now() - make_interval("
                      "hours => :h) WHERE batch_id = :b"), {"b": batch, "h": 1 + value % 300})


def delete_projection(conn: Connection, batch: int, value: int) -> None:
    conn.execute(text("DELETE FROM grade_projections WHERE ctid = (SELECT ctid FROM"
                      " grade_projections WHERE cj_batch_id = :b LIMIT 1)"), {"b": batch})


def delete_event(conn: Connection, batch: int, value: int) -> None:
    conn.execute(text("DELETE FROM event_outbox WHERE id = (SELECT id FROM event_outbox WHERE"
                      " aggregate_id IN (SELECT bos_batch_id FROM cj_batch_uploads WHERE id = :b)"
                      " OR aggregate_id = CAST(:b AS text) ORDER BY id LIMIT 1)"), {"b": batch})


def regrade_reference(conn: Connection, batch: int, value: int) -> None:
    conn.execute(text("UPDATE anchor_essay_references SET grade = :g WHERE id = (SELECT min(id)"
                      " FROM anchor_essay_references)"), {"g": GRADES[value % len(GRADES)]})


Write = Callable[[Connection, int, int], None]
SIGNALLED: dict[str, Write] = {f.__name__: f for f in (
    callback, submit, transition, set_status, flag_essay, essay_metadata, add_essay, rerun,
    project, finalize_events, relay, new_batch)}
UNSIGNALLED: dict[str, Write] = {f.__name__: f for f in (
    manual_anchor, manual_state, manual_status, backdate, delete_projection, delete_event,
    regrade_reference)}
FULL = "full_poll"  # a step that runs the next poll as a full one

OPS = st.builds(Op, st.sampled_from([*SIGNALLED, *SIGNALLED, *UNSIGNALLED, FULL]),
                st.integers(0, 40), st.integers(0, 1000))


# --- comparing ------------------------------------------------------------------------------------

def facts(snap: Snapshot) -> Snapshot:
    """The facts of a snapshot, without when and how it was read (and the outbox age, which
    moves between the two polls; compared apart, approximately)."""
    return replace(snap, taken_at=0.0, duration_seconds=0.0, full_poll=True, batches_read=0,
                   outbox=replace(snap.outbox, oldest_unpublished_age_seconds=0.0))


def assert_same(incremental: Snapshot, full: Snapshot, step: str) -> None:
    assert facts(incremental) == facts(full), step
    assert incremental.outbox.oldest_unpublished_age_seconds == pytest.approx(
        full.outbox.oldest_unpublished_age_seconds, abs=5), step


@pytest.fixture(scope="module")
def settings_() -> Settings:
    # Never due by time: the test decides when a full poll runs (FULL steps, and the end).
    return Settings(full_poll_interval_seconds=10**9, statement_timeout_seconds=30)


@contextmanager
def demo_database(server: Server) -> Iterator[Engine]:
    """A database of its own with the demo scenarios (tests/support/database.py), dropped
    afterwards."""
    with database(server, demo=True) as db:
        engine = create_engine(db.url, pool_size=2)
        try:
            yield engine
        finally:
            engine.dispose()


def run_sequence(engine: Engine, cfg: Settings, ops: list[Op]) -> dict[str, Any]:
    poller = IncrementalPoll(cfg)
    first = poller.poll(engine)
    assert first.full_poll
    assert_same(first, query.poll(engine, cfg), "first poll")
    unseen = False  # an unsignalled write happened since the last full poll
    kinds: dict[str, int] = {}
    for i, op in enumerate(ops):
        step = f"step {i}: {op}"
        kinds[op.kind] = kinds.get(op.kind, 0) + 1
        if op.kind == FULL:
            poller.request_full()
            unseen = False
        else:
            with engine.begin() as conn:
                ids = conn.execute(text("SELECT id FROM cj_batch_uploads ORDER BY id")).scalars()
                batches = list(ids)
                write = SIGNALLED.get(op.kind) or UNSIGNALLED[op.kind]
                write(conn, batches[op.batch % len(batches)], op.value)
            unseen |= op.kind in UNSIGNALLED
        snap = poller.poll(engine)
        assert snap.full_poll == (op.kind == FULL), step
        if not unseen:
            assert_same(snap, query.poll(engine, cfg), step)
    poller.request_full()
    assert_same(poller.poll(engine), query.poll(engine, cfg), "final full poll")
    return kinds


# No shrinking: each step costs a write and two polls, and the failing sequence is printed anyway.
@settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
          phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=st.lists(OPS, min_size=1, max_size=25))
def test_incremental_snapshot_equals_a_full_polls(pg_server: Server, settings_: Settings,
                                                 ops: list[Op]) -> None:
    with demo_database(pg_server) as engine:
        run_sequence(engine, settings_, ops)


def test_every_write_kind_is_exercised_in_one_long_sequence(pg_server: Server,
                                                           settings_: Settings) -> None:
    """Hypothesis' small CI budget may miss a kind: this sequence has each one, signalled ones
    checked at once, then each unsignalled one followed by a full poll."""
    ops = [Op(kind, batch, value) for value, kind in enumerate(SIGNALLED)
           for batch in (0, 3, 6, 9, 12)]
    for value, kind in enumerate(UNSIGNALLED):
        ops += [Op(kind, value, value), Op("callback", value, 0), Op(FULL, 0, 0)]
    with demo_database(pg_server) as engine:
        kinds = run_sequence(engine, settings_, ops)
    assert set(kinds) == {*SIGNALLED, *UNSIGNALLED, FULL}


def test_an_unsignalled_write_stays_unseen_until_the_full_poll(pg_server: Server,
                                                              settings_: Settings) -> None:
    """The other side of the bound: a manual is_anchor flip moves no timestamp, so the
    incremental poll does not see it (the bound is real) and the full poll does."""
    with demo_database(pg_server) as engine:
        unseen_until_full(engine, settings_)


def unseen_until_full(engine: Engine, settings_: Settings) -> None:
    poller = IncrementalPoll(settings_)
    before = poller.poll(engine)
    with engine.begin() as conn:
        batch = conn.execute(text("SELECT cj_batch_id FROM cj_processed_essays"
                                  " WHERE is_anchor LIMIT 1")).scalar_one()
        conn.execute(text("UPDATE cj_processed_essays SET is_anchor = false"
                          " WHERE cj_batch_id = :b"), {"b": batch})
    assert facts(poller.poll(engine)) == facts(before)
    truth = query.poll(engine, settings_)
    assert facts(truth) != facts(before)
    poller.request_full()
    assert_same(poller.poll(engine), truth, "full poll")
