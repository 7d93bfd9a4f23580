"""Property test: the cj_batch_health view under hostile JSON, against a Python oracle.

Each example writes generated documents into one batch, as the CJ service would (its essays'
processing_metadata, its state's processing_metadata, completion events of its BOS batch):
NUL and lone-surrogate escapes anywhere, nesting near both PostgreSQL versions' stack limits,
arrays and scalars where objects are expected, huge strings, every spelling of is_anchor. The
view must never raise, must report exactly what the oracle computes for that batch (an
unreadable document counted and treated as saying nothing), and every other batch must read as
before. Runs on the session's server (pgserver's PostgreSQL 16, or postgres:15 under Docker)
and on Debian's PostgreSQL 15.

Budget: the `ci` profile (fixed seed, 120 examples per server); CJ_HEALTH_FUZZ_EXAMPLES=N runs N
(e.g. 3000 locally). The number of inputs tried is printed in the pytest summary.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import DBAPIError

from exporter.demo.scenarios import BatchSpec, Seeder
from exporter.poll.query import POLL_SQL
from exporter.poll.snapshot import BatchRow, build_snapshot
from exporter.upstream import events as ev
from exporter.vocabulary import PROBLEM_COLUMNS
from tests.support import report
from tests.support.database import Server, drop_database, new_database
from tests.support.debian_postgres import DebianPostgres
from tests.support.hostile_json import (
    ALWAYS_READABLE_DEPTH,
    NEAR_LIMITS,
    READABLE_DEPTH_AT_2MB,
    deep,
    pg_text,
    readable,
)

_BUDGET = os.environ.get("CJ_HEALTH_FUZZ_EXAMPLES")
settings.register_profile(
    "ci", max_examples=120, derandomize=True, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture,
                           HealthCheck.large_base_example])
settings.register_profile("local", parent=settings.get_profile("ci"),
                          max_examples=int(_BUDGET or 0) or 120)
PROFILE = settings.get_profile("local" if _BUDGET else "ci")

# --- documents -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Deep:
    """Stands for a deeply nested value in the oracle's copy of a document."""

    kind: str  # "[" or "{"
    depth: int


@dataclass(frozen=True)
class Doc:
    text: str | None  # what is written (None: SQL NULL)
    value: Any  # the oracle's view of its top level (Deep for a nested part)
    label: str  # for the statistics

    def __repr__(self) -> str:  # a failing example must stay readable: 16,000 brackets are not
        shown = self.text if self.text is None or len(self.text) <= 300 else (
            f"{self.text[:150]}...<{len(self.text)} chars>...{self.text[-50:]}")
        return f"Doc({self.label}, {shown!r})"


_MARK = "__deep_marker__"

SPELLINGS: list[Any] = [True, False, 1, 0, 1.0, "TRUE", "tRuE", "true", "false", "FALSE", "yes",
                        None, [True], {"v": True}, " true", "true\x00", "\uff54\uff52\uff55\uff45",
                        "True ", "", "\u0074rue"]
ODD_CHARS = ["\x00", "\ud800", "\udbff", "\udc00", "\udfff", "\ud83d", "\ude00", "\U0001f600",
             "\u202e", "\\", "\\u0000", '"', "\uff54", "\u00e5", "\n"]
strings = st.lists(st.one_of(st.text(max_size=4), st.sampled_from(ODD_CHARS)),
                   max_size=5).map("".join)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                    st.floats(allow_nan=False, allow_infinity=False), strings)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(strings, inner, max_size=3)), max_leaves=8)
depths = st.one_of(st.sampled_from(NEAR_LIMITS),
                   st.sampled_from([ALWAYS_READABLE_DEPTH - 1, ALWAYS_READABLE_DEPTH,
                                    ALWAYS_READABLE_DEPTH + 1, 450, 2_000, 10_000]),
                   st.integers(1, 16_400))


