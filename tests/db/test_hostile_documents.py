"""Hostile JSON documents against everything the project installs (issue 12, item 1).

PostgreSQL stores `json` documents that ->/->> cannot read (a \\u0000 or lone-surrogate escape
anywhere, nesting near the stack limit). Nothing installed here may make a write of the CJ
service fail on one, and one costs only its own batch's facts: counted, never fatal.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from exporter import cli, sqlfiles
from exporter.demo.scenarios import GRADES, BatchSpec, Seeder
from exporter.poll.query import OUTBOX_SQL, POLL_SQL
from exporter.poll.snapshot import Snapshot, build_snapshot
from exporter.upstream import events as ev
from exporter.vocabulary import PROBLEM_COLUMNS
from tests.support.database import SeededDb, Server, drop_database, new_database, url_string
from tests.support.hardening import apply_roles, drop_roles
from tests.support.hostile_json import (
    HOSTILE_FRAGMENTS,
    READABLE_DEPTH_AT_2MB,
    READABLE_FRAGMENTS,
    deep,
    with_fragment,
)

OLD_INDEX = (  # what indexes.sql recommended before: it made the service's INSERT fail
    "CREATE INDEX CONCURRENTLY cj_health_outbox_completion_job_idx ON event_outbox"
    " ((event_data -> 'data' ->> 'cj_assessment_job_id'), created_at)"
    " WHERE event_type = 'huleedu.cj_assessment.completed.v1'"
)
ROLES = ("cj_health_operator", "cj_health_ro", "cj_health_remediator")


def hostile_documents(max_depth: int) -> dict[str, str]:
    """Every kind of document json input accepts and ->/->> refuse (or barely read)."""
    docs = {name: with_fragment({"is_anchor": True, "cj_assessment_job_id": "1"}, fragment)
            for name, fragment in HOSTILE_FRAGMENTS.items()}
    docs["top_level_nul"] = json.dumps("\x00")
    docs["deep_objects"] = deep(max_depth, "{")
    docs["deep_arrays"] = deep(max_depth, "[")
    docs["deep_inside"] = with_fragment({"is_anchor": True}, deep(max_depth - 2, "["))
    return docs


def json_input_limit(engine: Engine, kind: str) -> int:
    """The deepest document an INSERT stores on this server (bisection): json input parses
    with less stack than ->/->> (16,375 vs 16,364 levels on PostgreSQL 16)."""
    low, high = 1_000, 40_000
    with engine.connect() as conn:
        conn.execute(text("CREATE TEMP TABLE IF NOT EXISTS depth_probe (doc json)"))
        conn.commit()
        while low < high:
            mid = (low + high + 1) // 2
            try:
                conn.execute(text("INSERT INTO depth_probe VALUES (CAST(:d AS json))"),
                             {"d": deep(mid, kind)})
                low = mid
            except DBAPIError:
                high = mid - 1
            conn.rollback()
    return low


@pytest.fixture
def engine(seeded_db: SeededDb) -> Iterator[Engine]:
    e = create_engine(seeded_db.url)
    yield e
    e.dispose()


def rows(conn: Connection) -> dict[int, dict[str, Any]]:
    return {r["cj_batch_id"]: dict(r)
            for r in conn.execute(text("SELECT * FROM cj_batch_health")).mappings()}


def problems(row: dict[str, Any]) -> set[str]:
    return {p for p, column in PROBLEM_COLUMNS.items() if row[column]}


# --- the CJ service's writes -------------------------------------------------------------------

@dataclass(frozen=True)
class InstalledDb:
    url: str
    engine: Engine


@pytest.fixture
def everything_installed(pg_server: Server) -> Iterator[InstalledDb]:
    """Views, functions, indexes, the finalizer's tables and sql/roles.sql, as in production."""
    name = new_database(pg_server)
    admin: URL = pg_server.url(name)
    engine = create_engine(admin)
    with engine.begin() as conn:
        Seeder(conn).insert_batch(BatchSpec(anchor_grades=GRADES, projections=True,
                                            completion_runs=1))
    assert cli.main(["install-view", "--remediation", "--dsn", url_string(admin)]) == 0
    try:
        result = apply_roles(admin)
        assert result.returncode == 0, result.stderr
        yield InstalledDb(url_string(admin), engine)
    finally:
        engine.dispose()
        drop_database(pg_server, name)
        drop_roles(pg_server.url(), *ROLES)


