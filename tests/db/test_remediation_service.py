"""The remediation cycle: authorization, safety valves, leader election, audit and metrics."""

from __future__ import annotations

import dataclasses
import time
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector
from sqlalchemy import text
from sqlalchemy.engine import make_url

from exporter import config
from exporter.config import RemediationSettings, Settings
from exporter.demo.scenarios import BatchSpec
from exporter.errors import OperatorError
from exporter.finalizer import audit, valves
from exporter.finalizer.leader import LeaderLock
from exporter.finalizer.metrics import RemediationMetrics
from exporter.finalizer.model import History
from exporter.finalizer.service import Remediator
from exporter.finalizer.valves import Candidate
from exporter.vocabulary import APPLIED, DRY_RUN, NEEDS_PERSON
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


# --- authorization and configuration (no database) ------------------------------------------


@pytest.mark.parametrize(("remediation", "reason"), [
    (RemediationSettings(), "remediation.enabled is false"),
    (RemediationSettings(enabled=True, actions=BOTH), "no write DSN"),
    (RemediationSettings(enabled=True, write_dsn="postgresql://w@db/cj"),
     "remediation.actions is empty"),
    (RemediationSettings(enabled=True, write_dsn_file="/nonexistent/dsn", actions=BOTH),
     "cannot read write_dsn file /nonexistent/dsn"),
])
def test_unauthorized_configurations_refuse_and_say_why(remediation: RemediationSettings,
                                                        reason: str) -> None:
    auth = valves.authorize(Settings(remediation=remediation).finalizer())
    assert not auth.allowed and reason in auth.reason
    assert not auth.allows("refinalize")


def test_authorized_configuration(tmp_path: Path) -> None:
    dsn_file = tmp_path / "write.dsn"
    dsn_file.write_text("postgresql://writer:secret@db/cj\n")
    auth = valves.authorize(Settings(remediation=RemediationSettings(
        enabled=True, write_dsn_file=str(dsn_file), actions=("refinalize",))).finalizer())
    assert auth.allowed and auth.reason == "dry run: refinalize"  # dry_run is the default
    assert auth.allows("refinalize") and not auth.allows("backfill_anchors")
    assert auth.write_url is not None and auth.write_url.password == "secret"


@pytest.mark.parametrize(("env", "message"), [
    ({"CJ_HEALTH_REMEDIATION_MAX_ACTIONS_PER_CYCLE": "0"}, "max_actions_per_cycle must be"),
    ({"CJ_HEALTH_REMEDIATION_COOLDOWN_SECONDS": "-1"}, "cooldown_seconds must not be negative"),
    ({"CJ_HEALTH_REMEDIATION_WRITE_DSN": "mysql://x@y/z"}, "must be a postgresql:// URL"),
    ({"CJ_HEALTH_REMEDIATION_WRITE_DSN": "postgresql://x@y/z",
      "CJ_HEALTH_REMEDIATION_WRITE_DSN_FILE": "/f"}, "either remediation.write_dsn"),
    ({"CJ_HEALTH_REMEDIATION_ACTIONS": "refinalize,delete_everything"}, "unknown action"),
])
def test_invalid_remediation_settings_are_config_errors(env: dict[str, str],
                                                        message: str) -> None:
    with pytest.raises(OperatorError, match=message):
        config.load(None, env, {})


# --- the valves (pure) -----------------------------------------------------------------------


