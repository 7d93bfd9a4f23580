"""Exactly-once under concurrency and crashes, without any advisory lock (real PostgreSQL).

Exactly-once must come from the per-batch transaction alone: row locks with SKIP LOCKED and a
guard evaluated after the locks in READ COMMITTED. These tests never take the leader lock.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

from sqlalchemy import create_engine

from exporter.demo.scenarios import STUDENTS
from exporter.finalizer.model import Result
from exporter.finalizer.refinalize import Hooks, refinalize
from exporter.vocabulary import APPLIED, SKIPPED
from tests.support.remediation import (
    RemediationDb,
    audit_rows,
    events_of,
    health,
    snapshot,
)

FINALIZERS = 8
CORRECTED = {"completed": 1, "result": 2, "resource": 1}  # Batch 20 healed: its pre-fix events


def test_eight_concurrent_finalizers_write_each_event_once(remediation_db: RemediationDb) -> None:
    b20 = remediation_db.batch("wedged")
    barrier = threading.Barrier(FINALIZERS)
    results: list[Result] = []
    lock = threading.Lock()

    def finalizer(n: int) -> None:
        engine = create_engine(remediation_db.url, pool_size=1)  # its own connection
        try:
            # The one that applies holds its locks a little longer, so that the others
            # certainly run into them (SKIP LOCKED) or come after its commit (the guard).
            hooks = Hooks(before_commit=lambda: time.sleep(0.3))
            barrier.wait()
            result = refinalize(engine, b20, replica=f"r{n}", dry_run=False, hooks=hooks)
            with lock:
                results.append(result)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=finalizer, args=(n,)) for n in range(FINALIZERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == FINALIZERS
    outcomes = sorted(r.outcome for r in results)
    assert outcomes == [APPLIED] + [SKIPPED] * (FINALIZERS - 1), [r.line() for r in results]
    # Batch 20 carries the pre-fix code's three events: exactly one corrected result is added,
    # no second completion, no second charge.
    found = events_of(remediation_db.engine, b20)
    assert {k: len(v) for k, v in found.items()} == CORRECTED
    assert health(remediation_db.engine, b20)["grade_projections"] == STUDENTS
    assert [r["outcome"] for r in audit_rows(remediation_db.engine)] == ["applied"]
    # Then one more wave after the commit: all skip on the guard.
    late = [refinalize(remediation_db.engine, b20, replica="late", dry_run=False)
            for _ in range(3)]
    assert {r.outcome for r in late} == {SKIPPED}
    assert {k: len(v) for k, v in events_of(remediation_db.engine, b20).items()} == CORRECTED


def test_a_transaction_begun_before_the_winner_committed_still_skips(
        remediation_db: RemediationDb) -> None:
    """B begins (and runs its first statement) while A is finalizing; A commits; only then does
    B lock the rows. READ COMMITTED gives B's guard a fresh snapshot after its lock, so B sees
    A's COMPLETED state and skips. (With the guard before the lock, or a REPEATABLE READ
    snapshot from B's start, B would finalize again or fail.)"""
    stuck = remediation_db.batch("stuck_scoring")
    b_began, a_committed = threading.Event(), threading.Event()
    outcome: dict[str, Result] = {}

    def begin_then_wait_for_a() -> None:
        b_began.set()
        a_committed.wait(30)

    def finalizer_b() -> None:
        engine = create_engine(remediation_db.url, pool_size=1)
        hooks = Hooks(after_begin=begin_then_wait_for_a)
        outcome["b"] = refinalize(engine, stuck, replica="b", dry_run=False, hooks=hooks)
        engine.dispose()

    b = threading.Thread(target=finalizer_b)
    b.start()
    assert b_began.wait(30)
    outcome["a"] = refinalize(remediation_db.engine, stuck, replica="a", dry_run=False)
    a_committed.set()
    b.join(timeout=30)
    assert outcome["a"].outcome == APPLIED
    assert (outcome["b"].outcome, outcome["b"].reason) == (SKIPPED, "state is already COMPLETED")
    assert {k: len(v) for k, v in events_of(remediation_db.engine, stuck).items()} == {
        "completed": 1, "result": 1, "resource": 1}


KILLED_FINALIZER = textwrap.dedent("""
    import sys, time
    from sqlalchemy import create_engine
    from exporter.finalizer.refinalize import Hooks, refinalize

    def park() -> None:
        print("IN-TRANSACTION", flush=True)  # every write is done, COMMIT is next
        time.sleep(120)

    engine = create_engine(sys.argv[1])
    refinalize(engine, int(sys.argv[2]), replica="doomed", dry_run=False,
               hooks=Hooks(before_commit=park))
    print("COMMITTED", flush=True)
""")


def test_sigkill_in_the_middle_of_the_transaction_leaves_nothing(
        remediation_db: RemediationDb) -> None:
    engine = remediation_db.engine
    b20 = remediation_db.batch("wedged")
    before = snapshot(engine)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_FINALIZER, remediation_db.url,
                             str(b20)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "IN-TRANSACTION"
        # The doomed transaction holds the batch: a concurrent finalizer skips it.
        busy = refinalize(engine, b20, replica="other", dry_run=False)
        assert busy.outcome == SKIPPED and "locked" in busy.reason
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert snapshot(engine) == before
    assert audit_rows(engine) == []
    # Postgres rolled the dead session back and released its locks: the batch heals now.
    deadline = time.monotonic() + 10
    result = refinalize(engine, b20, replica="survivor", dry_run=False)
    while result.outcome == SKIPPED and "locked" in result.reason and time.monotonic() < deadline:
        time.sleep(0.1)
        result = refinalize(engine, b20, replica="survivor", dry_run=False)
    assert result.outcome == APPLIED, result.line()
    assert {k: len(v) for k, v in events_of(engine, b20).items()} == CORRECTED