def json_columns(conn: Connection) -> list[tuple[str, str]]:
    """Every json/jsonb column of the CJ service's tables (not the project's own)."""
    return [(t, c) for t, c in conn.execute(text(
        "SELECT c.table_name, c.column_name FROM information_schema.columns AS c"
        " JOIN information_schema.tables AS t USING (table_schema, table_name)"
        " WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'"
        " AND c.data_type IN ('json', 'jsonb') AND c.table_name NOT LIKE 'cj\\_health\\_%'"
        " ORDER BY 1, 2"))]


def service_writes(conn: Connection, doc: str, batch_id: int, bos: str) -> list[str]:
    """The CJ service's writes of `doc`, each in a savepoint; the ones that failed, and why."""
    writes: list[tuple[str, Any]] = []
    for table, column in json_columns(conn):
        writes.append((f"UPDATE {table}.{column}", lambda c, t=table, col=column: c.execute(text(
            f"UPDATE {t} SET {col} = CAST(:doc AS json) WHERE ctid = (SELECT min(ctid) FROM {t})"
        ), {"doc": doc})))
    # finalize_scoring's INSERT of a completion event (what the old index refused), unpublished
    # (a fresh aggregate each time: upstream's unique index allows one unpublished per BOS id).
    writes.append(("INSERT completion event", lambda c: c.execute(text(
        "INSERT INTO event_outbox (aggregate_id, aggregate_type, event_type, event_data,"
        " event_key, topic) VALUES (:a, 'cj_batch', :t, CAST(:doc AS json), :a, :t)"),
        {"a": str(uuid.uuid4()), "t": ev.COMPLETED_EVENT, "doc": doc})))
    writes.append(("INSERT essay", lambda c: c.execute(text(
        "INSERT INTO cj_processed_essays (els_essay_id, cj_batch_id, text_storage_id,"
        " assessment_input_text, comparison_count, processing_metadata, is_anchor)"
        " VALUES (:id, :b, 's', 'x', 0, CAST(:doc AS json), false)"),
        {"id": f"e-{random.getrandbits(40):x}", "b": batch_id, "doc": doc})))
    failed = []
    for what, write in writes:
        savepoint = conn.begin_nested()
        try:
            write(conn)
            savepoint.commit()
        except DBAPIError as exc:
            savepoint.rollback()
            failed.append(f"{what}: {exc.orig}")
    return failed


def test_no_write_of_the_service_fails_whatever_the_document(
        everything_installed: InstalledDb) -> None:
    engine = everything_installed.engine
    limits = {kind: json_input_limit(engine, kind) for kind in "[{"}
    docs = {**hostile_documents(min(limits.values())),
            **{name: with_fragment({"x": 1}, f) for name, f in READABLE_FRAGMENTS.items()}}
    with engine.connect() as conn, conn.begin() as tx:
        batch_id, bos = conn.execute(text(
            "SELECT id, bos_batch_id FROM cj_batch_uploads ORDER BY id LIMIT 1")).one()
        columns = json_columns(conn)
        assert ("event_outbox", "event_data") in columns and len(columns) >= 6, columns
        failures = {name: service_writes(conn, doc, batch_id, bos) for name, doc in docs.items()}
        tx.rollback()
    assert {name: f for name, f in failures.items() if f} == {}
    print(f"\n{len(docs)} documents x {len(columns) + 2} writes each, all accepted"
          f" (json input depth limits here: arrays {limits['[']}, objects {limits['{']})")


def test_the_old_json_index_refused_the_service_and_install_view_drops_it(
        everything_installed: InstalledDb) -> None:
    """The write test above can fail: with the old index the same INSERT is refused."""
    engine = everything_installed.engine
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(OLD_INDEX))
    doc = hostile_documents(100)["nul"]
    with engine.connect() as conn, conn.begin() as tx:
        batch_id, bos = conn.execute(text("SELECT id, bos_batch_id FROM cj_batch_uploads"
                                          " ORDER BY id LIMIT 1")).one()
        failed = service_writes(conn, doc, batch_id, bos)
        tx.rollback()
    assert any("unsupported Unicode escape sequence" in f for f in failed), failed

    assert cli.main(["install-view", "--no-indexes", "--dsn", everything_installed.url]) == 0
    with engine.connect() as conn, conn.begin() as tx:
        assert sqlfiles.invalid_indexes(conn) == []
        assert conn.execute(text("SELECT to_regclass('cj_health_outbox_completion_job_idx')"
                                 )).scalar() is None
        assert service_writes(conn, doc, batch_id, bos) == []
        tx.rollback()


