"""The race with the CJ service (issue 12 item 7; docs/finalizer.md "The race with the CJ
service"), against real PostgreSQL.

The service writers of tests/support/race.py do what upstream's finalize_scoring does,
statement by statement, on their own connections. Each scenario puts the service's writes at
one moment of the finalizer's transaction with the Hooks (S1-S4 are the attack report's names);
the hammer at the end puts them at random moments and counts the events every batch ends with.

The hammer is bounded: CJ_HEALTH_RACE_TRIES tries per cell (default 2, a few seconds),
CJ_HEALTH_RACE_SEED; CJ_HEALTH_RACE_BASELINE=<git ref> runs the same hammer on that ref's
finalizer in the same run, for the figures of docs/security.md:

    CJ_HEALTH_RACE_TRIES=100 CJ_HEALTH_RACE_BASELINE=main \\
        .venv/bin/pytest -q -s tests/db/test_finalizer_race.py -k hammer
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path

from sqlalchemy import Engine, create_engine, text

from exporter.finalizer import audit
from exporter.finalizer.model import Result
from exporter.finalizer.refinalize import QUIET_SECONDS, Hooks, refinalize
from exporter.vocabulary import APPLIED, CLOSED, FAILED, SKIPPED
from tests.support import race
from tests.support.database import Server, drop_database, new_database, url_string
from tests.support.paths import ROOT
from tests.support.remediation import RemediationDb

ONE_EACH = {"completed": 1, "result": 1, "resource": 1}
NONE = {"completed": 0, "result": 0, "resource": 0}


def wedge(db: RemediationDb, anchored: bool = False) -> tuple[int, race.Work]:
    bid = race.seed_batches(db.engine, [anchored], random.Random())[0]
    return bid, race.work_for(db.engine, bid)


@contextmanager
def service_thread(target: Callable[[], str]) -> Iterator[dict[str, str]]:
    """Run a service writer on its own thread; joined (and its outcome known) on exit."""
    out: dict[str, str] = {}
    thread = threading.Thread(target=lambda: out.update(service=target()), daemon=True)
    thread.start()
    try:
        yield out
    finally:
        thread.join(timeout=30)
        assert not thread.is_alive(), "the service writer hung"


def wait_until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def blocked_sessions(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(
            "SELECT count(*) FROM pg_locks WHERE NOT granted"
            " AND locktype IN ('transactionid', 'tuple')")).scalar_one())


def service_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(
            "SELECT count(*) FROM event_outbox WHERE event_data -> 'metadata' ->> 'written_by'"
            " = 'service'")).scalar_one())


def engine_for(db: RemediationDb) -> Engine:
    return create_engine(db.url, pool_size=3)


# --- S1-S4 ---------------------------------------------------------------------------------------

def test_s1_events_the_service_published_during_the_transaction_roll_it_back(
        remediation_db: RemediationDb) -> None:
    """S1: the service's three events are committed and relayed after the finalizer's guard
    and before its INSERTs (the attack report: 2 of each, 3/3). The final re-count sees them."""
    engine = remediation_db.engine
    bid, work = wedge(remediation_db)
    service = engine_for(remediation_db)
    done: dict[str, str] = {}

    def service_in_the_window() -> None:
        thread = threading.Thread(target=lambda: done.update(
            service=race.service_events_only(service, work)), daemon=True)
        thread.start()
        wait_until(lambda: service_rows(engine) == 3, "the service's three events")
        race.publish_all(engine)
        threading.Thread(target=thread.join, daemon=True).start()

    with race.after_fit(service_in_the_window):
        result = refinalize(engine, bid, replica="t", dry_run=False)
    wait_until(lambda: "service" in done, "the service to finish")
    service.dispose()
    assert result.outcome == SKIPPED, result.line()
    assert "committed events of this run" in result.reason
    # its own three rows and the service's, where the guard's count plus its own expected 1
    assert result.detail["events_expected"] == ONE_EACH
    assert result.detail["events_found"] == {k: 2 for k in ONE_EACH}
    tally = race.tally(engine, bid)
    assert (tally.ours, tally.theirs) == (NONE, ONE_EACH)
    assert done["service"] == "finalized" and tally.state == "COMPLETED"


def test_s2_unpublished_events_of_the_service_make_the_insert_fail(
        remediation_db: RemediationDb) -> None:
    """S2: the same, still unpublished: upstream's idx_outbox_unique_unpublished refuses the
    finalizer's INSERT, and everything it wrote rolls back (as before this change)."""
    engine = remediation_db.engine
    bid, work = wedge(remediation_db)
    service = engine_for(remediation_db)
    done: dict[str, str] = {}

    def service_in_the_window() -> None:
        threading.Thread(target=lambda: done.update(
            service=race.service_events_only(service, work)), daemon=True).start()
        wait_until(lambda: service_rows(engine) == 3, "the service's three events")

    with race.after_fit(service_in_the_window):
        result = refinalize(engine, bid, replica="t", dry_run=False)
    wait_until(lambda: "service" in done, "the service to finish")
    service.dispose()
    assert result.outcome == FAILED and "idx_outbox_unique_unpublished" in result.reason
    tally = race.tally(engine, bid)
    assert (tally.ours, tally.theirs) == (NONE, ONE_EACH)
    assert done["service"] == "finalized"