def serialize(value: Any, ensure_ascii: bool) -> str:
    """json.dumps as the service writes; raw surrogates cannot be sent as UTF-8, so a
    document holding one is always written with escapes (what ensure_ascii=True does)."""
    if not ensure_ascii:
        written = json.dumps(value, ensure_ascii=False)
        try:
            written.encode("utf-8")
            return written
        except UnicodeEncodeError:
            pass
    return json.dumps(value)


@st.composite
def documents(draw: st.DrawFn, top: st.SearchStrategy[Any]) -> Doc:
    """A document whose top level comes from `top`, perhaps with a deep or huge part."""
    value = draw(top)
    ascii_only = draw(st.booleans())
    extra = draw(st.sampled_from(["none", "none", "deep", "huge", "junk"]))
    if not isinstance(value, dict) or extra == "none":
        return Doc(serialize(value, ascii_only), value, "plain")
    if extra == "junk":
        value = {**value, draw(strings): draw(values)}
        return Doc(serialize(value, ascii_only), value, "junk")
    if extra == "huge":
        blob = draw(st.sampled_from(["x", "\u00e5", "\\u0000"])) * draw(
            st.sampled_from([5_000, 100_000, 1_000_000]))
        value = {**value, "blob": blob}
        return Doc(serialize(value, ascii_only), value, "huge")
    kind, depth = draw(st.sampled_from("[{")), draw(depths)
    value = {**value, "blob": Deep(kind, depth)}
    body = serialize({**value, "blob": _MARK}, ascii_only)
    return Doc(body.replace(json.dumps(_MARK), deep(depth, kind)), value, f"deep{kind}")


@st.composite
def whole_deep(draw: st.DrawFn) -> Doc:
    kind, depth = draw(st.sampled_from("[{")), draw(depths)
    return Doc(deep(depth, kind), Deep(kind, depth), f"deep{kind}")


HAND_WRITTEN = [  # texts json.dumps never writes, with the value PostgreSQL reads
    Doc('{"is_anchor": false, "is_anchor": true}', {"is_anchor": True}, "dup"),
    Doc('{"is_anchor": true, "is_anchor": "no"}', {"is_anchor": "no"}, "dup"),
    Doc('{"is_anchor": "\\u0074rue"}', {"is_anchor": "true"}, "escaped"),
    Doc('  {"is_anchor" :  true ,"x":[ ] }  ', {"is_anchor": True, "x": []}, "padding"),
    Doc('{"is_anchor": true, "n": 1e999999, "z": -0}', {"is_anchor": True}, "numbers"),
    Doc('{"is_anchor": true, "note": "\\\\u0000"}', {"is_anchor": True, "note": "\\u0000"},
        "escaped_backslash"),
    Doc('{"is_anchor": true, "k": "\\ud83d\\ude00"}', {"is_anchor": True, "k": "\U0001f600"},
        "pair"),
    Doc('{"is_anchor": true, "k": "\\uD800"}', {"is_anchor": True, "k": "\ud800"}, "upper_hex"),
    Doc("null", None, "json_null"),
    Doc(None, None, "sql_null"),
]

GRADE_VALUES: list[Any] = ["A", "B", "C", "", None, 7, True, ["A"], "\x00"]


@st.composite
def essay_documents(draw: st.DrawFn, ref_ids: list[int]) -> Doc:
    fields = st.fixed_dictionaries({}, optional={
        "is_anchor": st.sampled_from(SPELLINGS),
        "anchor_grade": st.sampled_from(GRADE_VALUES),
        "known_grade": st.sampled_from(GRADE_VALUES),
        "anchor_ref_id": st.sampled_from([*ref_ids, *map(str, ref_ids), "0042", "999999999",
                                          "1234567890", " 1", "1e2", None, -1]),
    })
    return draw(st.one_of(documents(fields), documents(values), whole_deep(),
                          st.sampled_from(HAND_WRITTEN)))


REQUEST_VALUES: st.SearchStrategy[Any] = st.one_of(st.just({"language": "sv"}),
                                                   st.sampled_from([[], "x", None, 1]))


