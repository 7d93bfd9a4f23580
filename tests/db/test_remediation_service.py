"""The remediation cycle on a real PostgreSQL: healing, dry runs, pauses, the valves in action,
leader election, audit and metrics. Authorization, settings and the valves' logic alone (no
database) are in tests/unit/test_valves.py."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from datetime import timedelta

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from sqlalchemy import text

from exporter import config
from exporter.config import RemediationSettings, Settings
from exporter.demo.scenarios import BatchSpec
from exporter.finalizer import audit
from exporter.finalizer.leader import LeaderLock
from exporter.finalizer.metrics import RemediationMetrics
from exporter.finalizer.service import Remediator
from exporter.vocabulary import APPLIED, DRY_RUN, NEEDS_PERSON
from tests.support.exposition import Exposition, parse
from tests.support.remediation import (
    RemediationDb,
    audit_rows,
    health,
    problems,
    snapshot,
)

BOTH = ("backfill_anchors", "refinalize")


def acting(url: str, **overrides: object) -> Settings:
    r = RemediationSettings(enabled=True, write_dsn=url, actions=BOTH, dry_run=False,
                            min_wedged_seconds=60.0, replica_id="test-replica")
    return Settings(dsn=url, remediation=dataclasses.replace(r, **overrides))  # type: ignore[arg-type]


def remediator(url: str, **overrides: object) -> Remediator:
    settings = acting(url, **overrides)
    return Remediator(settings.finalizer(), config.parse_dsn(url))


def exposed(metrics: RemediationMetrics) -> Exposition:
    """The finalizer's families as a scrape reads them."""
    class One(Collector):
        def collect(self) -> Iterable[Metric]:
            return metrics.collect()

    registry = CollectorRegistry(auto_describe=False)
    registry.register(One())
    return parse(generate_latest(registry))


def test_a_cycle_heals_the_wedged_batches_and_audits_each_action(
        remediation_db: RemediationDb) -> None:
    db = remediation_db
    b20, stuck = db.batch("wedged"), db.batch("stuck_scoring")
    rem = remediator(db.url)
    try:
        report = rem.run_cycle()
        assert report.leader and report.error is None
        assert [(r.cj_batch_id, r.action, r.outcome) for r in report.results] == [
            (b20, "backfill_anchors", APPLIED), (b20, "refinalize", APPLIED),
            (stuck, "refinalize", APPLIED)]  # oldest first, backfill before refinalize
        for batch in (b20, stuck):
            assert problems(health(db.engine, batch)) == set()
        rows = audit_rows(db.engine)
        assert [(r["cj_batch_id"], r["action"], r["outcome"], r["replica"]) for r in rows] == [
            (b20, "backfill_anchors", "applied", "test-replica"),
            (b20, "refinalize", "applied", "test-replica"),
            (stuck, "refinalize", "applied", "test-replica")]
        again = rem.run_cycle()
        assert again.results == () and again.decision is not None
        assert sum(again.decision.blocked.values()) == 0
        assert len(audit_rows(db.engine)) == db.planned_actions()
        metrics = exposed(rem.metrics)
        assert metrics.value("cj_health_remediations_total", action="refinalize",
                             outcome="applied") == len(db.wedged())
        assert metrics.value("cj_health_remediations_total", action="backfill_anchors",
                             outcome="applied") == 1
        assert metrics.value("cj_health_remediation_cycles_total", result="ok") == 2
        assert metrics.value("cj_health_remediation_leader") == 1
        assert metrics.value("cj_health_remediation_dry_run") == 0
        assert metrics.value("cj_health_remediation_blocked", reason="too_many_wedged") == 0
    finally:
        rem.close()


def test_dry_run_cycles_audit_the_plan_change_nothing_and_cool_down(
        remediation_db: RemediationDb) -> None:
    db = remediation_db
    before = snapshot(db.engine)
    rem = remediator(db.url, dry_run=True)
    try:
        first = rem.run_cycle()
        assert {r.outcome for r in first.results} == {DRY_RUN}
        assert len(first.results) == db.planned_actions()
        assert snapshot(db.engine) == before
        rows = audit_rows(db.engine)
        assert len(rows) == db.planned_actions()
        assert all(r["dry_run"] and r["outcome"] == "dry_run" for r in rows)
        assert rows[1]["detail"]["plan"][0].startswith("lock cj_batch_uploads")
        second = rem.run_cycle()  # the plan is not repeated every cycle: cooldown
        assert second.results == () and second.decision is not None
        assert second.decision.blocked["cooldown"] == db.planned_actions()
        assert len(audit_rows(db.engine)) == db.planned_actions()
        assert exposed(rem.metrics).value("cj_health_remediation_dry_run") == 1
    finally:
        rem.close()


def test_the_pause_row_and_setting_stop_every_action(remediation_db: RemediationDb) -> None:
    db = remediation_db
    before = snapshot(db.engine)
    audit.pause(db.engine, "oncall", "deploying the CJ service")
    rem = remediator(db.url)
    try:
        report = rem.run_cycle()
        assert report.results == () and report.decision is not None
        assert report.decision.blocked["paused"] == db.planned_actions()
        assert exposed(rem.metrics).value("cj_health_remediation_paused") == 1
        assert snapshot(db.engine) == before and audit_rows(db.engine) == []
        assert audit.resume(db.engine) and not audit.resume(db.engine)
        assert len(rem.run_cycle().results) == db.planned_actions()
    finally:
        rem.close()
    paused_by_setting = remediator(db.url, paused=True)
    try:
        assert paused_by_setting.run_cycle().results == ()
    finally:
        paused_by_setting.close()


