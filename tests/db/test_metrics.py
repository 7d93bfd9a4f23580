"""The exporter core in-process on a real Postgres: snapshot -> rendered /metrics.

Checks the metric contract (docs/metrics.md), that series of a batch vanish when it leaves the
exported set or changes state (no ghost series), the cap, NULL handling, staleness, timeouts,
overrun skips, and the HTTP content negotiation serving pre-rendered bytes.
"""

from __future__ import annotations

import gzip
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from prometheus_client.samples import Sample
from sqlalchemy import create_engine, text

from exporter import config, db
from exporter.config import Settings
from exporter.demo.scenarios import (
    BATCH20_IDLE,
    GRADES,
    OUTBOX_FAILED,
    OUTBOX_OLDEST,
    OUTBOX_UNPUBLISHED,
    RUNAWAY_COMPLETION_RUNS,
    RUNAWAY_DUPLICATES,
    Seeder,
)
from exporter.poll.scheduler import Poller, PollScheduler
from exporter.vocabulary import PROBLEM_COLUMNS as PROBLEMS
from exporter.web.negotiation import OPENMETRICS_TYPE, TEXT_TYPE
from exporter.web.server import MetricsServer
from tests.support.database import SeededDb
from tests.support.exposition import parse
from tests.support.process import free_port, http_get


def make_poller(url: str, **overrides: object) -> Poller:
    settings = Settings(dsn=url, **overrides)  # type: ignore[arg-type]
    engine = db.make_engine(config.parse_dsn(url), settings.connect_timeout_seconds)
    return Poller(settings, engine)


@pytest.fixture
def poller(seeded_db: SeededDb) -> Iterator[Poller]:
    p = make_poller(seeded_db.url)
    p.poll_once()
    yield p
    p.engine.dispose()


def samples(poller: Poller) -> list[Sample]:
    families = parse(poller.store.page.metrics.text).families.values()
    return [s for family in families for s in family.samples]


def named(poller: Poller, name: str) -> list[Sample]:
    return parse(poller.store.page.metrics.text).samples(name)


def value(poller: Poller, name: str, **labels: str) -> float:
    found = parse(poller.store.page.metrics.text).value(name, **labels)
    assert found is not None, (name, labels)
    return found


def test_problem_series_exactly_on_the_planted_batches(poller: Poller,
                                                       seeded_db: SeededDb) -> None:
    flagged: dict[int, set[str]] = {}
    for s in named(poller, "cj_batch_problem"):
        assert s.value == 1
        flagged.setdefault(int(s.labels["cj_batch_id"]), set()).add(s.labels["problem"])
    expected = {b: set(p) for b, p in seeded_db.planted.items() if p}
    assert flagged == expected
    for problem in PROBLEMS:
        want = sum(problem in p for p in seeded_db.planted.values())
        assert value(poller, "cj_batches_problem", problem=problem) == want


def test_contract_metric_names_and_labels(poller: Poller) -> None:
    seen = {s.name: set(s.labels) for s in samples(poller)}
    assert seen["cj_batch_last_activity_timestamp_seconds"] == {
        "cj_batch_id", "bos_batch_id", "cj_state", "upload_status"}
    assert seen["cj_batch_comparisons"] == {"cj_batch_id", "kind"}
    assert seen["cj_batch_completion_events"] == {"cj_batch_id", "bos_batch_id", "event"}
    assert seen["cj_batch_problem"] == {"cj_batch_id", "bos_batch_id", "problem"}
    assert seen["cj_batches"] == {"cj_state", "upload_status"}
    for name in ("cj_batch_grade_projections", "cj_batch_anchor_mismatches",
                 "cj_batch_completion_event_burst", "cj_outbox_unpublished_events",
                 "cj_outbox_oldest_unpublished_age_seconds", "cj_outbox_failed_events",
                 "cj_health_up", "cj_health_last_success_timestamp_seconds",
                 "cj_health_poll_duration_seconds", "cj_health_polls_skipped_total",
                 "cj_health_exported_batches", "cj_health_batches_dropped",
                 "cj_health_remediation_enabled", "cj_health_build_info"):
        assert name in seen, name
    assert {s.labels["reason"] for s in named(poller, "cj_health_poll_errors_total")} == {
        "connection", "timeout", "query", "data"}