@st.composite
def state_documents(draw: st.DrawFn) -> Doc:
    fields = st.fixed_dictionaries({}, optional={
        "original_request": REQUEST_VALUES, "comparison_budget": REQUEST_VALUES,
        "llm_batching_mode": strings})
    return draw(st.one_of(documents(fields), documents(values), whole_deep(),
                          st.sampled_from(HAND_WRITTEN)))


@st.composite
def event_documents(draw: st.DrawFn, batch_id: int, other_id: int, bos: str) -> Doc:
    envelope = ev.completion_row(batch_id, bos, "corr", {"total_essays": 6},
                                 datetime(2026, 1, 1, tzinfo=UTC)).envelope
    data = dict(envelope["data"])
    job = draw(st.sampled_from([str(batch_id), batch_id, float(batch_id), f" {batch_id}",
                                f"{batch_id}\x00", f"+{batch_id}", f"{batch_id}.0",
                                str(other_id), None, "INITIALIZATION_FAILED", "drop"]))
    if job == "drop":
        del data["cj_assessment_job_id"]
    else:
        data["cj_assessment_job_id"] = job
    data["processing_summary"] = {**data["processing_summary"], "note": draw(strings)}
    top = st.one_of(st.just({**envelope, "data": data}),
                    st.just({**envelope, "data": data, "metadata": {"x": "\x00"}}),
                    st.just({**envelope, "data": [data]}), values)
    return draw(documents(top))


# --- the oracle ----------------------------------------------------------------------------

def is_object(value: Any) -> bool:
    return isinstance(value, dict) or (isinstance(value, Deep) and value.kind == "{")


def key(value: Any, name: str) -> Any:
    return value.get(name) if isinstance(value, dict) else None


def meta_anchor(value: Any) -> bool | None:
    said = pg_text(key(value, "is_anchor"))
    return {"true": True, "false": False}.get(said.lower()) if said is not None else None


def grade(value: Any, storage: str, refs: dict[int, tuple[str, str]]) -> str | None:
    """The grade projector's 4-tier lookup (grade_projector._map_anchor_grades): a non-empty
    anchor_grade, then known_grade; then the assignment's reference with the essay's
    text_storage_id (its column, else the metadata's); then the one whose id is the metadata's
    anchor_ref_id, a string (upstream looks it up among str(ref.id))."""
    for name in ("anchor_grade", "known_grade"):
        said = pg_text(key(value, name))
        if said:  # what ->> returns, non-empty (upstream writes strings and tests for truth)
            return said
    meta_storage = key(value, "text_storage_id")
    storage = storage or (meta_storage if isinstance(meta_storage, str) else "")
    by_storage = {s: g for g, s in refs.values()}
    if storage in by_storage:
        return by_storage[storage]
    ref = key(value, "anchor_ref_id")
    if isinstance(ref, str) and re.fullmatch(r"[1-9][0-9]{0,8}", ref) and int(ref) in refs:
        return refs[int(ref)][0]
    return None


@dataclass(frozen=True)
class Essay:
    els_essay_id: str
    is_anchor: bool
    text_storage_id: str


