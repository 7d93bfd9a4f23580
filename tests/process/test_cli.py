"""The real `cj-health-exporter` process: serve through a database outage, SIGTERM, inspect and
install-view."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from sqlalchemy import create_engine, text

from exporter import sqlfiles
from exporter.demo.embedded import EmbeddedPostgres
from exporter.demo.scenarios import RERUN_BOS_BATCH_ID, RERUNS, RUNAWAY_COMPLETION_RUNS
from tests.support.database import SeededDb, Server, database, url_string
from tests.support.exposition import parse, sample_value
from tests.support.paths import ROOT
from tests.support.process import ExporterProcess, http_get, run_cli


def test_serve_survives_a_database_outage(own_postgres: EmbeddedPostgres) -> None:
    dsn = url_string(own_postgres.url())
    with ExporterProcess(dsn, poll_interval=0.5, extra_args=["--stale-after", "100"]) as exp:
        assert sample_value(exp.wait_for(lambda b: True, 5), "cj_health_up") == 1
        own_postgres.stop_server()
        body = parse(exp.wait_for(lambda b: sample_value(b, "cj_health_up") == 0, 20))
        assert (body.value("cj_health_poll_errors_total", reason="connection") or 0) >= 1
        assert body.samples("cj_batch_problem")  # the last good snapshot is still served
        own_postgres.start_server()
        body = parse(exp.wait_for(lambda b: sample_value(b, "cj_health_up") == 1, 20))
        assert body.samples("cj_batch_problem", problem="wedged")
        assert exp.proc is not None and exp.proc.poll() is None
        started = time.monotonic()
        assert exp.stop(signal.SIGTERM) == 0
        assert time.monotonic() - started < 5
    assert "poll failed (connection" in exp.output()
    assert "Traceback" not in exp.output()


def test_serve_endpoints(seeded_db: SeededDb) -> None:
    with ExporterProcess(seeded_db.url) as exp:
        status, _, body = http_get(f"{exp.url}/")
        assert status == 200 and b"/metrics" in body
        status, _, body = http_get(f"{exp.url}/healthz")
        assert status == 200 and json.loads(body)["up"] is True
        assert parse(http_get(f"{exp.url}/metrics")[2]).samples("cj_health_build_info")


def test_serve_with_fail_fast_refuses_a_database_without_the_views(pg_server: Server) -> None:
    with database(pg_server, schema="none") as no_views:
        result = run_cli("serve", "--dsn", no_views.url, "--web.listen-address", "127.0.0.1:0",
                         "--fail-fast")
    assert result.returncode == 2
    assert "run `cj-health-exporter install-view`" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_inspect_by_id_by_bos_and_unknown(seeded_db: SeededDb) -> None:
    wedged = next(b for b, p in seeded_db.planted.items() if "wedged" in p)
    result = run_cli("inspect", str(wedged), "--dsn", seeded_db.url)
    assert result.returncode == 0, result.stderr
    assert f"CJ batch {wedged}" in result.stdout
    assert "WAITING_CALLBACKS / COMPLETE_STABLE" in result.stdout
    assert "- wedged:" in result.stdout and "- anchor_mismatch:" in result.stdout

    result = run_cli("inspect", RERUN_BOS_BATCH_ID, "--dsn", seeded_db.url, "--json")
    runs = json.loads(result.stdout)
    assert len(runs) == RERUNS and all(r["problems"] == [] for r in runs)
    # each run's own completed and result events, and the BOS batch's resource event per run
    assert all(len(r["outbox_events"]) == 2 + RERUNS for r in runs)

    result = run_cli("inspect", "424242", "--dsn", seeded_db.url)
    assert result.returncode == 1 and "no CJ batch" in result.stderr


def test_inspect_runaway_json(seeded_db: SeededDb) -> None:
    runaway = next(b for b, p in seeded_db.planted.items() if "duplicate_completion" in p)
    result = run_cli("inspect", str(runaway), "--dsn", seeded_db.url, "--json")
    report = json.loads(result.stdout)[0]
    assert report["completion_events"] == RUNAWAY_COMPLETION_RUNS
    assert report["completion_event_burst"] == RUNAWAY_COMPLETION_RUNS
    assert set(report["problems"]) == {"duplicate_completion", "duplicate_charge"}


def test_install_view_is_idempotent(pg_server: Server) -> None:
    with database(pg_server, schema="reference") as db:
        for outcome in ("created", "already present"):  # says which, the first time too
            result = run_cli("install-view", "--dsn", db.url)
            assert result.returncode == 0, result.stderr
            assert ("views cj_batch_health, cj_outbox_health and cj_charge_events installed"
                    in result.stdout)
            assert f"index cj_health_outbox_unpublished_idx {outcome}" in result.stdout
            # no JSON expression index any more (it made the CJ service's writes fail)
            assert "cj_health_outbox_completion_job_idx" not in result.stdout
        engine = create_engine(db.url)
        with engine.connect() as conn:
            indexes = conn.execute(text("SELECT count(*) FROM pg_indexes WHERE indexname LIKE"
                                        " 'cj\\_health\\_%'")).scalar_one()
            assert conn.execute(text("SELECT count(*) FROM cj_batch_health")).scalar_one() == 0
        engine.dispose()
    assert indexes == len(sqlfiles.statements(sqlfiles.read("views/indexes.sql")))


def test_generate_dashboards_script_matches_the_committed_json(tmp_path: object) -> None:
    """Repository tooling, not a command of the shipped CLI (it needs the checkout's sources)."""
    from pathlib import Path

    out = Path(str(tmp_path))
    root = ROOT / "dashboards"
    script = [sys.executable, str(root / "generate.py")]
    result = subprocess.run([*script, "--out-dir", str(out)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in out.glob("*.json"))
    assert written == sorted(p.name for p in root.glob("*.json")) and written
    for name in written:
        assert (out / name).read_bytes() == (root / name).read_bytes()
    assert subprocess.run([*script, "--check"], timeout=60).returncode == 0


def test_serve_without_remediation_exports_the_idle_remediation_counter(
        seeded_db: SeededDb) -> None:
    with ExporterProcess(seeded_db.url) as exp:
        body = parse(exp.metrics())
    assert body.value("cj_health_remediations_total", action="refinalize",
                      outcome="failed") == 0.0
    assert body.value("cj_health_remediation_enabled") == 0.0


def test_install_view_upgrades_a_view_whose_column_types_changed(pg_server: Server) -> None:
    """CREATE OR REPLACE cannot change a column type: install-view re-creates the view and
    keeps its grants, so the polling role does not lose access on upgrade."""
    old_view = sqlfiles.read("views/cj_batch_health.sql").replace(
        "s.submitted_comparisons::bigint", "s.submitted_comparisons").replace(
        "s.completed_comparisons::bigint", "s.completed_comparisons")
    with database(pg_server, schema="reference") as db:
        engine = create_engine(db.url)
        with engine.begin() as conn:
            sqlfiles.run_script(conn, sqlfiles.read("views/cj_health_json.sql"))  # it calls it
            sqlfiles.run_script(conn, old_view)
            conn.execute(text("DROP ROLE IF EXISTS cjh_upgrade_reader"))
            conn.execute(text("CREATE ROLE cjh_upgrade_reader"))
            conn.execute(text("GRANT SELECT ON cj_batch_health TO cjh_upgrade_reader"))
        column_type = text("SELECT data_type FROM information_schema.columns"
                           " WHERE table_name = 'cj_batch_health' AND column_name = :c")
        with engine.connect() as conn:
            assert conn.execute(column_type, {"c": "pending_callbacks"}).scalar_one() == "integer"
        result = run_cli("install-view", "--dsn", db.url, "--no-indexes")
        assert result.returncode == 0, result.stderr
        with engine.begin() as conn:
            assert conn.execute(column_type, {"c": "pending_callbacks"}).scalar_one() == "bigint"
            assert conn.execute(text("SELECT has_table_privilege('cjh_upgrade_reader',"
                                     " 'cj_batch_health', 'SELECT')")).scalar_one()
            conn.execute(text("DROP OWNED BY cjh_upgrade_reader"))
            conn.execute(text("DROP ROLE cjh_upgrade_reader"))
        engine.dispose()