# --- the view: a bad document costs only its own batch -----------------------------------------

def test_unreadable_documents_cost_only_their_batch(engine: Engine,
                                                    seeded_db: SeededDb) -> None:
    with engine.connect() as conn, conn.begin():
        before = rows(conn)
        seeder = Seeder(conn, rng=random.Random(12))
        spec = BatchSpec(status="COMPLETE_STABLE", state="WAITING_CALLBACKS",
                         anchor_grades=GRADES, anchors_flagged=False, students=4,
                         idle=timedelta(hours=2))
        essay_batch, state_batch, event_batch = (seeder.insert_batch(spec) for _ in range(3))
        fixed = rows(conn)
        docs = hostile_documents(READABLE_DEPTH_AT_2MB)
        # Essays of essay_batch: an anchor with \u0000, two students with lone surrogates,
        # and an anchor 10,000 levels deep (slow path, but readable). The state document of
        # state_batch; completion events of event_batch's BOS batch.
        essays = conn.execute(text(
            "SELECT els_essay_id FROM cj_processed_essays WHERE cj_batch_id = :b"
            " ORDER BY is_anchor, els_essay_id LIKE 'ANCHOR%', els_essay_id"),
            {"b": essay_batch}).scalars().all()
        students, anchors = essays[:4], essays[4:]
        for essay, kind in ((anchors[0], "nul"), (students[0], "lone_high"),
                            (students[1], "lone_low"), (anchors[1], "deep_inside")):
            conn.execute(text("UPDATE cj_processed_essays SET processing_metadata ="
                              " CAST(:d AS json) WHERE els_essay_id = :e"),
                         {"d": docs[kind], "e": essay})
        conn.execute(text("UPDATE cj_batch_states SET processing_metadata = CAST(:d AS json)"
                          " WHERE batch_id = :b"), {"d": docs["lone_high"], "b": state_batch})
        bos = fixed[event_batch]["bos_batch_id"]
        at = datetime.now(UTC)
        good = ev.completion_row(event_batch, bos, "c", {"total_essays": 6}, at)
        bad = ev.completion_row(event_batch, bos, "c", {"note": "a\x00b"}, at)
        for row in (good, bad):  # relayed (upstream allows one unpublished per BOS id)
            ev.insert_row(conn, row, at, published_at=at)

        after = rows(conn)  # the view reads every batch: no error
        outbox = conn.execute(text("SELECT * FROM cj_outbox_health")).mappings().one()

    assert after[essay_batch]["unreadable_essay_documents"] == 3  # the deep one is read
    # An unreadable document says nothing: its anchor is not counted from the metadata (nor
    # as a mismatch), and its grade is unknown.
    assert fixed[essay_batch]["anchors_in_metadata"] == len(GRADES)
    assert after[essay_batch]["anchors_in_metadata"] == len(GRADES) - 1
    assert after[essay_batch]["anchor_mismatches"] == len(GRADES) - 1
    assert after[state_batch]["unreadable_state_documents"] == 1
    assert after[state_batch]["metadata_incomplete"] is False  # unknown, not "incomplete"
    assert after[event_batch]["unreadable_completion_events"] == 1
    assert after[event_batch]["completion_events"] == 1  # the readable one
    assert outbox["unreadable_completion_events"] == 1
    for batch_id, seen in before.items():  # every other batch reads as before
        assert after[batch_id] == seen, batch_id
    assert problems(after[state_batch]) == problems(fixed[state_batch])
    assert {b: problems(r) for b, r in after.items() if b in seeded_db.planted} == {
        b: set(p) for b, p in seeded_db.planted.items()}


def test_poll_exports_a_batch_with_unreadable_documents(engine: Engine) -> None:
    def poll(conn: Connection) -> Snapshot:
        found = conn.execute(POLL_SQL, {"lookback": 86400}).mappings().all()
        outbox = conn.execute(OUTBOX_SQL).mappings().one()
        return build_snapshot(found, outbox, now=time.time(), duration=0.0,
                              recent_window=3600, max_batches=5000)

    with engine.connect() as conn, conn.begin():
        before = poll(conn)  # the demo plants one batch with an unreadable essay document
        batch = Seeder(conn, rng=random.Random(3)).insert_batch(
            BatchSpec(status="PERFORMING_COMPARISONS", state="WAITING_CALLBACKS",
                      finished=False))
        conn.execute(text("UPDATE cj_processed_essays SET processing_metadata = CAST(:d AS json)"
                          " WHERE cj_batch_id = :b"),
                     {"d": hostile_documents(100)["nul"], "b": batch})
        snap = poll(conn)
    assert snap.malformed_rows == 0 and snap.malformed == {}
    ours = next(b for b in snap.batches if b.cj_batch_id == batch)
    assert ours.unreadable == {"essay_metadata": 6}
    added = {d: n - before.unreadable_documents[d] for d, n in snap.unreadable_documents.items()}
    assert added == {"essay_metadata": 6, "state_metadata": 0, "completion_event": 0,
                     "upload_metadata": 0, "result_event": 0, "charge_event": 0}


