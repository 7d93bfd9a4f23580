"""The race with the CJ service (issue 12 item 7; docs/finalizer.md "The race with the CJ
service"), against real PostgreSQL.

The service writers of tests/support/race.py do what upstream's finalize_scoring does,
statement by statement, on their own connections. Each scenario puts the service's writes at
one moment of the finalizer's two transactions (the fence, then the finalization) with the
Hooks; S1-S4 are the names issue 12's attack gave them (docs/finalizer.md, "The race with the
CJ service"). The hammer at the end puts them at random moments and counts the events every
batch ends with.

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
import signal
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from io import BytesIO
from typing import Any

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
WEDGED = ("FETCHING_CONTENT", "WAITING_CALLBACKS")  # race.wedged_spec's status and state


def wedge(db: RemediationDb, anchored: bool = False) -> tuple[int, race.Work]:
    bid = race.seed_batches(db.engine, [anchored], random.Random())[0]
    return bid, race.work_for(db.engine, bid)


class Background:
    """A writer on a thread of its own, on its own connections; its outcome once joined."""

    def __init__(self, db: RemediationDb, target: Callable[[Engine], Any]) -> None:
        self.engine = create_engine(db.url, pool_size=3)
        self.out: dict[str, Any] = {}
        self.thread = threading.Thread(
            target=lambda: self.out.update(outcome=target(self.engine)), daemon=True)

    def start(self) -> Background:
        self.thread.start()
        return self

    def join(self) -> Any:
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the writer hung"
        self.engine.dispose()
        return self.out["outcome"]


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


def on_call(n: int, then: Callable[[], None]) -> Callable[[], None]:
    """`then` on the n-th call only (the finalizer fits twice: its snapshot plan, then its
    transaction's)."""
    calls = [0]

    def hook() -> None:
        calls[0] += 1
        if calls[0] == n:
            then()

    return hook


def status_state(engine: Engine, bid: int) -> tuple[str, str]:
    tally = race.tally(engine, bid)
    return tally.status, tally.state


# --- the fence: upstream's guard sees the final status before the finalization begins ----------

def test_a_service_finalization_starting_meanwhile_stops_at_its_guard(
        remediation_db: RemediationDb) -> None:
    """The fence commits the final COMPLETE_* status first: a finalize_scoring that starts
    while the finalizer works reads it and stops (upstream's own idempotency guard). Before
    this change it read the old status, waited on the row lock and wrote all three again."""
    engine = remediation_db.engine
    bid, work = wedge(remediation_db)
    writers: list[Background] = []

    def service_starts_now() -> None:
        writers.append(Background(remediation_db,
                                  lambda e: race.service_upstream(e, work)).start())
        writers[0].thread.join(timeout=30)

    result = refinalize(engine, bid, replica="t", dry_run=False,
                        hooks=Hooks(before_commit=service_starts_now))
    assert result.outcome == APPLIED, result.line()
    assert "committed first" in result.detail["fence"]
    assert writers[0].join() == "skipped: status COMPLETE_STABLE"
    tally = race.tally(engine, bid)
    assert (tally.ours, tally.theirs, tally.state) == (ONE_EACH, NONE, "COMPLETED")


def test_s3_a_service_past_its_guard_before_the_fence_finalizes_alone(
        remediation_db: RemediationDb) -> None:
    """S3: the service read the status just before the fence committed; its UPDATE to SCORING
    waits on the fence's row lock, then commits right after it. The finalization's own
    transaction then finds the state row locked or freshly stamped and skips; the service
    finishes alone (issue 12's attack, before: 2 of each, 3/3). The fence stays: the service
    writes the same status."""
    engine = remediation_db.engine
    bid, work = wedge(remediation_db)
    guarded = threading.Event()
    writers: list[Background] = []

    def service_reads_the_old_status() -> None:
        gates = race.Gates(after_guard=guarded.set)
        writers.append(Background(remediation_db,
                                  lambda e: race.service_upstream(e, work, gates)).start())
        assert guarded.wait(30)
        wait_until(lambda: blocked_sessions(engine) >= 1, "the service's UPDATE to wait")

    result = refinalize(engine, bid, replica="t", dry_run=False,
                        hooks=Hooks(fence_checked=service_reads_the_old_status))
    assert result.outcome == SKIPPED, result.line()
    assert "locked" in result.reason or "state row was written" in result.reason
    assert writers[0].join() == "finalized"
    tally = race.tally(engine, bid)
    assert (tally.ours, tally.theirs, tally.state) == (NONE, ONE_EACH, "COMPLETED")


def test_a_service_update_waiting_on_the_finalization_makes_it_yield(
        remediation_db: RemediationDb) -> None:
    """The service passed its guard before the fence and issues its UPDATE only while the
    finalization's transaction holds the rows: the final check sees it waiting, rolls back,
    and the service finishes alone."""
    engine = remediation_db.engine
    bid, work = wedge(remediation_db)
    guarded, go = threading.Event(), threading.Event()
    writers: list[Background] = []

    def stall() -> None:
        guarded.set()
        assert go.wait(30)

    def service_reads_the_old_status() -> None:
        gates = race.Gates(after_guard=stall)
        writers.append(Background(remediation_db,
                                  lambda e: race.service_upstream(e, work, gates)).start())
        assert guarded.wait(30)

    def service_writes_now() -> None:
        go.set()
        wait_until(lambda: blocked_sessions(engine) >= 1, "the service's UPDATE to wait")

    result = refinalize(engine, bid, replica="t", dry_run=False, hooks=Hooks(
        fence_checked=service_reads_the_old_status, before_commit=service_writes_now))
    assert result.outcome == SKIPPED and "wait on this batch's rows" in result.reason, (
        result.line())
    assert result.detail["waiting"][0]["pid"] > 0
    assert writers[0].join() == "finalized"
    tally = race.tally(engine, bid)
    assert (tally.ours, tally.theirs, tally.state) == (NONE, ONE_EACH, "COMPLETED")


def test_s4_a_finalization_the_service_committed_before_the_lock_is_skipped(
        remediation_db: RemediationDb) -> None:
    engine = remediation_db.engine
    bid, work = wedge(remediation_db, anchored=True)
    service = create_engine(remediation_db.url, pool_size=3)
    assert race.service_upstream(service, work) == "finalized"
    service.dispose()
    result = refinalize(engine, bid, replica="t", dry_run=False)
    assert (result.outcome, result.reason) == (SKIPPED, "state is already COMPLETED")
    assert race.tally(engine, bid).theirs == ONE_EACH


def test_a_finalization_the_service_has_just_begun_is_left_to_it(
        remediation_db: RemediationDb) -> None:
    """Upstream commits state SCORING first, then rescores before its next write. A batch whose
    state row was written less than QUIET_SECONDS ago (by the database's clock) is neither
    fenced nor finalized, whatever the valves read from the view a moment before."""
    engine = remediation_db.engine
    bid, work = wedge(remediation_db)
    rescoring, resume = threading.Event(), threading.Event()

    def think() -> None:  # the first pause comes right after the SCORING commit
        if not rescoring.is_set():
            rescoring.set()
            resume.wait(30)

    service = Background(remediation_db,
                         lambda e: race.service_upstream(e, work, think=think)).start()
    assert rescoring.wait(30)
    result = refinalize(engine, bid, replica="t", dry_run=False)
    dry = refinalize(engine, bid, replica="t", dry_run=True)
    assert status_state(engine, bid) == ("FETCHING_CONTENT", "SCORING")  # not fenced
    resume.set()
    assert service.join() == "finalized"
    assert result.outcome == SKIPPED and "state row was written" in result.reason, result.line()
    assert f"quiet {QUIET_SECONDS:g} s" in result.reason
    assert dry.outcome == SKIPPED and "state row was written" in dry.reason
    assert race.tally(engine, bid).theirs == ONE_EACH


# --- writers that take no lock and read no status: the final checks ---------------------------

def test_s1_events_published_during_the_transaction_roll_it_back_and_lift_the_fence(
        remediation_db: RemediationDb) -> None:
    """S1: three events of the run committed and relayed after the guard and before the
    INSERTs (issue 12's attack: 2 of each, 3/3), by a writer that reads no status and locks
    nothing. The final re-count sees them; the fence is lifted (the status given back)."""
    engine = remediation_db.engine
    bid, work = wedge(remediation_db)

    def blind_writer() -> None:
        race.insert_events(engine, work)
        race.publish_all(engine)

    with race.after_fit(on_call(2, blind_writer)):
        result = refinalize(engine, bid, replica="t", dry_run=False)
    assert result.outcome == SKIPPED, result.line()
    assert "committed events of this run" in result.reason
    # its own three rows and the writer's, where the guard's count plus its own expected 1
    assert result.detail["events_expected"] == ONE_EACH
    assert result.detail["events_found"] == {k: 2 for k in ONE_EACH}
    tally = race.tally(engine, bid)
    assert (tally.ours, tally.theirs) == (NONE, ONE_EACH)
    assert status_state(engine, bid) == WEDGED


def test_s2_unpublished_events_make_the_insert_fail_and_lift_the_fence(
        remediation_db: RemediationDb) -> None:
    """S2: the same, still unpublished: upstream's idx_outbox_unique_unpublished refuses the
    finalizer's INSERT, and everything rolls back (as before this change), the fence too."""
    engine = remediation_db.engine
    bid, work = wedge(remediation_db)
    with race.after_fit(on_call(2, lambda: race.insert_events(engine, work))):
        result = refinalize(engine, bid, replica="t", dry_run=False)
    assert result.outcome == FAILED and "idx_outbox_unique_unpublished" in result.reason
    tally = race.tally(engine, bid)
    assert (tally.ours, tally.theirs) == (NONE, ONE_EACH)
    assert status_state(engine, bid) == WEDGED


def test_an_insert_waiting_on_the_finalizers_row_is_let_through(
        remediation_db: RemediationDb) -> None:
    """A writer's INSERT comes after the finalizer's own, still uncommitted: the unique index
    makes it wait on the finalizer's transaction, and a COMMIT would make it fail (upstream's
    finalize_scoring would die there, leaving SCORING). The finalizer sees it waiting and
    rolls back; the INSERT goes through."""
    engine = remediation_db.engine
    bid, work = wedge(remediation_db)
    writers: list[Background] = []

    def writer_behind_our_rows() -> None:
        writers.append(Background(remediation_db,
                                  lambda e: race.insert_events(e, work)).start())
        wait_until(lambda: blocked_sessions(engine) >= 1, "the writer's INSERT to wait")

    result = refinalize(engine, bid, replica="t", dry_run=False,
                        hooks=Hooks(before_commit=writer_behind_our_rows))
    writers[0].join()
    assert result.outcome == SKIPPED and "wait on this batch's rows" in result.reason, (
        result.line())
    tally = race.tally(engine, bid)
    assert (tally.ours, tally.theirs) == (NONE, ONE_EACH)
    assert status_state(engine, bid) == WEDGED


def test_the_fence_is_kept_when_someone_else_wrote_the_upload_since(
        remediation_db: RemediationDb) -> None:
    """The finalization skips (the upload row was just written: the status_first writer's
    UPDATE, stamped as upstream's ORM stamps it); the status is theirs now, never given back."""
    engine = remediation_db.engine
    bid, _ = wedge(remediation_db)

    def writer_commits_the_status() -> None:
        with engine.begin() as conn:
            conn.execute(text("UPDATE cj_batch_uploads SET status = 'COMPLETE_STABLE',"
                              " updated_at = now() WHERE id = :id"), {"id": bid})

    result = refinalize(engine, bid, replica="t", dry_run=False,
                        hooks=Hooks(after_begin=writer_commits_the_status))
    assert result.outcome == SKIPPED and "upload row was written" in result.reason, (
        result.line())
    assert status_state(engine, bid) == ("COMPLETE_STABLE", "WAITING_CALLBACKS")


KILLED_AFTER_THE_FENCE = textwrap.dedent("""
    import sys, time
    from sqlalchemy import create_engine
    from exporter.finalizer.refinalize import Hooks, refinalize

    def park() -> None:
        print("FENCED", flush=True)  # the fence is committed, the finalization has begun
        time.sleep(120)

    engine = create_engine(sys.argv[1])
    refinalize(engine, int(sys.argv[2]), replica="doomed", dry_run=False,
               hooks=Hooks(after_begin=park))
""")


def test_killed_between_the_fence_and_the_finalization_heals_on_the_next_attempt(
        remediation_db: RemediationDb) -> None:
    """The one thing the fence leaves behind: a status COMPLETE_* without events (a wedge the
    view flags and upstream never touches again), which the next attempt finalizes."""
    engine = remediation_db.engine
    bid, _ = wedge(remediation_db)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_AFTER_THE_FENCE, remediation_db.url,
                             str(bid)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "FENCED"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert status_state(engine, bid) == ("COMPLETE_STABLE", "WAITING_CALLBACKS")
    assert race.tally(engine, bid).total == NONE
    deadline = time.monotonic() + 10
    result = refinalize(engine, bid, replica="survivor", dry_run=False)
    while result.outcome == SKIPPED and "locked" in result.reason and time.monotonic() < deadline:
        time.sleep(0.1)  # Postgres has not noticed the dead session yet
        result = refinalize(engine, bid, replica="survivor", dry_run=False)
    assert result.outcome == APPLIED and "fence" not in result.detail, result.line()
    tally = race.tally(engine, bid)
    assert (tally.ours, tally.state) == (ONE_EACH, "COMPLETED")


# --- the residual window: a service stalled across the whole finalization -----------------------

def _service_stalled_across(db: RemediationDb, bid: int, work: race.Work,
                            relay_first: bool) -> tuple[Result, str]:
    """The service reads the status before the fence commits, then stalls until after the
    finalization's last check, before its COMMIT; its UPDATE waits on the lock, unseen, and
    goes on after the COMMIT."""
    engine = db.engine
    guarded, go, committed = threading.Event(), threading.Event(), threading.Event()

    def stall() -> None:
        guarded.set()
        assert go.wait(30)

    def before_inserts() -> None:
        assert committed.wait(30)
        if relay_first:  # the relay published the finalizer's rows before the service's turn
            race.publish_all(engine)

    gates = race.Gates(after_guard=stall, before_inserts=before_inserts)
    writers: list[Background] = []

    def service_reads_the_old_status() -> None:
        writers.append(Background(db, lambda e: race.service_upstream(e, work, gates)).start())
        assert guarded.wait(30)

    def service_writes_now() -> None:
        go.set()
        wait_until(lambda: blocked_sessions(engine) >= 1, "the service's UPDATE to wait")

    result = refinalize(engine, bid, replica="t", dry_run=False, hooks=Hooks(
        fence_checked=service_reads_the_old_status, after_checks=service_writes_now))
    committed.set()
    return result, str(writers[0].join())


def test_residual_without_anchors_and_a_fast_relay_ends_with_two_of_each(
        remediation_db: RemediationDb) -> None:
    """What no finalizer can close (docs/finalizer.md): the service read the status before
    the fence and wrote nothing until the finalization had checked for the last time. Without
    projections, and with the finalizer's rows already relayed, nothing stops its second set."""
    bid, work = wedge(remediation_db)
    result, service = _service_stalled_across(remediation_db, bid, work, relay_first=True)
    assert result.outcome == APPLIED and service == "finalized"
    tally = race.tally(remediation_db.engine, bid)
    assert (tally.ours, tally.theirs) == (ONE_EACH, ONE_EACH)


def test_residual_without_anchors_and_our_rows_unpublished_fails_the_service(
        remediation_db: RemediationDb) -> None:
    """The same, but the finalizer's rows still wait for the relay when the service reaches
    its first INSERT: idx_outbox_unique_unpublished refuses it, the service's session rolls
    back (its status update with it) and leaves its committed SCORING behind; the next
    attempt closes the batch without a second event."""
    engine = remediation_db.engine
    bid, work = wedge(remediation_db)
    result, service = _service_stalled_across(remediation_db, bid, work, relay_first=False)
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


def test_residual_with_anchors_fails_the_service_on_the_projections(
        remediation_db: RemediationDb) -> None:
    """With anchors, upstream's plain INSERT of the projections dies on grade_projections_pkey
    (the finalizer's are there) before any event, whatever the relay did. The next attempt
    closes the batch; or, when the service's rescoring rewrote the essay rows into another
    physical order (upstream's SE reference is the last anchor in row order, so the
    confidences move), publishes one corrected result (R3). Never a completion or a charge."""
    engine = remediation_db.engine
    bid, work = wedge(remediation_db, anchored=True)
    assert work.projections
    result, service = _service_stalled_across(remediation_db, bid, work, relay_first=True)
    assert result.outcome == APPLIED
    assert service == "failed at projections: UniqueViolation"
    tally = race.tally(engine, bid)
    assert (tally.ours, tally.theirs, tally.state) == (ONE_EACH, NONE, "SCORING")
    race.publish_all(engine)  # the service never reached its INSERTs: relay ours now
    race.age(engine, bid)
    healed = refinalize(engine, bid, replica="t", dry_run=False)
    corrected = healed.outcome == APPLIED
    if corrected:  # the only event it may write
        assert healed.detail["events"] == ["result"], healed.line()
        assert healed.detail["decisions"]["result"].startswith("corrected")
    else:
        assert healed.outcome == CLOSED, healed.line()
    tally = race.tally(engine, bid)
    assert (tally.total, tally.state) == (
        {"completed": 1, "result": 1 + corrected, "resource": 1}, "COMPLETED")


# --- the hammer ----------------------------------------------------------------------------------

def _fresh_db(server: Server) -> tuple[str, str]:
    name = new_database(server)
    url = url_string(server.url(name))
    engine = create_engine(url)
    with engine.begin() as conn:
        audit.install(conn)
    engine.dispose()
    return name, url


def _baseline(ref: str, url: str, config: race.Config) -> list[race.Record]:
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
    return [race.Record(**r) for r in json.loads(proc.stdout)["records"]]


def test_hammer_of_service_commits_at_random_moments(pg_server: Server) -> None:
    config = race.Config(tries=int(os.environ.get("CJ_HEALTH_RACE_TRIES", "2")),
                         seed=int(os.environ.get("CJ_HEALTH_RACE_SEED", "12007")))
    name, url = _fresh_db(pg_server)
    try:
        started = time.monotonic()
        records = race.hammer(url, config)
        cells = race.summarize(records)
        print("\n" + race.table(f"this checkout: {len(records)} tries, seed {config.seed},"
                                f" {time.monotonic() - started:.1f} s", cells))
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
            base = _baseline(ref, url, config)
        finally:
            drop_database(pg_server, name)
        print("\n" + race.table(f"{ref}: {len(base)} tries, seed {config.seed}",
                                race.summarize(base)))
        for label, rs in (("this checkout", records), (ref, base)):
            print(f"{label}: duplicated tries (model, paused, anchored, service start ms,"
                  " finalizer took ms):", [(r.model, r.paused, r.anchored, r.offset_ms,
                                             r.took_ms) for r in rs
                                            if max(r.ours[k] + r.theirs[k] for k in r.ours) > 1])
        print(json.dumps({"this": [c.__dict__ for c in cells],
                          ref: [c.__dict__ for c in race.summarize(base)]}))


def test_the_hammer_runs_as_a_module_and_its_records_round_trip(pg_server: Server) -> None:
    """The baseline runs tests/support/race.py as a module on another ref's code, and reads
    its JSON back into Records."""
    name, url = _fresh_db(pg_server)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tests.support.race", url, "--tries", "1", "--models",
             "upstream", "--paused", "no"], cwd=ROOT, capture_output=True, text=True,
            timeout=300)
    finally:
        drop_database(pg_server, name)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [race.Record(**r) for r in json.loads(proc.stdout)["records"]]
    assert [(r.model, r.paused) for r in records] == [("upstream", False)]
    assert race.summarize(records)[0].missing == 0