def test_values_of_the_wedged_batch(poller: Poller, seeded_db: SeededDb) -> None:
    wedged = next(b for b, p in seeded_db.planted.items() if "wedged" in p)
    bid = str(wedged)
    assert value(poller, "cj_batch_anchors", cj_batch_id=bid, source="column") == 0
    assert value(poller, "cj_batch_anchors", cj_batch_id=bid, source="metadata") == len(GRADES)
    assert value(poller, "cj_batch_anchor_mismatches", cj_batch_id=bid) == len(GRADES)
    assert value(poller, "cj_batch_grade_projections", cj_batch_id=bid) == 0
    assert value(poller, "cj_batch_comparisons", cj_batch_id=bid, kind="pending") == 0
    activity = value(poller, "cj_batch_last_activity_timestamp_seconds", cj_batch_id=bid,
                     cj_state="WAITING_CALLBACKS", upload_status="COMPLETE_STABLE")
    # a timestamp, not an age
    assert activity == pytest.approx(time.time() - BATCH20_IDLE.total_seconds(), abs=120)


def test_nulls_are_absent_not_zero(poller: Poller, seeded_db: SeededDb) -> None:
    no_budget = next(b for b, p in seeded_db.planted.items() if "metadata_incomplete" in p)
    kinds = {s.labels["kind"] for s in named(poller, "cj_batch_comparisons")
             if s.labels["cj_batch_id"] == str(no_budget)}
    assert "budget" not in kinds and "submitted" in kinds
    assert not [s for s in named(poller, "cj_batch_progress_ratio")
                if s.labels["cj_batch_id"] == str(no_budget)]


def test_runaway_and_outbox_aggregates(poller: Poller) -> None:
    burst = max(s.value for s in named(poller, "cj_batch_completion_event_burst"))
    assert burst == RUNAWAY_COMPLETION_RUNS
    for event in ("completed", "result", "resource"):
        assert value(poller, "cj_outbox_duplicate_events", event=event) == RUNAWAY_DUPLICATES
    assert value(poller, "cj_outbox_unpublished_events") == OUTBOX_UNPUBLISHED
    assert value(poller, "cj_outbox_failed_events") == OUTBOX_FAILED
    assert value(poller, "cj_outbox_oldest_unpublished_age_seconds") == pytest.approx(
        OUTBOX_OLDEST.total_seconds(), abs=90)


def test_history_is_not_exported(poller: Poller, seeded_db: SeededDb) -> None:
    exported = {s.labels["cj_batch_id"] for s in
                named(poller, "cj_batch_last_activity_timestamp_seconds")}
    # the batch finished HISTORY_IDLE (400 days) ago is absent
    assert exported == {str(b) for b in seeded_db.planted}
    assert value(poller, "cj_health_exported_batches") == len(seeded_db.planted)