@pytest.mark.parametrize("name", sorted(READABLE_FRAGMENTS))
def test_documents_that_only_look_hostile_are_read(engine: Engine, name: str) -> None:
    """Surrogate pairs (json.dumps writes every emoji so), an escaped backslash before u0000,
    RTL marks, big numbers and 200 levels are read, through the slow path or not."""
    doc = with_fragment({"is_anchor": "TRUE", "anchor_grade": "B"}, READABLE_FRAGMENTS[name])
    with engine.connect() as conn, conn.begin():
        batch = Seeder(conn, rng=random.Random(5)).insert_batch(
            BatchSpec(state="WAITING_CALLBACKS", status="PERFORMING_COMPARISONS",
                      finished=False, students=2))
        conn.execute(text("UPDATE cj_processed_essays SET processing_metadata = CAST(:d AS json)"
                          " WHERE cj_batch_id = :b"), {"d": doc, "b": batch})
        row = rows(conn)[batch]
        value = conn.execute(text("SELECT cj_health_json(CAST(:d AS json)) ->> 'note'"),
                             {"d": doc}).scalar()
    assert row["unreadable_essay_documents"] == 0
    assert row["anchors_in_metadata"] == 2 and row["anchor_mismatches"] == 2
    assert value == json.loads(doc)["note"] or name in ("big_int", "deep_200")


def test_documents_near_the_stack_limit_are_flagged_never_fatal(engine: Engine) -> None:
    """The deepest documents json input accepts: PostgreSQL's own ->/->> fail on them."""
    limits = {kind: json_input_limit(engine, kind) for kind in "[{"}
    with engine.connect() as conn, conn.begin():
        batch = Seeder(conn, rng=random.Random(9)).insert_batch(
            BatchSpec(state="WAITING_CALLBACKS", status="PERFORMING_COMPARISONS",
                      finished=False, students=2))
        essays = conn.execute(text("SELECT els_essay_id FROM cj_processed_essays"
                                   " WHERE cj_batch_id = :b"), {"b": batch}).scalars().all()
        for essay, kind in zip(essays, "[{", strict=True):
            conn.execute(text("UPDATE cj_processed_essays SET processing_metadata ="
                              " CAST(:d AS json) WHERE els_essay_id = :e"),
                         {"d": deep(limits[kind], kind), "e": essay})
        # Without cj_health_json the view's own read fails: this is what every poll hit.
        savepoint = conn.begin_nested()
        with pytest.raises(DBAPIError) as caught:
            conn.execute(text("SELECT processing_metadata ->> 'is_anchor'"
                              " FROM cj_processed_essays WHERE cj_batch_id = :b"), {"b": batch})
        savepoint.rollback()
        assert isinstance(caught.value.orig, psycopg.errors.StatementTooComplex)
        row = rows(conn)[batch]
    assert row["unreadable_essay_documents"] == 2
    print(f"\njson input limits here: arrays {limits['[']}, objects {limits['{']}")


# --- the outbox view ---------------------------------------------------------------------------

def test_backlog_age_ignores_rows_without_a_real_date(engine: Engine) -> None:
    with engine.connect() as conn, conn.begin():
        before = conn.execute(text("SELECT * FROM cj_outbox_health")).mappings().one()
        conn.execute(text(
            "INSERT INTO event_outbox (aggregate_id, aggregate_type, event_type, event_data,"
            " topic, created_at) VALUES ('x', 'cj_batch', 'huleedu.cj_assessment.failed.v1',"
            " '{}', 't', '-infinity'), ('y', 'cj_batch', 'huleedu.cj_assessment.failed.v1',"
            " '{}', 't', 'infinity')"))
        after = conn.execute(text("SELECT * FROM cj_outbox_health")).mappings().one()
        polled = conn.execute(OUTBOX_SQL).mappings().one()
    assert before["unpublished_events"] > 0  # the demo seed's backlog
    assert before["oldest_unpublished_age_seconds"] > 60
    assert after["oldest_unpublished_age_seconds"] == pytest.approx(
        before["oldest_unpublished_age_seconds"], abs=60)  # not 0, not NULL
    assert after["oldest_unpublished_at"] == before["oldest_unpublished_at"]
    assert after["unpublished_events"] == before["unpublished_events"] + 2
    assert (before["undated_unpublished_events"], after["undated_unpublished_events"]) == (0, 2)
    assert polled["undated_unpublished_events"] == 2