def expected_row(essays: list[tuple[Essay, Doc, bool]], state: tuple[Doc, bool],
                 events: list[tuple[Doc, bool, datetime]], batch_id: int,
                 refs: dict[int, tuple[str, str]]) -> dict[str, Any]:
    """What the view must say about the batch; `bool`s say whether each document was read."""
    metas, anchors, grades = [], [], []
    for essay, doc, was_read in essays:
        meta = meta_anchor(doc.value) if was_read else None
        anchor = essay.is_anchor if meta is None else meta
        metas.append((essay, meta))
        anchors.append(anchor)
        if anchor:
            grades.append(grade(doc.value, essay.text_storage_id, refs) if was_read else None)
    students = sum(not a for a in anchors)
    anchor_grades = len({g for g in grades if g is not None})
    projectable = sum(anchors) >= 1 and anchor_grades >= 2 and students >= 1
    mismatches = sum(1 for essay, meta in metas if meta is not None and meta != essay.is_anchor)
    state_doc, state_read = state
    complete = state_read and is_object(state_doc.value) and all(
        is_object(key(state_doc.value, k)) for k in ("original_request", "comparison_budget"))
    mine = sorted(at for doc, was_read, at in events if was_read and is_object(doc.value)
                  and pg_text(key(key(doc.value, "data"), "cj_assessment_job_id"))
                  == str(batch_id))
    burst = max((sum(1 for t in mine if a <= t <= a + timedelta(seconds=60)) for a in mine),
                default=0)
    return {
        "student_essays": students,
        "anchors_in_metadata": sum(1 for _, m in metas if m is True),
        "anchor_mismatches": mismatches,
        "has_anchor_mismatch": mismatches > 0,
        "anchor_grades": anchor_grades,
        "projectable": projectable,
        "missing_projections": projectable,  # COMPLETE_STABLE without projections
        "metadata_incomplete": state_read and not complete,
        "completion_events": len(mine),
        "completion_event_burst": burst,
        "first_completion_event_at": mine[0] if mine else None,
        "last_completion_event_at": mine[-1] if mine else None,
        "has_duplicate_completion": len(mine) > 1,
        "unreadable_essay_documents": sum(1 for _, d, r in essays if d.text is not None and not r),
        "unreadable_state_documents": int(state_doc.text is not None and not state_read),
        "unreadable_completion_events": sum(1 for _, r, _ in events if not r),
    }


# --- the database --------------------------------------------------------------------------

@dataclass
class FuzzDb:
    engine: Engine
    version: str
    batch_id: int
    other_id: int
    bos: str
    essays: list[Essay]
    refs: dict[int, tuple[str, str]]  # the assignment's: id -> (grade, text_storage_id)
    must_read_depth: int
    baseline: dict[int, dict[str, Any]]
    stats: Counter[str]


def prepare(url: Any) -> FuzzDb:
    engine = create_engine(url)
    with engine.begin() as conn:
        seeder = Seeder(conn, rng=random.Random(4))
        # Its request asks for a budget, so a state document without original_request or
        # comparison_budget has a consequence (metadata_incomplete): what the oracle checks.
        target = seeder.insert_batch(BatchSpec(
            status="COMPLETE_STABLE", state="WAITING_CALLBACKS", students=4,
            anchor_grades=("C", "B"), idle=timedelta(hours=2),
            request={"max_comparisons_override": 30}))
        other = seeder.insert_batch(BatchSpec(status="COMPLETE_STABLE", completion_runs=1,
                                              anchor_grades=("C", "B"), projections=True))
        bos = conn.execute(text("SELECT bos_batch_id FROM cj_batch_uploads WHERE id = :b"),
                           {"b": target}).scalar_one()
        essays = [Essay(i, a, t) for i, a, t in conn.execute(text(
            "SELECT els_essay_id, is_anchor, text_storage_id FROM cj_processed_essays"
            " WHERE cj_batch_id = :b"
            " ORDER BY els_essay_id"), {"b": target})]
        refs = {i: (g, s) for i, g, s in conn.execute(text(
            "SELECT id, grade, text_storage_id FROM anchor_essay_references"))}
        version = conn.execute(text("SHOW server_version")).scalar_one()
        stack = conn.execute(text("SELECT pg_size_bytes(current_setting('max_stack_depth'))")
                             ).scalar_one()
        baseline = view_rows(conn)
    must_read = READABLE_DEPTH_AT_2MB if stack >= 2 * 1024 * 1024 else ALWAYS_READABLE_DEPTH
    return FuzzDb(engine, str(version), target, other, bos, essays, refs, must_read, baseline,
                  Counter())


def view_rows(conn: Connection) -> dict[int, dict[str, Any]]:
    return {r["cj_batch_id"]: dict(r)
            for r in conn.execute(text("SELECT * FROM cj_batch_health")).mappings()}


@pytest.fixture(scope="module")
def debian_pg15() -> Iterator[DebianPostgres]:
    server = DebianPostgres()
    yield server
    server.close()


