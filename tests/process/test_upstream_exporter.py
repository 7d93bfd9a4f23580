"""A real `serve` and the `charges` command over the batches the CJ service's own code wrote
(../shared/upstream/fixtures), on its migrated schema and on the project's reference schema:
/metrics has a cj_batch_problem series for exactly what MANIFEST.md says a correct monitor flags,
and `charges` lists the one run charged more than once (its 5 x 28 credits to refund), also under
the read-only role of sql/roles.sql."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from tests.support.database import Server
from tests.support.exposition import sample_value as metric
from tests.support.hardening import apply_roles, drop_roles, libpq_url, psql_binary
from tests.support.manifest import EXPECTED_PROBLEMS
from tests.support.process import ExporterProcess
from tests.support.upstream import SCHEMAS, UpstreamDb, upstream_database

# Roles of their own (roles are cluster-wide; tests/db/test_roles.py uses the default names).
RO, RW, OP = "cjh_charges_ro", "cjh_charges_rw", "cjh_charges_op"
RO_PASSWORD = "charges-ro-test-pw"  # test-only


@pytest.fixture(scope="module", params=SCHEMAS)
def fixture_db(request: pytest.FixtureRequest, pg_server: Server) -> Iterator[UpstreamDb]:
    with upstream_database(pg_server, request.param) as db:
        yield db


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True,
                          text=True, timeout=60)


def test_metrics_flag_exactly_what_the_manifest_says(fixture_db: UpstreamDb) -> None:
    with ExporterProcess(fixture_db.url) as exporter:
        body = exporter.metrics()
    flagged: dict[int, set[str]] = {}
    for line in body.splitlines():
        if line.startswith("cj_batch_problem{"):
            labels = dict(part.split("=", 1) for part in line[17:line.index("}")].split(","))
            flagged.setdefault(int(labels["cj_batch_id"].strip('"')), set()).add(
                labels["problem"].strip('"'))
    assert flagged == {b: set(p) for b, p in EXPECTED_PROBLEMS.items() if p}
    assert metric(body, "cj_batch_overcharged_quantity", cj_batch_id="2") == 140
    assert metric(body, "cj_overcharged_quantity") == 140
    assert metric(body, "cj_batch_completion_events", cj_batch_id="3", event="resource") == 1
    assert metric(body, "cj_outbox_duplicate_events", event="resource") == 5
    assert metric(body, "cj_batch_anchor_grade_resolution", cj_batch_id="4",
                  tier="known_grade") == 8
    assert metric(body, "cj_batch_anchor_grade_resolution", cj_batch_id="4",
                  tier="unresolved") == 0
    assert metric(body, "cj_batch_budget_progress_ratio", cj_batch_id="8") == pytest.approx(
        20 / 30)
    assert metric(body, "cj_batch_partial_scoring", cj_batch_id="1", source="flag") == 1
    assert metric(body, "cj_batch_partial_scoring", cj_batch_id="4", source="flag") == 0
    assert metric(body, "cj_batch_partial_scoring", cj_batch_id="4", source="counters") == 1


def test_charges_json_lists_the_runaway_run_and_its_refund(fixture_db: UpstreamDb) -> None:
    result = cli("charges", "--format", "json", "--dsn", fixture_db.url)
    assert result.returncode == 0, result.stderr
    runs = json.loads(result.stdout)
    assert [(r["processing_id"], r["cj_batch_id"], r["charges"], r["refund_quantity"])
            for r in runs] == [("2", 2, 6, 140)]
    (run,) = runs
    assert run["bos_batch_id"] == "924a4aee-9768-4fa2-8986-c91e985896c6"
    assert [e["charge_number"] for e in run["events"]] == [1, 2, 3, 4, 5, 6]
    assert {(e["user_id"], e["org_id"], e["quantity"]) for e in run["events"]} == {
        ("teacher-1", "org-1", 28)}
    assert all(e["published_at"] for e in run["events"])


def test_charges_csv_has_a_refund_per_line_and_the_table_a_total(
        fixture_db: UpstreamDb) -> None:
    result = cli("charges", "--format", "csv", "--dsn", fixture_db.url)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 6 and {r["processing_id"] for r in rows} == {"2"}
    assert [r["refund_quantity"] for r in rows] == ["0", "28", "28", "28", "28", "28"]
    table = cli("charges", "--dsn", fixture_db.url)
    assert table.returncode == 0, table.stderr
    assert "CJ run 2" in table.stdout and "charged 6 times, refund 140" in table.stdout
    assert table.stdout.rstrip().endswith("total to refund: 140")


def test_charges_since(fixture_db: UpstreamDb) -> None:
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    later = cli("charges", "--since", tomorrow, "--format", "json", "--dsn", fixture_db.url)
    assert later.returncode == 0 and json.loads(later.stdout) == []
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    earlier = cli("charges", "--since", yesterday, "--format", "json", "--dsn", fixture_db.url)
    assert [r["processing_id"] for r in json.loads(earlier.stdout)] == ["2"]
    bad = cli("charges", "--since", "last week", "--dsn", fixture_db.url)
    assert bad.returncode == 2 and "--since must be a date" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_charges_runs_under_the_read_only_role(fixture_db: UpstreamDb,
                                               pg_server: Server) -> None:
    admin = make_url(fixture_db.url)
    try:
        roles = apply_roles(admin, ro_role=RO, rw_role=RW, op_role=OP, ro_password=RO_PASSWORD)
        assert roles.returncode == 0, roles.stderr
        ro = admin.set(username=RO, password=RO_PASSWORD).render_as_string(hide_password=False)
        result = cli("charges", "--format", "json", "--dsn", ro)
        assert result.returncode == 0, result.stderr
        assert [r["refund_quantity"] for r in json.loads(result.stdout)] == [140]
        # the role still cannot read the events themselves
        denied = subprocess.run(
            [psql_binary(), libpq_url(admin.set(username=RO, password=RO_PASSWORD)), "-X", "-q",
             "-c", "SELECT event_data FROM event_outbox LIMIT 1"], capture_output=True,
            text=True, timeout=30)
        assert denied.returncode != 0 and "permission denied" in denied.stderr
    finally:
        with fixture_db.engine.begin() as conn:  # the module's database outlives this test
            for role in (OP, RO, RW):
                conn.execute(text(f"DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE"
                                  f" rolname = '{role}') THEN DROP OWNED BY {role}; END IF;"
                                  " END $$"))
        drop_roles(pg_server.url(), OP, RO, RW)