def test_a_service_insert_waiting_on_the_finalizers_row_is_let_through(
        remediation_db: RemediationDb) -> None:
    """The service's INSERT comes after the finalizer's own (still uncommitted) row: the unique
    index makes it wait on the finalizer's transaction. Committing would make it fail (its
    finalize_scoring would die there, leaving SCORING); the finalizer sees it waiting, rolls
    back, and the service's INSERT goes through."""
    engine = remediation_db.engine
    bid, work = wedge(remediation_db)
    service = engine_for(remediation_db)
    out: dict[str, str] = {}
    holder: dict[str, threading.Thread] = {}

    def service_behind_our_rows() -> None:
        thread = threading.Thread(target=lambda: out.update(
            service=race.service_events_only(service, work)), daemon=True)
        holder["t"] = thread
        thread.start()
        wait_until(lambda: blocked_sessions(engine) >= 1, "the service's INSERT to wait")

    result = refinalize(engine, bid, replica="t", dry_run=False,
                        hooks=Hooks(before_commit=service_behind_our_rows))
    holder["t"].join(timeout=30)
    service.dispose()
    assert result.outcome == SKIPPED and "wait on this batch's rows" in result.reason, (
        result.line())
    assert result.detail["waiting"] and result.detail["waiting"][0]["pid"] > 0
    assert out["service"] == "finalized"
    tally = race.tally(engine, bid)
    assert (tally.ours, tally.theirs) == (NONE, ONE_EACH)


def test_s3_the_services_update_waiting_on_the_row_lock_makes_the_finalizer_yield(
        remediation_db: RemediationDb) -> None:
    """S3: upstream's guard reads the status while the finalizer holds the rows (it sees no
    COMPLETE_*: nothing is committed yet), then its UPDATE to SCORING waits on the row lock.
    Before: the finalizer committed, the service went on and wrote all three again (2 of
    each, 3/3). Now the finalizer sees the waiting UPDATE, rolls back, the service finishes."""
    engine = remediation_db.engine
    bid, work = wedge(remediation_db)
    service = engine_for(remediation_db)
    holder: dict[str, threading.Thread] = {}
    out: dict[str, str] = {}

    def service_reads_the_status_now() -> None:
        thread = threading.Thread(target=lambda: out.update(
            service=race.service_upstream(service, work)), daemon=True)
        holder["t"] = thread
        thread.start()
        wait_until(lambda: blocked_sessions(engine) >= 1, "the service's UPDATE to wait")

    result = refinalize(engine, bid, replica="t", dry_run=False,
                        hooks=Hooks(before_commit=service_reads_the_status_now))
    holder["t"].join(timeout=30)
    service.dispose()
    assert result.outcome == SKIPPED and "wait on this batch's rows" in result.reason, (
        result.line())
    assert out["service"] == "finalized"
    tally = race.tally(engine, bid)
    assert (tally.ours, tally.theirs, tally.state) == (NONE, ONE_EACH, "COMPLETED")


def test_s4_a_finalization_the_service_committed_before_the_lock_is_skipped(
        remediation_db: RemediationDb) -> None:
    engine = remediation_db.engine
    bid, work = wedge(remediation_db, anchored=True)
    service = engine_for(remediation_db)
    assert race.service_upstream(service, work) == "finalized"
    service.dispose()
    result = refinalize(engine, bid, replica="t", dry_run=False)
    assert (result.outcome, result.reason) == (SKIPPED, "state is already COMPLETED")
    assert race.tally(engine, bid).theirs == ONE_EACH


