"""The finalizer from the command line: `remediate`, `install-view --remediation`, `serve` with
remediation enabled (and refused), and `demo --remediation` healing its Batch 20."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest
from sqlalchemy import create_engine, text

from exporter import cli
from exporter.demo.scenarios import STUDENTS
from exporter.vocabulary import FAMILIES
from tests.support.exposition import parse, sample_value
from tests.support.process import DemoProcess, ExporterProcess
from tests.support.remediation import (
    RemediationDb,
    audit_rows,
    events_of,
    health,
    problems,
    snapshot,
)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_remediate_without_yes_is_a_dry_run(remediation_db: RemediationDb,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    db = remediation_db
    b20 = db.batch("wedged")
    before = snapshot(db.engine)
    code, out, _ = run(["remediate", "--dsn", db.url, "--batch", str(b20),
                        "--action", "refinalize"], capsys)
    assert code == 0, out
    assert out.startswith("DRY RUN: nothing is changed; add --yes to apply.")
    assert f"refinalize batch {b20}: dry_run" in out
    assert "  - lock cj_batch_uploads/cj_batch_states rows" in out
    assert (f"  - write {STUDENTS} grade projection(s), replacing any (swedish_8_anchor,"
            " context assignment)") in out
    assert "  events: result" in out  # Batch 20: only a corrected result (docs/finalizer.md)
    assert snapshot(db.engine) == before and audit_rows(db.engine) == []


def test_remediate_yes_refuses_unauthorized_configurations(
        remediation_db: RemediationDb, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    db = remediation_db
    argv = ["remediate", "--dsn", db.url, "--batch", str(db.batch("wedged")),
            "--action", "refinalize", "--yes"]
    before = snapshot(db.engine)
    code, _, err = run(argv, capsys)
    assert code == 2 and "refusing to remediate: remediation.enabled is false" in err
    monkeypatch.setenv("CJ_HEALTH_REMEDIATION_ENABLED", "true")
    monkeypatch.setenv("CJ_HEALTH_REMEDIATION_ACTIONS", "backfill_anchors")
    code, _, err = run(argv, capsys)
    assert code == 2 and "refusing to remediate: no write DSN" in err
    code, _, err = run([*argv, "--write-dsn", db.url], capsys)
    assert code == 2 and "action refinalize is not in remediation.actions" in err
    assert snapshot(db.engine) == before


def test_remediate_yes_applies_with_the_same_guards(
        remediation_db: RemediationDb, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    db = remediation_db
    b20 = db.batch("wedged")
    monkeypatch.setenv("CJ_HEALTH_REMEDIATION_ENABLED", "true")
    monkeypatch.setenv("CJ_HEALTH_REMEDIATION_ACTIONS", "refinalize")
    monkeypatch.setenv("CJ_HEALTH_REMEDIATION_REPLICA_ID", "oncall-laptop")
    argv = ["remediate", "--dsn", db.url, "--write-dsn", db.url, "--batch", str(b20),
            "--action", "refinalize", "--yes"]
    code, out, _ = run(argv, capsys)
    assert code == 0 and f"refinalize batch {b20}: applied" in out
    assert problems(health(db.engine, b20)) == set()
    code, out, _ = run(argv, capsys)  # the guard: already finalized
    assert code == 0 and f"refinalize batch {b20}: skipped (state is already COMPLETED)" in out
    assert [(r["replica"], r["outcome"]) for r in audit_rows(db.engine)] == [
        ("oncall-laptop", "applied"), ("oncall-laptop", "skipped")]


def test_pause_and_resume_from_the_command_line(
        remediation_db: RemediationDb, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    db = remediation_db
    monkeypatch.setenv("CJ_HEALTH_REMEDIATION_ENABLED", "true")
    monkeypatch.setenv("CJ_HEALTH_REMEDIATION_ACTIONS", "refinalize")
    base = ["remediate", "--dsn", db.url, "--write-dsn", db.url]
    code, out, _ = run([*base, "--pause", "CJ deploy in progress"], capsys)
    assert code == 0 and "remediation paused for every replica" in out
    before = snapshot(db.engine)
    code, out, _ = run([*base, "--batch", str(db.batch("wedged")), "--action", "refinalize",
                        "--yes"], capsys)
    assert code == 1 and "remediation is paused" in out and "CJ deploy in progress" in out
    assert snapshot(db.engine) == before
    assert run([*base, "--resume"], capsys)[1].strip() == "remediation resumed"
    assert run([*base, "--resume"], capsys)[1].strip() == "remediation was not paused"


def test_install_view_creates_the_audit_table_only_when_asked(
        cj_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    engine = create_engine(cj_db)

    def tables() -> set[str]:
        with engine.connect() as conn:
            return set(conn.execute(text(
                "SELECT tablename FROM pg_tables WHERE tablename LIKE 'cj_health_remediation%'"
            )).scalars())

    try:
        assert run(["install-view", "--dsn", cj_db, "--no-indexes"], capsys)[0] == 0
        assert tables() == set()
        for _ in range(2):  # idempotent
            code, out, _ = run(["install-view", "--dsn", cj_db, "--no-indexes",
                                "--remediation"], capsys)
            assert code == 0 and "cj_health_remediations and cj_health_remediation_pause" in out
        assert tables() == {"cj_health_remediations", "cj_health_remediation_pause"}
    finally:
        engine.dispose()


def test_the_exporter_core_never_imports_the_finalizer() -> None:
    """numpy/scipy/choix and exporter.finalizer load only when remediation is enabled."""
    probe = ("import sys, exporter.cli, exporter.poll.scheduler, exporter.collector,"
             " exporter.poll.query, exporter.service, exporter.demo.command,"
             " exporter.commands.inspect, exporter.commands.install_view,"
             " exporter.commands.remediate; from exporter import cli;"
             " cli.build_parser().parse_args(['serve']);"
             " bad = sorted(m for m in sys.modules if m.startswith('exporter.finalizer')"
             " or m.split('.')[0] in ('numpy', 'scipy', 'choix')); print(bad)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "[]"


def remediation_env(url: str | None, **extra: str) -> dict[str, str]:
    env = {"CJ_HEALTH_REMEDIATION_ENABLED": "true",
           "CJ_HEALTH_REMEDIATION_ACTIONS": "backfill_anchors,refinalize",
           "CJ_HEALTH_REMEDIATION_DRY_RUN": "false",
           "CJ_HEALTH_REMEDIATION_INTERVAL_SECONDS": "1",
           "CJ_HEALTH_REMEDIATION_MIN_WEDGED_SECONDS": "60"}
    if url:
        env["CJ_HEALTH_REMEDIATION_WRITE_DSN"] = url
    return {**env, **extra}


def test_serve_with_remediation_heals_and_exports_it(remediation_db: RemediationDb) -> None:
    db = remediation_db
    b20, stuck = db.batch("wedged"), db.batch("stuck_scoring")
    with ExporterProcess(db.url, env=remediation_env(db.url)) as exporter:
        body = parse(exporter.wait_for(lambda b: sample_value(
            b, "cj_health_remediations_total", action="refinalize", outcome="applied") == 2, 20))
        assert body.value("cj_health_remediation_enabled") == 1.0
        assert body.value("cj_health_remediation_leader") == 1.0

        def healed_and_exported(b: bytes) -> bool:
            metrics = parse(b)
            return (bool(metrics.samples("cj_batch_last_activity_timestamp_seconds",
                                         cj_batch_id=str(b20)))
                    and not metrics.samples("cj_batch_problem", cj_batch_id=str(b20))
                    and not metrics.samples("cj_batch_problem", cj_batch_id=str(stuck)))

        healed = parse(exporter.wait_for(healed_and_exported, 20))
        assert healed.value("cj_batch_grade_projections", cj_batch_id=str(b20)) == STUDENTS
        assert healed.value("cj_batches_problem", problem="wedged") == 0.0
        assert healed.value("cj_batches_problem", problem="stuck_scoring") == 0.0
    rows = audit_rows(db.engine)
    assert sorted((r["cj_batch_id"], r["action"], r["outcome"]) for r in rows) == sorted([
        (b20, "backfill_anchors", "applied"), (b20, "refinalize", "applied"),
        (stuck, "refinalize", "applied")])


def test_serve_refuses_unauthorized_remediation_but_keeps_exporting(
        remediation_db: RemediationDb) -> None:
    db = remediation_db
    before = snapshot(db.engine)
    with ExporterProcess(db.url, env=remediation_env(None)) as exporter:
        body = parse(exporter.metrics())
        assert body.value("cj_health_remediation_enabled") == 0.0
        assert body.value("cj_health_up") == 1.0
        # the core's idle counter (all 0), never the finalizer's families
        assert body.value("cj_health_remediations_total", action="refinalize",
                          outcome="applied") == 0.0
        assert "cj_health_remediation_leader" not in body.families
        time.sleep(1.5)
        assert "remediation refused: no write DSN" in exporter.output()
    assert snapshot(db.engine) == before


def test_demo_with_remediation_heals_its_batch20_within_two_cycles() -> None:
    with DemoProcess("--remediation") as demo:
        summary = demo.summary
        b20 = int(re.search(r"^\s+(\d+): anchor_mismatch, missing_projections, wedged$",
                            summary, re.MULTILINE).group(1))  # type: ignore[union-attr]
        # By the time two cycles have run, every action is done: exactly one per action.
        body = parse("")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            body = parse(demo.metrics())
            if (body.value("cj_health_remediation_cycles_total", result="ok") or 0) >= 2:
                break
            time.sleep(0.1)
        assert set(body.families) == set(FAMILIES)  # the finalizer's own families joined
        assert body.value("cj_health_remediations_total", action="backfill_anchors",
                          outcome="applied") == 1.0, body
        assert body.value("cj_health_remediations_total", action="refinalize",
                          outcome="applied") == 2.0  # Batch 20 and the batch stuck in SCORING
        # ... and the next poll shows Batch 20 healthy.
        while time.monotonic() < deadline:
            body = parse(demo.metrics())
            if not body.samples("cj_batch_problem", cj_batch_id=str(b20)):
                break
            time.sleep(0.2)
        assert not body.samples("cj_batch_problem", cj_batch_id=str(b20))
        assert body.value("cj_batch_grade_projections", cj_batch_id=str(b20)) == STUDENTS
        assert body.value("cj_batches_problem", problem="wedged") == 0.0
        dsn = re.search(r"--dsn '([^']+)'", summary).group(1)  # type: ignore[union-attr]
        engine = create_engine(dsn)
        try:
            assert sorted((r["cj_batch_id"], r["action"]) for r in audit_rows(engine)
                          if r["cj_batch_id"] == b20) == [(b20, "backfill_anchors"),
                                                          (b20, "refinalize")]
            # Healed by the policy: its pre-fix completion and charge stand, one corrected
            # result is added (no second charge), and it is COMPLETED.
            found = events_of(engine, b20)
            assert {k: len(v) for k, v in found.items()} == {
                "completed": 1, "result": 2, "resource": 1}
            corrected = next(r for r in found["result"] if r["published_at"] is None)
            assert corrected["data"]["data"]["assignment_id"] is not None
            assert health(engine, b20)["cj_state"] == "COMPLETED"
        finally:
            engine.dispose()
    assert demo.returncode == 0, demo.stderr