def test_state_change_and_leaving_the_set_remove_old_series(poller: Poller,
                                                            seeded_db: SeededDb) -> None:
    stuck = next(b for b, p in seeded_db.planted.items() if "stuck_scoring" in p)
    healthy = min(b for b, p in seeded_db.planted.items() if not p)
    engine = create_engine(seeded_db.url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE cj_batch_states SET state = 'COMPLETED', last_activity_at ="
                          " now() WHERE batch_id = :id"), {"id": stuck})
        conn.execute(text("UPDATE cj_batch_uploads SET status = 'COMPLETE_STABLE' WHERE id = :id"),
                     {"id": stuck})
        bos = conn.execute(text("SELECT bos_batch_id FROM cj_batch_uploads WHERE id = :id"),
                           {"id": stuck}).scalar_one()
        # finalized at last: its three events, the charge included (else it is unbilled)
        Seeder(conn).write_completion_events(stuck, bos, "corr", "teacher-0001",
                                             datetime.now(UTC))
        conn.execute(text("UPDATE cj_batch_states SET last_activity_at = now() - interval '2 h'"
                          " WHERE batch_id = :id"), {"id": healthy})
    engine.dispose()
    # Moving last_activity_at back signals nothing an incremental poll looks for (see
    # exporter/poll/changes.py): only a full poll sees the healthy batch leave.
    poller.request_full_poll()
    poller.poll_once()
    stuck_series = [s for s in samples(poller) if s.labels.get("cj_batch_id") == str(stuck)]
    activity = [s for s in stuck_series if s.name == "cj_batch_last_activity_timestamp_seconds"]
    assert [s.labels["cj_state"] for s in activity] == ["COMPLETED"]  # old state label gone
    assert not [s for s in stuck_series if s.name == "cj_batch_problem"]
    assert not [s for s in samples(poller) if s.labels.get("cj_batch_id") == str(healthy)]


def test_max_batches_cap_keeps_problem_batches_and_counts_the_rest(seeded_db: SeededDb) -> None:
    p = make_poller(seeded_db.url, max_batches=3)
    p.poll_once()
    exported = {int(s.labels["cj_batch_id"]) for s in
                named(p, "cj_batch_last_activity_timestamp_seconds")}
    problem_batches = {b for b, probs in seeded_db.planted.items() if probs}
    assert len(exported) == 3 and exported <= problem_batches
    assert value(p, "cj_health_batches_dropped") == len(seeded_db.planted) - 3
    p.engine.dispose()