def test_a_finalization_the_service_has_just_begun_is_left_to_it(
        remediation_db: RemediationDb) -> None:
    """Upstream commits state SCORING first, then rescores before its next write. A batch whose
    state row was written less than QUIET_SECONDS ago (on the locked row, by the database's
    clock) is skipped, whatever the valves read from the view a moment before."""
    engine = remediation_db.engine
    bid, work = wedge(remediation_db)
    service = engine_for(remediation_db)
    rescoring, resume = threading.Event(), threading.Event()

    def think() -> None:  # the first pause comes right after the SCORING commit
        if not rescoring.is_set():
            rescoring.set()
            resume.wait(30)

    with service_thread(lambda: race.service_upstream(service, work, think=think)) as out:
        assert rescoring.wait(30)
        result = refinalize(engine, bid, replica="t", dry_run=False)
        dry = refinalize(engine, bid, replica="t", dry_run=True)
        resume.set()
    service.dispose()
    assert result.outcome == SKIPPED and "state row was written" in result.reason, result.line()
    assert f"quiet {QUIET_SECONDS:g} s" in result.reason
    assert dry.outcome == SKIPPED and "state row was written" in dry.reason
    assert out["service"] == "finalized"
    assert race.tally(engine, bid).theirs == ONE_EACH


# --- the residual window: after the final checks, before COMMIT ----------------------------------

def _service_reads_after_the_checks(db: RemediationDb, bid: int, work: race.Work,
                                    relay_first: bool) -> tuple[Result, str]:
    """The service's guard runs after the finalizer's final checks and before its COMMIT;
    its UPDATE then waits on the lock, unseen, and goes on after the COMMIT."""
    engine = db.engine
    service = engine_for(db)
    guarded, committed = threading.Event(), threading.Event()

    def before_inserts() -> None:
        assert committed.wait(30)
        if relay_first:  # the relay published the finalizer's rows before the service's turn
            race.publish_all(engine)

    gates = race.Gates(after_guard=guarded.set, before_inserts=before_inserts)
    out: dict[str, str] = {}
    thread = threading.Thread(target=lambda: out.update(
        service=race.service_upstream(service, work, gates)), daemon=True)

    def in_the_residual_window() -> None:
        thread.start()
        assert guarded.wait(30)
        wait_until(lambda: blocked_sessions(engine) >= 1, "the service's UPDATE to wait")

    result = refinalize(engine, bid, replica="t", dry_run=False,
                        hooks=Hooks(after_checks=in_the_residual_window))
    committed.set()
    thread.join(timeout=30)
    service.dispose()
    return result, out["service"]


def test_residual_window_without_anchors_and_a_fast_relay_ends_with_two_of_each(
        remediation_db: RemediationDb) -> None:
    """The window no finalizer can close (docs/finalizer.md): the service's guard passed
    before the COMMIT, its first write arrived after the last check. Without projections,
    and with the finalizer's rows already relayed, nothing stops the service's second set."""
    bid, work = wedge(remediation_db)
    result, service = _service_reads_after_the_checks(remediation_db, bid, work,
                                                      relay_first=True)
    assert result.outcome == APPLIED and service == "finalized"
    tally = race.tally(remediation_db.engine, bid)
    assert (tally.ours, tally.theirs) == (ONE_EACH, ONE_EACH)


def test_residual_window_without_anchors_and_our_rows_unpublished_fails_the_service(
        remediation_db: RemediationDb) -> None:
    """The same, but the finalizer's rows are still waiting for the relay when the service
    reaches its first INSERT: idx_outbox_unique_unpublished refuses it; the service's
    session rolls back (its status update with it), leaving its committed SCORING behind;
    the next attempt closes the batch without a second event."""
    engine = remediation_db.engine
    bid, work = wedge(remediation_db)
    result, service = _service_reads_after_the_checks(remediation_db, bid, work,
                                                      relay_first=False)
    assert result.outcome == APPLIED
    assert service == "failed at events: UniqueViolation"
    tally = race.tally(engine, bid)
    assert (tally.ours, tally.theirs, tally.state, tally.status) == (
        ONE_EACH, NONE, "SCORING", "COMPLETE_STABLE")
    race.publish_all(engine)
    race.age(engine, bid)
    healed = refinalize(engine, bid, replica="t", dry_run=False)
    assert healed.outcome == CLOSED, healed.line()
    tally = race.tally(engine, bid)
    assert (tally.ours, tally.theirs, tally.state) == (ONE_EACH, NONE, "COMPLETED")


