"""Hostile JSON documents in every document the finalizer reads (issue 12, item 1, finalizer).

PostgreSQL stores `json` documents that ->/->> cannot read (a \\u0000 or lone-surrogate
escape anywhere, nesting near the stack limit), and Python's json.loads refuses documents
nested past ~1,000 levels that PostgreSQL reads. Each kind is planted in each place the
finalizer reads, one wedged batch per (kind, place), and two remediation cycles run over them
and the demo's batches, on a real PostgreSQL:
- the cycle never fails, and every other batch gets its usual outcome;
- a batch whose essay cannot be read is not rescored (needs_person, saying so); its anchors
  that can be read are still flagged;
- an unreadable completion or resource event of the batch's BOS aggregate may be this run's:
  needs_person, nothing written (counting it as absent would charge twice);
- an unreadable comparison pair names no model: the batch is healed, once;
- an unreadable newest result (json.loads) leaves what R3 compares with unknown: needs_person;
- no batch ever gets a second completion or charge;
- and an unreadable event committed while a finalization runs rolls it back (final re-check).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from exporter import config
from exporter.config import RemediationSettings, Settings
from exporter.demo import scenarios
from exporter.demo.scenarios import BatchSpec
from exporter.finalizer.anchors import backfill_anchors
from exporter.finalizer.refinalize import Hooks, refinalize
from exporter.finalizer.service import Remediator
from exporter.upstream import events as ev
from exporter.vocabulary import (
    APPLIED,
    BACKFILL_ANCHORS,
    DRY_RUN,
    NEEDS_PERSON,
    REFINALIZE,
    SKIPPED,
)
from tests.support.hostile_json import HOSTILE_FRAGMENTS, deep, with_fragment
from tests.support.remediation import RemediationDb

WEDGED = BatchSpec(status="COMPLETE_STABLE", state="WAITING_CALLBACKS",
                   anchor_grades=scenarios.GRADES, anchors_flagged=False,
                   idle=timedelta(hours=2))
PYTHON_DEEP = 1_500  # PostgreSQL reads it; json.loads raises RecursionError
PLACES = ("essay", "completion", "resource", "result", "pair")


def template(sid: int) -> dict[str, object]:
    """A document with every key the finalizer looks for, so that only its fault hides them."""
    return {"is_anchor": True, "provider": "openai", "model": "hostile-model",
            "data": {"cj_assessment_job_id": str(sid), "processing_id": str(sid)}}


def input_limit(engine: Engine, doc: Callable[[int], str]) -> int:
    """The deepest `doc(depth)` json input stores on this server (bisection): ->/->> read a
    few levels less (tests/db/test_hostile_documents.py), so it is stored but unreadable."""
    low, high = 1_000, 40_000
    with engine.connect() as conn:
        while low < high:
            mid = (low + high + 1) // 2
            try:
                conn.execute(text("SELECT CAST(CAST(:d AS text) AS json)"), {"d": doc(mid)})
                low = mid
            except DBAPIError:
                high = mid - 1
            conn.rollback()
    return low


def kinds(engine: Engine) -> dict[str, Callable[[int], str]]:
    """name -> the hostile document for a CJ batch id."""
    out: dict[str, Callable[[int], str]] = {
        name: functools.partial(document, fragment)
        for name, fragment in HOSTILE_FRAGMENTS.items()}
    limit = input_limit(engine, lambda d: with_fragment(template(0), deep(d - 1)))
    out["deep_for_postgres"] = functools.partial(document, deep(limit - 1))
    out["deep_for_python"] = functools.partial(document, deep(PYTHON_DEEP))
    return out


def document(fragment: str, sid: int) -> str:
    return with_fragment(template(sid), fragment)


def unreadable_by_postgres(conn: Connection, doc: str) -> bool:
    return conn.execute(text("SELECT cj_health_json(CAST(:d AS json)) IS NULL"),
                        {"d": doc}).scalar_one() is True


def insert_event(conn: Connection, event_type: str, aggregate: str, doc: str) -> None:
    """An outbox row with a raw document, relayed an hour ago (no unique-index conflict, and
    quiet for the finalizer's publishing check)."""
    at = datetime.now(UTC) - timedelta(hours=1)
    conn.execute(text(
        "INSERT INTO event_outbox (id, aggregate_id, aggregate_type, event_type, event_data,"
        " event_key, topic, created_at, published_at)"
        " VALUES (:id, :a, 'cj_batch', :t, CAST(:doc AS json), :a, :t, :at, :at)"),
        {"id": uuid.uuid4(), "a": aggregate, "t": event_type, "doc": doc, "at": at})


def plant(conn: Connection, place: str, batch: int, doc: str) -> None:
    bos = conn.execute(text("SELECT bos_batch_id FROM cj_batch_uploads WHERE id = :b"),
                       {"b": batch}).scalar_one()
    if place == "essay":  # on an anchor: the metadata is what says it is one
        conn.execute(text(
            "UPDATE cj_processed_essays SET processing_metadata = CAST(:d AS json)"
            " WHERE els_essay_id = (SELECT min(els_essay_id) FROM cj_processed_essays"
            "  WHERE cj_batch_id = :b AND els_essay_id LIKE 'ANCHOR%')"), {"d": doc, "b": batch})
    elif place == "pair":
        conn.execute(text(
            "UPDATE cj_comparison_pairs SET processing_metadata = CAST(:d AS json)"
            " WHERE ctid = (SELECT min(ctid) FROM cj_comparison_pairs WHERE cj_batch_id = :b)"),
            {"d": doc, "b": batch})
    elif place == "completion":
        insert_event(conn, ev.COMPLETED_EVENT, bos, doc)
    elif place == "resource":
        insert_event(conn, ev.RESOURCE_EVENT, bos, doc)
    else:
        insert_event(conn, ev.RESULT_EVENT, str(batch), doc)


# The run's events as the finalizer keys them, every document read through cj_health_json
# (a raw ->> would fail this very query on the planted events).
_EVENTS = text(
    "SELECT count(*) FILTER (WHERE o.event_type = :c AND d.doc -> 'data'"
    "  ->> 'cj_assessment_job_id' = :sid) AS completed,"
    " count(*) FILTER (WHERE o.event_type = :r AND o.aggregate_id = :sid) AS result,"
    " count(*) FILTER (WHERE o.event_type = :rc AND d.doc -> 'data' ->> 'processing_id' = :sid)"
    "  AS resource,"
    " count(*) AS rows"
    " FROM event_outbox AS o CROSS JOIN LATERAL (SELECT cj_health_json(o.event_data) AS doc) d"
    " WHERE o.aggregate_id IN (:sid, (SELECT bos_batch_id FROM cj_batch_uploads WHERE id = :b))"
)


def events(engine: Engine, batch: int) -> dict[str, int]:
    with engine.connect() as conn:
        row = conn.execute(_EVENTS, {"c": ev.COMPLETED_EVENT, "r": ev.RESULT_EVENT,
                                     "rc": ev.RESOURCE_EVENT, "sid": str(batch),
                                     "b": batch}).mappings().one()
    return {k: int(v) for k, v in row.items()}


@dataclass(frozen=True)
class Planted:
    place: str
    kind: str
    postgres_reads: bool  # cj_health_json gives the document (->> reads it)
    python_reads: bool  # json.loads reads it

    def expected(self) -> str:
        """The safe outcome of refinalize."""
        if self.place == "essay":  # one or the other cannot read it: anchor or not?
            return NEEDS_PERSON
        if self.place in ("completion", "resource") and not self.postgres_reads:
            return NEEDS_PERSON  # maybe this run's
        if self.place == "result" and not self.python_reads:
            return NEEDS_PERSON  # what R3 compares with is unknown
        # A pair names no model; an event PostgreSQL reads is what it says (this run's
        # completion or charge: kept); a result json.loads reads is compared by R3.
        return APPLIED


def python_reads(doc: str) -> bool:
    try:
        json.loads(doc)
    except RecursionError:
        return False
    return True


def remediator(url: str) -> Remediator:
    r = RemediationSettings(enabled=True, write_dsn=url, actions=(BACKFILL_ANCHORS, REFINALIZE),
                            dry_run=False, min_wedged_seconds=60.0, cooldown_seconds=0.0,
                            max_attempts=5, max_actions_per_cycle=1000,
                            max_wedged_for_auto=1000, replica_id="hostile-test")
    settings = Settings(dsn=url, remediation=dataclasses.replace(r))
    return Remediator(settings.finalizer(), config.parse_dsn(url))


def test_hostile_documents_in_every_place_the_finalizer_reads(
        remediation_db: RemediationDb) -> None:
    db = remediation_db
    docs = kinds(db.engine)
    planted: dict[int, Planted] = {}
    for place in PLACES:
        for kind, doc in docs.items():
            batch = db.seed(WEDGED)
            with db.engine.begin() as conn:
                text_doc = doc(batch)
                plant(conn, place, batch, text_doc)
                planted[batch] = Planted(place, kind, not unreadable_by_postgres(conn, text_doc),
                                         python_reads(text_doc))
    # Each kind is unreadable to one of them at least, and some to only one.
    assert not any(p.postgres_reads and p.python_reads for p in planted.values())
    assert {p.kind for p in planted.values() if p.postgres_reads} == {"deep_for_python"}
    assert {p.kind for p in planted.values() if not p.python_reads} == {
        "deep_for_python", "deep_for_postgres"}
    # And hostile events of a BOS batch that is none of these: they must cost nobody.
    with db.engine.begin() as conn:
        for doc in docs.values():
            insert_event(conn, ev.COMPLETED_EVENT, "someone-else", doc(0))
            insert_event(conn, ev.RESOURCE_EVENT, "someone-else", doc(0))
    before = {b: events(db.engine, b) for b in [*planted, *db.wedged()]}

    # The dry run of the anchor backfill (anchors.py _PENDING) reads through the same guard.
    essay_batch = next(b for b, p in planted.items() if p.place == "essay")
    dry = backfill_anchors(db.engine, essay_batch, replica="hostile-test", dry_run=True)
    assert dry.outcome == DRY_RUN, dry.line()

    rem = remediator(db.url)
    try:
        first = rem.run_cycle()
        second = rem.run_cycle()
    finally:
        rem.close()
    assert first.error is None and second.error is None, (first.error, second.error)
    outcomes = {(r.cj_batch_id, r.action): r for r in first.results}

    # The demo's batches: their usual outcomes, beside every hostile document.
    for batch in db.healed():
        assert outcomes[(batch, REFINALIZE)].outcome == APPLIED, outcomes[(batch, REFINALIZE)]
    for batch in db.refused():
        assert outcomes[(batch, REFINALIZE)].outcome == NEEDS_PERSON

    table = []
    for batch, p in sorted(planted.items()):
        place, kind = p.place, p.kind
        result = outcomes[(batch, REFINALIZE)]
        want = p.expected()
        table.append(f"{place:10} {kind:18} {result.outcome}")
        assert result.outcome == want, (place, kind, result.line())
        after = events(db.engine, batch)
        if want == NEEDS_PERSON:
            assert "cannot be read" in result.reason, (place, kind, result.reason)
            assert after == before[batch], (place, kind)  # nothing written, twice over
            assert outcomes.get((batch, REFINALIZE)) is not None
            again = [r for r in second.results if r.cj_batch_id == batch]
            assert [r.outcome for r in again] == [NEEDS_PERSON], (place, kind, again)
        else:
            # Healed once: this run has one completion and one charge (R1, R2), whatever it
            # had before; a second cycle does not touch it.
            assert after["completed"] == 1 and after["resource"] == 1, (place, kind, after)
            assert not [r for r in second.results if r.cj_batch_id == batch]
        if place == "essay":  # the readable anchors are flagged, the unreadable one is not
            backfill = outcomes[(batch, BACKFILL_ANCHORS)]
            assert backfill.outcome == APPLIED, backfill.line()
            unflagged = 0 if p.postgres_reads else 1
            assert len(backfill.detail["essays"]) == len(scenarios.GRADES) - unflagged
    for batch in db.wedged():  # the demo's: no second completion or charge in cycle 2
        assert events(db.engine, batch)["completed"] <= max(1, before[batch]["completed"])
        assert events(db.engine, batch)["resource"] <= max(1, before[batch]["resource"])
    print("\nrefinalize per hostile document:\n  " + "\n  ".join(table))


def test_an_unreadable_event_written_during_the_finalization_rolls_it_back(
        remediation_db: RemediationDb) -> None:
    """The final re-check counts the aggregate's unreadable events like the run's own: one
    committed by another writer while the finalization runs (it may be the service's
    completion of this run) rolls everything back; the next attempt leaves it to a person."""
    db = remediation_db
    batch = db.seed(WEDGED)
    doc = document(HOSTILE_FRAGMENTS["nul"], batch)

    def service_writes_one() -> None:
        with db.engine.begin() as conn:
            plant(conn, "completion", batch, doc)

    before = events(db.engine, batch)
    raced = refinalize(db.engine, batch, replica="hostile-test", dry_run=False,
                       hooks=Hooks(before_commit=service_writes_one))
    assert raced.outcome == SKIPPED, raced.line()
    assert raced.detail["events_found"]["unreadable"] == 1, raced.detail
    assert "unreadable" not in raced.detail["events_expected"]
    after = events(db.engine, batch)
    assert after == {**before, "rows": before["rows"] + 1}  # only the service's row
    again = refinalize(db.engine, batch, replica="hostile-test", dry_run=False)
    assert again.outcome == NEEDS_PERSON and "cannot be read" in again.reason, again.line()
    assert events(db.engine, batch) == after