def test_valves_hold_back_in_order() -> None:
    r = RemediationSettings(max_actions_per_cycle=1, min_wedged_seconds=600, max_attempts=2,
                            cooldown_seconds=1800, max_wedged_for_auto=3)
    now = 1_000_000.0
    cands = [Candidate(1, "refinalize", 10.0),  # too recent
             Candidate(2, "refinalize", 9999.0),  # tried twice already
             Candidate(3, "refinalize", 9999.0),  # ran 10 minutes ago
             Candidate(4, "backfill_anchors", 9999.0),  # runs
             Candidate(4, "refinalize", 9999.0)]  # over the cycle limit
    history = {(2, "refinalize"): History(2, now - 99999), (3, "refinalize"): History(1, now - 600)}
    d = valves.decide(cands, wedged=3, paused=False, settings=r, history=history, now=now)
    assert d.run == (cands[3],)
    assert dict(d.blocked) == {"paused": 0, "too_many_wedged": 0, "min_wedged_seconds": 1,
                               "max_attempts": 1, "cooldown": 1, "cycle_limit": 1}
    assert valves.decide(cands, wedged=4, paused=False, settings=r, history={},
                         now=now).blocked["too_many_wedged"] == 5
    paused = valves.decide(cands, wedged=9, paused=True, settings=r, history={}, now=now)
    assert paused.run == () and paused.blocked["paused"] == 5


# --- the cycle on a real database ----------------------------------------------------------


def scoring_batches(db: RemediationDb) -> tuple[int, int]:
    """The demo's two other batches stuck in SCORING (exporter/demo/scenarios.py): the ENG5
    national one (refused: no valid result exists) and the one without a user (completion and
    result, no charge: it stays unbilled)."""
    eng5 = db.batch("unpublishable_result")
    no_user = next(b for b, p in sorted(db.planted.items())
                   if p == {"stuck_scoring", "unbilled"})
    return eng5, no_user


def metric_lines(metrics: RemediationMetrics) -> set[str]:
    class One(Collector):
        def collect(self):  # type: ignore[no-untyped-def]
            return metrics.collect()

    registry = CollectorRegistry(auto_describe=False)
    registry.register(One())
    return set(generate_latest(registry).decode().splitlines())


def test_a_cycle_heals_the_wedged_batches_and_audits_each_action(
        remediation_db: RemediationDb) -> None:
    db = remediation_db
    b20, stuck = db.batch("wedged"), db.batch("stuck_scoring")
    eng5, no_user = scoring_batches(db)
    rem = remediator(db.url)
    try:
        report = rem.run_cycle()
        assert report.leader and report.error is None
        assert [(r.cj_batch_id, r.action, r.outcome) for r in report.results] == [
            (b20, "backfill_anchors", APPLIED), (b20, "refinalize", APPLIED),
            (stuck, "refinalize", APPLIED), (eng5, "refinalize", NEEDS_PERSON),
            (no_user, "refinalize", APPLIED)]  # oldest first, backfill before refinalize
        for batch in (b20, stuck):
            assert problems(health(db.engine, batch)) == set()
        assert problems(health(db.engine, no_user)) == {"unbilled"}  # until a user is known
        assert problems(health(db.engine, eng5)) == db.planted[eng5]  # a person decides
        rows = audit_rows(db.engine)
        assert [(r["cj_batch_id"], r["action"], r["outcome"], r["replica"]) for r in rows] == [
            (b20, "backfill_anchors", "applied", "test-replica"),
            (b20, "refinalize", "applied", "test-replica"),
            (stuck, "refinalize", "applied", "test-replica"),
            (eng5, "refinalize", "needs_person", "test-replica"),
            (no_user, "refinalize", "applied", "test-replica")]
        again = rem.run_cycle()
        assert again.results == () and again.decision is not None
        assert dict(again.decision.blocked)["cooldown"] == 1  # the ENG5 batch, still stuck
        assert sum(again.decision.blocked.values()) == 1
        assert len(audit_rows(db.engine)) == 5
        lines = metric_lines(rem.metrics)
        assert 'cj_health_remediations_total{action="refinalize",outcome="applied"} 3.0' in lines
        assert ('cj_health_remediations_total{action="backfill_anchors",outcome="applied"} 1.0'
                in lines)
        assert 'cj_health_remediation_cycles_total{result="ok"} 2.0' in lines
        assert "cj_health_remediation_leader 1.0" in lines
        assert "cj_health_remediation_dry_run 0.0" in lines
        assert 'cj_health_remediation_blocked{reason="too_many_wedged"} 0.0' in lines
    finally:
        rem.close()