def test_residual_window_with_anchors_fails_the_service_on_the_projections(
        remediation_db: RemediationDb) -> None:
    """With anchors, upstream's plain INSERT of the projections dies on grade_projections_pkey
    (the finalizer's are there) before any event, whatever the relay did. Its rescoring had
    rewritten the essay rows, which moves upstream's SE reference (the last anchor in row
    order): the next attempt publishes one corrected result (R3), never a completion or a
    charge."""
    engine = remediation_db.engine
    bid, work = wedge(remediation_db, anchored=True)
    assert work.projections
    result, service = _service_reads_after_the_checks(remediation_db, bid, work,
                                                      relay_first=True)
    assert result.outcome == APPLIED
    assert service == "failed at projections: UniqueViolation"
    tally = race.tally(engine, bid)
    assert (tally.ours, tally.theirs, tally.state) == (ONE_EACH, NONE, "SCORING")
    race.publish_all(engine)  # the service never reached its INSERTs: relay ours now
    race.age(engine, bid)
    healed = refinalize(engine, bid, replica="t", dry_run=False)
    assert healed.outcome == APPLIED and healed.detail["events"] == ["result"], healed.line()
    assert healed.detail["decisions"]["result"].startswith("corrected")
    tally = race.tally(engine, bid)
    assert (tally.total, tally.state) == ({"completed": 1, "result": 2, "resource": 1},
                                          "COMPLETED")


# --- the hammer ----------------------------------------------------------------------------------

def _fresh_db(server: Server) -> tuple[str, str]:
    name = new_database(server)
    url = url_string(server.url(name))
    engine = create_engine(url)
    with engine.begin() as conn:
        audit.install(conn)
    engine.dispose()
    return name, url


def _baseline(ref: str, url: str, config: race.Config) -> tuple[list[race.Record], float]:
    """The same hammer on `ref`'s finalizer: its exporter/ and sql/ in a scratch folder
    (first on sys.path), this checkout's tests/ (the hammer itself) after it."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "exporter", "sql"],
                             check=True, capture_output=True).stdout
    with tempfile.TemporaryDirectory() as scratch:
        with tarfile.open(fileobj=BytesIO(archive)) as tar:
            tar.extractall(scratch, filter="data")
        proc = subprocess.run(
            [sys.executable, "-m", "tests.support.race", url, "--tries", str(config.tries),
             "--seed", str(config.seed)], cwd=scratch, capture_output=True, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    return [race.Record(**r) for r in data["records"]], float(data["transaction_ms"])


def test_hammer_of_service_commits_at_random_moments(pg_server: Server) -> None:
    config = race.Config(tries=int(os.environ.get("CJ_HEALTH_RACE_TRIES", "2")),
                         seed=int(os.environ.get("CJ_HEALTH_RACE_SEED", "12007")))
    name, url = _fresh_db(pg_server)
    try:
        started = time.monotonic()
        records, took = race.hammer(url, config)
        cells = race.summarize(records)
        print("\n" + race.table(
            f"this checkout: {len(records)} tries, seed {config.seed}, transaction {took:.0f} ms"
            f" alone, {time.monotonic() - started:.1f} s", cells))
    finally:
        drop_database(pg_server, name)
    assert len(records) == len(race.MODELS) * 2 * config.tries
    for cell in cells:
        assert cell.missing == 0, cell  # every batch ends with each of its three events
        assert cell.ours_max <= 1, cell  # the finalizer never writes a kind twice
        assert cell.healed == cell.tries, cell  # the next attempt: COMPLETED, never a 2nd charge
    ref = os.environ.get("CJ_HEALTH_RACE_BASELINE")
    if ref:
        name, url = _fresh_db(pg_server)
        try:
            base, took = _baseline(ref, url, config)
        finally:
            drop_database(pg_server, name)
        print("\n" + race.table(f"{ref}: {len(base)} tries, seed {config.seed},"
                                f" transaction {took:.0f} ms alone", race.summarize(base)))
        print(json.dumps({"this": [c.__dict__ for c in cells],
                          ref: [c.__dict__ for c in race.summarize(base)]}))


def test_the_hammer_is_importable_without_the_test_runner() -> None:
    """The baseline runs tests/support/race.py as a module on another ref's code."""
    proc = subprocess.run([sys.executable, "-m", "tests.support.race", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--tries" in proc.stdout, proc.stderr
    assert Path(race.__file__).is_relative_to(ROOT)