# --- install-view and INVALID indexes ----------------------------------------------------------

def index_state(engine: Engine, name: str) -> bool | None:
    with engine.connect() as conn:
        return conn.execute(text("SELECT indisvalid FROM pg_index"
                                 " WHERE indexrelid = to_regclass(:n)"), {"n": name}).scalar()


def build_interrupted(engine: Engine, statement: str, table: str) -> str:
    """Run CREATE INDEX CONCURRENTLY and cancel it while it waits for a writer on `table`,
    the way a statement_timeout or an operator's ^C does: it leaves an INVALID index."""
    blocker = engine.connect()
    blocker_tx = blocker.begin()
    blocker.execute(text(f"LOCK TABLE {table} IN ROW EXCLUSIVE MODE"))
    error: list[BaseException] = []

    def build() -> None:
        try:
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                c.execute(text(f"/* cjh-test-build */ {statement}"))
        except DBAPIError as exc:
            error.append(exc)

    worker = threading.Thread(target=build)
    worker.start()
    try:
        cancel_when_waiting(engine, "cjh-test-build")
    finally:
        worker.join(30)
        blocker_tx.rollback()
        blocker.close()
    assert error and isinstance(getattr(error[0], "orig", None),
                                psycopg.errors.QueryCanceled), error
    return str(error[0])


def cancel_when_waiting(engine: Engine, marker: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            pid = conn.execute(text(
                "SELECT pid FROM pg_stat_activity WHERE query LIKE :q AND wait_event_type = 'Lock'"
                " AND pid <> pg_backend_pid()"), {"q": f"%{marker}%"}).scalar()
            conn.rollback()
            if pid:
                conn.execute(text("SELECT pg_cancel_backend(:p)"), {"p": pid})
                return
            time.sleep(0.05)
    raise AssertionError(f"no backend running {marker} waited on a lock")


STATES_INDEX = next(s for s in sqlfiles.statements(sqlfiles.read("views/indexes.sql"))
                    if "cj_health_states_last_activity_idx" in s)


def test_install_view_rebuilds_an_invalid_index_it_finds(
        engine: Engine, seeded_db: SeededDb, capsys: pytest.CaptureFixture[str]) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("DROP INDEX cj_health_states_last_activity_idx"))
    build_interrupted(engine, STATES_INDEX, "cj_batch_states")
    # Also the old JSON index, left INVALID by a row it could not index (the reported case).
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO event_outbox (aggregate_id, aggregate_type, event_type, event_data,"
            " topic) VALUES ('x', 'cj_batch', 'huleedu.cj_assessment.completed.v1',"
            " '{\"data\": {\"cj_assessment_job_id\": \"7\", \"n\": \"\\u0000\"}}', 't')"))
    with pytest.raises(DBAPIError), engine.connect().execution_options(
            isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(OLD_INDEX))
    assert index_state(engine, "cj_health_states_last_activity_idx") is False
    assert index_state(engine, "cj_health_outbox_completion_job_idx") is False

    capsys.readouterr()
    assert cli.main(["install-view", "--no-indexes", "--dsn", seeded_db.url]) == 0
    out = capsys.readouterr().out
    assert "index cj_health_outbox_completion_job_idx dropped" in out
    assert ("index cj_health_states_last_activity_idx is INVALID (an interrupted CREATE INDEX"
            " CONCURRENTLY): run install-view without --no-indexes to rebuild it") in out

    assert cli.main(["install-view", "--dsn", seeded_db.url]) == 0
    out = capsys.readouterr().out
    assert "index cj_health_states_last_activity_idx rebuilt: it was INVALID" in out
    assert index_state(engine, "cj_health_states_last_activity_idx") is True
    assert index_state(engine, "cj_health_outbox_completion_job_idx") is None
    with engine.connect() as conn:
        assert sqlfiles.invalid_indexes(conn) == []

    assert cli.main(["install-view", "--dsn", seeded_db.url]) == 0  # idempotent
    assert "index cj_health_states_last_activity_idx already present" in capsys.readouterr().out