def test_dry_run_cycles_audit_the_plan_change_nothing_and_cool_down(
        remediation_db: RemediationDb) -> None:
    db = remediation_db
    before = snapshot(db.engine)
    rem = remediator(db.url, dry_run=True)
    try:
        first = rem.run_cycle()
        eng5, _ = scoring_batches(db)
        assert {r.outcome for r in first.results if r.cj_batch_id != eng5} == {DRY_RUN}
        assert [r.outcome for r in first.results if r.cj_batch_id == eng5] == [NEEDS_PERSON]
        assert len(first.results) == 5
        assert snapshot(db.engine) == before
        rows = audit_rows(db.engine)
        assert len(rows) == 5 and all(r["dry_run"] for r in rows)
        assert [r["outcome"] for r in rows if r["cj_batch_id"] != eng5] == ["dry_run"] * 4
        assert rows[1]["detail"]["plan"][0].startswith("lock cj_batch_uploads")
        second = rem.run_cycle()  # the plan is not repeated every cycle: cooldown
        assert second.results == () and second.decision is not None
        assert second.decision.blocked["cooldown"] == 5
        assert len(audit_rows(db.engine)) == 5
        assert "cj_health_remediation_dry_run 1.0" in metric_lines(rem.metrics)
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
        assert report.decision.blocked["paused"] == 5
        assert "cj_health_remediation_paused 1.0" in metric_lines(rem.metrics)
        assert snapshot(db.engine) == before and audit_rows(db.engine) == []
        assert audit.resume(db.engine) and not audit.resume(db.engine)
        assert len(rem.run_cycle().results) == 5
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
    # the demo has four batches wedged or stuck in SCORING
    rem = remediator(db.url, max_wedged_for_auto=1)
    try:
        report = rem.run_cycle()
        assert report.results == () and report.decision is not None
        assert report.decision.blocked["too_many_wedged"] == 5
        lines = metric_lines(rem.metrics)
        assert 'cj_health_remediation_blocked{reason="too_many_wedged"} 5.0' in lines
        assert "cj_health_remediation_wedged_batches 4.0" in lines
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
        eng5, _ = scoring_batches(db)  # the demo's other refusal, retried alike
        assert [r.cj_batch_id for r in rem.run_cycle().results] == [bad, eng5]  # attempt 2
        third = rem.run_cycle()
        assert third.results == () and third.decision is not None
        assert third.decision.blocked["max_attempts"] == 2
        rows = [r for r in audit_rows(db.engine) if r["cj_batch_id"] == bad]
        assert [r["outcome"] for r in rows] == ["needs_person", "needs_person"]
        assert rows[0]["detail"]["grades"] == ["B"]
        assert ('cj_health_remediations_total{action="refinalize",outcome="needs_person"} 4.0'
                in metric_lines(rem.metrics))
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
        assert 'cj_health_remediation_cycles_total{result="follower"} 1.0' in metric_lines(
            follower.metrics)
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
        assert 'cj_health_remediation_cycles_total{result="error"} 1.0' in metric_lines(
            rem.metrics)
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
        # Batch 20 and the batch without a user fail the same way (the ENG5 one is refused
        # before anything is written)
        assert ('cj_health_remediations_total{action="refinalize",outcome="failed"} 3.0'
                in metric_lines(rem.metrics))
    finally:
        rem.close()


def test_an_unreachable_database_means_no_leader_and_no_password_in_logs(
        caplog: pytest.LogCaptureFixture) -> None:
    url = make_url("postgresql+psycopg://writer:s3cret@127.0.0.1:1/cj")
    lock = LeaderLock(url, 1)
    assert not lock.ensure()  # nothing listens on port 1: not leader, no exception
    assert "leader lock unavailable" in caplog.text and "s3cret" not in caplog.text