@pytest.fixture(scope="module", params=["session_server", "debian_pg15"])
def fuzz_db(request: pytest.FixtureRequest, pg_server: Server) -> Iterator[FuzzDb]:
    server: Any = pg_server if request.param == "session_server" \
        else request.getfixturevalue("debian_pg15")
    name = new_database(server)
    db = prepare(server.url(name))
    yield db
    s = db.stats
    report.add(
        f"hostile JSON property test on PostgreSQL {db.version}: {s['examples']} examples"
        f" in {s['seconds']} s,"
        f" {s['documents']} documents tried ({s['essay']} essay, {s['state']} state,"
        f" {s['event']} event); {s['unreadable']} unreadable, counted; {s['refused']} refused"
        f" by PostgreSQL's own json input; {s['deep']} nested > {ALWAYS_READABLE_DEPTH}; "
        + ("no view error, no disagreement with the oracle" if s["passed"] else "FAILED"))
    db.engine.dispose()
    drop_database(server, name)


def write(conn: Connection, db: FuzzDb, statement: str, params: dict[str, Any],
          doc: Doc) -> Doc | None:
    """Write like the service. None when PostgreSQL's json input itself refuses the document
    (nested too deep for this version): the service's own write would have failed too."""
    savepoint = conn.begin_nested()
    try:
        conn.execute(text(statement), {**params, "doc": doc.text})
    except DBAPIError as exc:
        savepoint.rollback()
        assert isinstance(exc.orig, psycopg.errors.StatementTooComplex), exc.orig
        db.stats["refused"] += 1
        return None
    savepoint.commit()
    return doc


def write_or_null(conn: Connection, db: FuzzDb, statement: str, params: dict[str, Any],
                  doc: Doc) -> Doc:
    """`write`, and SQL NULL where PostgreSQL refused the document."""
    written = write(conn, db, statement, params, doc)
    if written is None:
        written = Doc(None, None, "refused")
        conn.execute(text(statement), {**params, "doc": None})
    return written


def verdict(known: bool | None, actual: bool, doc: Doc, what: str) -> bool:
    """The database's verdict on a document, which must match the oracle's where it knows."""
    assert known is None or known == actual, (what, doc.label, (doc.text or "")[:200])
    return actual


# --- the property --------------------------------------------------------------------------

BASE = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@st.composite
def batch_examples(draw: st.DrawFn, db: FuzzDb) -> tuple[list[Doc], Doc, list[tuple[Doc, int]]]:
    ref_ids = sorted(db.refs)
    essay_docs = [draw(essay_documents(ref_ids)) for _ in db.essays]
    state = draw(state_documents())
    events = draw(st.lists(st.tuples(event_documents(db.batch_id, db.other_id, db.bos),
                                     st.sampled_from([0, 1, 30, 59, 60, 61, 3600])),
                           max_size=3))
    return essay_docs, state, events


def test_view_reports_what_the_oracle_says_for_hostile_documents(fuzz_db: FuzzDb) -> None:
    db = fuzz_db

    @PROFILE
    @given(example=batch_examples(db))
    def check(example: tuple[list[Doc], Doc, list[tuple[Doc, int]]]) -> None:
        run_example(db, *example)

    started = time.monotonic()
    check()
    db.stats["seconds"] += int(time.monotonic() - started)
    db.stats["passed"] = 1
    assert db.stats["examples"] >= PROFILE.max_examples


ESSAY_WRITE = ("UPDATE cj_processed_essays SET processing_metadata = CAST(:doc AS json)"
               " WHERE els_essay_id = :e")
STATE_WRITE = ("UPDATE cj_batch_states SET processing_metadata = CAST(:doc AS json)"
               " WHERE batch_id = :b")
EVENT_WRITE = ("INSERT INTO event_outbox (id, aggregate_id, aggregate_type, event_type,"
               " event_data, event_key, topic, created_at, published_at) VALUES (:id, :a,"
               " 'cj_batch', :t, CAST(:doc AS json), :a, :t, :at, :at)")