def test_promtool_check_metrics_accepts_the_output(poller: Poller) -> None:
    result = subprocess.run(["promtool", "check", "metrics"], input=poller.store.page.metrics.text,
                            capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def test_openmetrics_rendering_parses(poller: Poller) -> None:
    body = poller.store.page.metrics.openmetrics.decode()
    assert body.endswith("# EOF\n")
    families = parse(body, openmetrics=True).families
    assert families["cj_health_poll_errors"].type == "counter"
    assert families["cj_batch_problem"].samples


def test_failed_polls_keep_the_snapshot_then_go_stale(cj_db: str, pg_server: object) -> None:
    from tests.support.database import drop_database

    # stale 1 s after the good poll: dropping the database takes up to ~0.5 s on a loaded machine
    p = make_poller(cj_db, poll_interval_seconds=0.5, stale_after=2)
    engine = create_engine(cj_db)
    with engine.begin() as conn:
        from exporter.demo.scenarios import BatchSpec, Seeder

        Seeder(conn).insert_batch(BatchSpec(status="FETCHING_CONTENT", state="SCORING"))
    engine.dispose()
    p.poll_once()
    assert value(p, "cj_health_up") == 1 and named(p, "cj_batch_problem")
    drop_database(pg_server, cj_db.rsplit("/", 1)[1].split("?")[0])  # type: ignore[arg-type]
    p.poll_once()
    assert value(p, "cj_health_up") == 0
    assert value(p, "cj_health_poll_errors_total", reason="connection") == 1
    assert named(p, "cj_batch_problem"), "a failed poll keeps the previous snapshot"
    time.sleep(1.1)  # > stale_after * poll_interval
    p.poll_once()
    assert value(p, "cj_health_snapshot_stale") == 1
    assert not named(p, "cj_batch_problem") and not named(p, "cj_batches")
    assert value(p, "cj_health_last_success_timestamp_seconds") > 0
    p.engine.dispose()


def hold_lock(url: str, table: str, seconds: float) -> threading.Thread:
    """Another session holds ACCESS EXCLUSIVE on `table` for `seconds`."""
    ready = threading.Event()

    def run() -> None:
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
            ready.set()
            time.sleep(seconds)
        engine.dispose()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    return thread


def test_lock_timeout_is_server_side_and_counted(seeded_db: SeededDb) -> None:
    p = make_poller(seeded_db.url, lock_timeout_seconds=0.2)
    holder = hold_lock(seeded_db.url, "cj_batch_states", 2.0)
    started = time.monotonic()
    p.poll_once()
    assert time.monotonic() - started < 1.5
    assert value(p, "cj_health_poll_errors_total", reason="timeout") == 1
    assert value(p, "cj_health_up") == 0
    holder.join()
    p.poll_once()
    assert value(p, "cj_health_up") == 1  # recovers on the next poll
    p.engine.dispose()


def test_overrunning_poll_skips_ticks_and_counts_them(seeded_db: SeededDb) -> None:
    p = make_poller(seeded_db.url, poll_interval_seconds=0.2, lock_timeout_seconds=5)
    holder = hold_lock(seeded_db.url, "cj_batch_states", 1.5)
    scheduler = PollScheduler(p)
    scheduler.start()
    holder.join()
    deadline = time.monotonic() + 10
    while value(p, "cj_health_up") != 1 and time.monotonic() < deadline:
        time.sleep(0.05)  # the poll that waited for the lock finishes, or the next one
    up = value(p, "cj_health_up")
    scheduler.stop()  # (stop cancels a poll in flight: read `up` before it)
    assert value(p, "cj_health_polls_skipped_total") >= 3
    assert up == 1
    p.engine.dispose()


@pytest.fixture
def server(poller: Poller) -> Iterator[MetricsServer]:
    srv = MetricsServer("127.0.0.1", free_port(), poller.store)
    srv.start()
    yield srv
    srv.stop()


def test_http_content_negotiation(server: MetricsServer, poller: Poller) -> None:
    base = f"http://127.0.0.1:{server.port}"
    status, headers, body = http_get(f"{base}/metrics")
    assert status == 200 and headers["Content-Type"] == TEXT_TYPE
    assert body == poller.store.page.metrics.text
    status, headers, body = http_get(f"{base}/metrics", {"Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body) == poller.store.page.metrics.text
    status, headers, body = http_get(
        f"{base}/metrics", {"Accept": "application/openmetrics-text;version=1.0.0,*/*;q=0.1",
                            "Accept-Encoding": "gzip, deflate"})
    assert headers["Content-Type"] == OPENMETRICS_TYPE
    assert gzip.decompress(body).endswith(b"# EOF\n")


def test_landing_health_and_read_only_endpoints(server: MetricsServer) -> None:
    base = f"http://127.0.0.1:{server.port}"
    status, _, body = http_get(f"{base}/")
    assert status == 200 and b'href="/metrics"' in body
    status, _, body = http_get(f"{base}/healthz")
    assert status == 200 and b'"status": "ok"' in body
    assert http_get(f"{base}/nope")[0] == 404
    import urllib.request

    request = urllib.request.Request(f"{base}/metrics", data=b"x", method="POST")
    try:
        urllib.request.urlopen(request, timeout=5)
        raise AssertionError("POST must be refused")
    except urllib.error.HTTPError as exc:
        assert exc.code == 405


def test_scrape_never_touches_the_database(server: MetricsServer, poller: Poller,
                                           seeded_db: SeededDb, pg_server: object) -> None:
    from tests.support.database import drop_database

    before = http_get(f"http://127.0.0.1:{server.port}/metrics")[2]
    poller.engine.dispose()
    drop_database(pg_server, seeded_db.url.rsplit("/", 1)[1].split("?")[0])  # type: ignore
    started = time.monotonic()
    after = http_get(f"http://127.0.0.1:{server.port}/metrics")[2]
    assert after == before and time.monotonic() - started < 0.5