def test_install_view_never_leaves_the_index_it_failed_to_build(
        engine: Engine, seeded_db: SeededDb, capsys: pytest.CaptureFixture[str]) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("DROP INDEX cj_health_states_last_activity_idx"))
    blocker = engine.connect()
    blocker_tx = blocker.begin()
    blocker.execute(text("LOCK TABLE cj_batch_states IN ROW EXCLUSIVE MODE"))
    codes: list[int] = []
    worker = threading.Thread(target=lambda: codes.append(
        cli.main(["install-view", "--dsn", seeded_db.url])))
    capsys.readouterr()
    worker.start()
    try:
        cancel_when_waiting(engine, "cj_health_states_last_activity_idx")
    finally:
        blocker_tx.rollback()  # the cleanup's DROP INDEX CONCURRENTLY may then proceed
        blocker.close()
        worker.join(60)
    err = capsys.readouterr().err.strip()
    assert codes == [2]
    assert len(err.splitlines()) == 1, err
    assert err.startswith("cj-health-exporter: error: install-view failed: building index"
                          " cj_health_states_last_activity_idx failed (QueryCanceled:"), err
    assert err.endswith("the unfinished index was dropped, nothing is left behind: run"
                        " install-view again"), err
    assert index_state(engine, "cj_health_states_last_activity_idx") is None
    with engine.connect() as conn:
        assert sqlfiles.invalid_indexes(conn) == []
    assert cli.main(["install-view", "--dsn", seeded_db.url]) == 0
    assert index_state(engine, "cj_health_states_last_activity_idx") is True


def test_roles_grant_the_json_functions(everything_installed: InstalledDb) -> None:
    """Functions called by a view run with the caller's rights: the polling and finalizer
    roles need EXECUTE of their own, not only PUBLIC's (a DBA may revoke that)."""
    engine = everything_installed.engine
    with engine.begin() as conn:
        conn.execute(text("REVOKE EXECUTE ON FUNCTION cj_health_json(json),"
                          " cj_health_json_parses(json) FROM PUBLIC"))
        conn.execute(text("UPDATE cj_processed_essays SET processing_metadata ="
                          " CAST(:d AS json)"), {"d": hostile_documents(100)["lone_low"]})
    with engine.connect() as conn:
        granted = conn.execute(text(
            "SELECT count(*) FROM pg_proc AS p CROSS JOIN pg_roles AS r"
            " WHERE p.proname IN ('cj_health_json', 'cj_health_json_parses')"
            " AND r.rolname IN ('cj_health_ro', 'cj_health_remediator')"
            " AND has_function_privilege(r.oid, p.oid, 'EXECUTE')")).scalar()
        assert granted == 4
        for role in ("cj_health_ro", "cj_health_remediator"):
            conn.execute(text(f"SET ROLE {role}"))
            found = conn.execute(POLL_SQL, {"lookback": 10**9}).mappings().all()
            assert sum(r["unreadable_essay_documents"] for r in found) > 0, role
            conn.execute(text("RESET ROLE"))
        conn.rollback()


def test_inspect_reads_a_batch_with_hostile_events(engine: Engine, seeded_db: SeededDb) -> None:
    from exporter.commands import inspect

    with engine.begin() as conn:
        batch = Seeder(conn, rng=random.Random(8)).insert_batch(
            BatchSpec(anchor_grades=GRADES, completion_runs=1))
        bos = conn.execute(text("SELECT bos_batch_id FROM cj_batch_uploads WHERE id = :b"),
                           {"b": batch}).scalar_one()
        at = datetime.now(UTC)
        ev.insert_row(conn, ev.completion_row(batch, bos, "c", {"note": "\x00"}, at), at,
                      published_at=at)
        # Another BOS batch's hostile event: inspect used to scan every completion event.
        ev.insert_row(conn, ev.completion_row(999, "other-bos", "c", {"n": "\ud800"}, at), at,
                      published_at=at)
    (found,) = inspect.find(engine, str(batch))
    kinds = [e["event_type"] for e in found["outbox_events"]]
    assert kinds.count(ev.COMPLETED_EVENT) == 2  # the readable one and the unreadable one
    assert found["completion_events"] == 1 and found["unreadable_completion_events"] == 1
    assert "unreadable JSON        completion_event 1 (see docs/metrics.md)" in inspect.as_text(
        [found])