def run_example(db: FuzzDb, essay_docs: list[Doc], state: Doc,
                events: list[tuple[Doc, int]]) -> None:
    with db.engine.connect() as conn, conn.begin() as tx:
        essays_written = [write_or_null(conn, db, ESSAY_WRITE, {"e": e.els_essay_id}, d)
                          for e, d in zip(db.essays, essay_docs, strict=True)]
        state_written = write_or_null(conn, db, STATE_WRITE, {"b": db.batch_id}, state)
        events_written: list[tuple[str, Doc, datetime]] = []
        for doc, offset in events:
            event_id, at = str(uuid.uuid4()), BASE + timedelta(seconds=offset)
            params = {"id": event_id, "a": db.bos, "t": ev.COMPLETED_EVENT, "at": at}
            if (written := write(conn, db, EVENT_WRITE, params, doc)) is not None:
                events_written.append((event_id, written, at))

        rows = view_rows(conn)  # never raises: the first property
        outbox = conn.execute(text("SELECT * FROM cj_outbox_health")).mappings().one()
        read: dict[str, bool] = dict(conn.execute(text(
            "SELECT els_essay_id, processing_metadata IS NULL"
            " OR cj_health_json(processing_metadata) IS NOT NULL FROM cj_processed_essays"
            " WHERE cj_batch_id = :b UNION ALL"
            " SELECT 'state', processing_metadata IS NULL"
            " OR cj_health_json(processing_metadata) IS NOT NULL FROM cj_batch_states"
            " WHERE batch_id = :b UNION ALL"
            " SELECT id::text, cj_health_json(event_data) IS NOT NULL FROM event_outbox"
            " WHERE aggregate_id = :a AND created_at >= :base"),
            {"b": db.batch_id, "a": db.bos, "base": BASE}).all())
        polled = conn.execute(POLL_SQL, {"lookback": 10**9}).mappings().all()
        tx.rollback()

    def judged(doc: Doc, actual: bool, what: str) -> bool:
        return verdict(readable(doc.text, db.must_read_depth), actual, doc, what)

    essays = [(e, d, judged(d, read[e.els_essay_id], "essay"))
              for e, d in zip(db.essays, essays_written, strict=True)]
    state_read = judged(state_written, read["state"], "state")
    judged_events = [(d, judged(d, read[i], "event"), at) for i, d, at in events_written]
    count(db.stats, [d for _, d, _ in essays], state_written, [d for d, _, _ in judged_events],
          [r for *_, r in essays] + [state_read] + [r for _, r, _ in judged_events])

    want = expected_row(essays, (state_written, state_read), judged_events, db.batch_id,
                        db.refs)
    assert {k: rows[db.batch_id][k] for k in want} == want
    for batch_id, row in db.baseline.items():  # a bad document costs only its own batch
        if batch_id != db.batch_id:
            assert timeless(rows[batch_id]) == timeless(row), batch_id
    assert outbox["unreadable_completion_events"] == want["unreadable_completion_events"]

    snap = build_snapshot(polled, {"unpublished_events": 0, "failed_events": 0,
                                   "oldest_unpublished_age_seconds": 0,
                                   "undated_unpublished_events": 0},
                          now=time.time(), duration=0.0, recent_window=3600, max_batches=100)
    assert snap.malformed == {}
    ours: BatchRow = next(b for b in snap.batches if b.cj_batch_id == db.batch_id)
    assert ours.problems == {p for p, c in PROBLEM_COLUMNS.items() if rows[db.batch_id][c]}
    assert ours.unreadable == {k: v for k, v in (
        ("essay_metadata", want["unreadable_essay_documents"]),
        ("state_metadata", want["unreadable_state_documents"]),
        ("completion_event", want["unreadable_completion_events"])) if v}


def timeless(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "state_age_seconds"}  # now() - activity


def count(stats: Counter[str], essays: list[Doc], state: Doc, events: list[Doc],
          verdicts: list[bool]) -> None:
    stats["examples"] += 1
    stats["essay"] += len(essays)
    stats["state"] += 1
    stats["event"] += len(events)
    docs = [*essays, state, *events]
    stats["documents"] += len(docs)
    stats["deep"] += sum(d.label.startswith("deep") for d in docs)
    stats["unreadable"] += sum(not v for v in verdicts)