def test_too_many_wedged_batches_is_a_persons_call(remediation_db: RemediationDb) -> None:
    db = remediation_db
    before = snapshot(db.engine)
    assert len(db.wedged()) == 2
    rem = remediator(db.url, max_wedged_for_auto=1)
    try:
        report = rem.run_cycle()
        assert report.results == () and report.decision is not None
        assert report.decision.blocked["too_many_wedged"] == db.planned_actions()
        metrics = exposed(rem.metrics)
        assert metrics.value("cj_health_remediation_blocked",
                             reason="too_many_wedged") == db.planned_actions()
        assert metrics.value("cj_health_remediation_wedged_batches") == len(db.wedged())
        assert snapshot(db.engine) == before
    finally:
        rem.close()


def test_unusable_anchors_are_reported_then_left_after_max_attempts(
        remediation_db: RemediationDb) -> None:
    db = remediation_db
    bad = db.seed(BatchSpec(status="COMPLETE_STABLE", state="WAITING_CALLBACKS",
                            anchor_grades=("B", "B", "B"), idle=timedelta(hours=3)))
    rem = remediator(db.url, actions=("refinalize",), max_attempts=2, cooldown_seconds=0.0)
    try:
        first = rem.run_cycle()
        mine = [r for r in first.results if r.cj_batch_id == bad]
        assert [(r.outcome, r.reason.split(":")[0]) for r in mine] == [
            (NEEDS_PERSON, "anchors expected but unusable")]
        assert problems(health(db.engine, bad)) >= {"wedged"}  # untouched
        assert [r.cj_batch_id for r in rem.run_cycle().results] == [bad]  # attempt 2
        third = rem.run_cycle()
        assert third.results == () and third.decision is not None
        assert third.decision.blocked["max_attempts"] == 1
        rows = [r for r in audit_rows(db.engine) if r["cj_batch_id"] == bad]
        assert [r["outcome"] for r in rows] == ["needs_person", "needs_person"]
        assert rows[0]["detail"]["grades"] == ["B"]
        assert exposed(rem.metrics).value("cj_health_remediations_total", action="refinalize",
                                          outcome="needs_person") == 2
    finally:
        rem.close()


def test_one_leader_at_a_time_and_a_lost_lock_is_noticed(remediation_db: RemediationDb) -> None:
    url = config.parse_dsn(remediation_db.url)
    first = LeaderLock(url, 5, application_name="cjh-test-leader-1")
    second = LeaderLock(url, 5, application_name="cjh-test-leader-2")
    try:
        assert first.ensure() and first.ensure()  # re-checked, still held (not re-entered)
        assert not second.ensure()
        follower = Remediator(acting(remediation_db.url).finalizer(), url, leader=second)
        before = snapshot(remediation_db.engine)
        assert not follower.run_cycle().leader
        assert snapshot(remediation_db.engine) == before
        assert exposed(follower.metrics).value("cj_health_remediation_cycles_total",
                                               result="follower") == 1
        # The leader's session dies (server restart, network cut, a recycled connection).
        with remediation_db.engine.begin() as conn:
            killed = conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                       " WHERE application_name = 'cjh-test-leader-1'")).all()
        assert killed == [(True,)]
        time.sleep(0.2)
        assert second.ensure()  # the lock went with the session: the other replica leads
        assert not first.ensure()  # and the old leader notices instead of acting
        follower.engine.dispose()
    finally:
        first.close()
        second.close()


def test_a_database_without_the_audit_table_is_a_cycle_error(cj_db: str) -> None:
    rem = remediator(cj_db)
    try:
        report = rem.run_cycle()
        assert report.error is not None and "install-view --remediation" in report.error
        assert exposed(rem.metrics).value("cj_health_remediation_cycles_total",
                                          result="error") == 1
    finally:
        rem.close()


def test_a_failed_action_is_audited_and_counted(remediation_db: RemediationDb) -> None:
    db = remediation_db
    stuck = db.batch("stuck_scoring")
    with db.engine.begin() as conn:  # a trigger that makes the finalization fail late
        conn.execute(text(
            "CREATE FUNCTION cjh_boom() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'outbox is read-only today'; END $$;"
            " CREATE TRIGGER cjh_boom BEFORE INSERT ON event_outbox"
            " FOR EACH ROW EXECUTE FUNCTION cjh_boom()"))
    before = snapshot(db.engine)
    rem = remediator(db.url, actions=("refinalize",))
    try:
        results = {r.cj_batch_id: r for r in rem.run_cycle().results}
        assert results[stuck].outcome == "failed"
        assert "outbox is read-only today" in results[stuck].reason
        assert snapshot(db.engine) == before
        rows = audit_rows(db.engine)
        assert {(r["cj_batch_id"], r["outcome"]) for r in rows} >= {(stuck, "failed")}
        assert exposed(rem.metrics).value(  # Batch 20 fails the same way
            "cj_health_remediations_total", action="refinalize",
            outcome="failed") == len(db.wedged())
    finally:
        rem.close()
