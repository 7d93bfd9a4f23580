"""Faults injected for real into a running `cj-health-exporter serve` process (issue 7, item 4).

- PostgreSQL stopped and started 20 times under the exporter: no crash, up 0 then 1 each time,
  no restart, and no leaked threads, file descriptors or database connections afterwards.
- A poll query slower than statement_timeout: Postgres cancels it (the backend is idle again
  within the timeout, not after the query's natural end), it is counted as reason="timeout", and
  scrapes stay fast meanwhile.
- 200 concurrent scrapes while polls run: all answered, latency bounded (figures printed).
- SIGTERM while a poll query is stuck: the process exits 0 within 5 s and its query is cancelled
  in Postgres instead of running on.
- Malformed data: NULL states, enum labels added upstream (ALTER TYPE ... ADD VALUE), documents
  that are JSON but not objects, timestamps at 'infinity', counters that overflow in the view.
  Each is counted or labelled, the other batches keep being exported, nothing crashes.

The figures (cycles, recovery, storm latency, shutdown time) are printed with -s and recorded in
the issue's closing note.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import random
import signal
import threading
import time
import urllib.request

from sqlalchemy import create_engine, text

from exporter import sqlfiles
from exporter.demo.embedded import EmbeddedPostgres
from exporter.demo.scenarios import BatchSpec, Seeder
from tests.support.database import SeededDb, url_string
from tests.support.exposition import parse, sample_value
from tests.support.hardening import (
    exporter_backends,
    fd_count,
    percentiles,
    settled_count,
    thread_count,
    wait_until,
)
from tests.support.process import ExporterProcess, http_get

OUTAGE_CYCLES = 20


def up(body: bytes | str) -> float | None:
    return sample_value(body, "cj_health_up")


def test_twenty_database_outages_without_crash_or_leak(own_postgres: EmbeddedPostgres) -> None:
    dsn = url_string(own_postgres.url())
    # stale-after is large so the per-batch series survive every outage: the test also checks
    # that the last good snapshot is served while the database is down.
    with ExporterProcess(dsn, poll_interval=0.2, extra_args=["--stale-after", "1000"]) as exp:
        assert exp.proc is not None
        pid = exp.proc.pid
        exp.wait_for(lambda b: up(b) == 1, 10)
        threads_before = settled_count(lambda: thread_count(pid))
        fds_before = settled_count(lambda: fd_count(pid))
        assert len(exporter_backends(dsn)) == 1  # the pool holds one connection
        recoveries = []
        for cycle in range(OUTAGE_CYCLES):
            own_postgres.stop_server()
            body = exp.wait_for(lambda b: up(b) == 0, 10)
            assert parse(body).samples("cj_batch_problem"), (
                f"cycle {cycle}: last snapshot not served")
            own_postgres.start_server()
            started = time.monotonic()
            exp.wait_for(lambda b: up(b) == 1, 15)
            recoveries.append(time.monotonic() - started)
        assert exp.proc.poll() is None, "the exporter must survive every outage"
        body = exp.wait_for(lambda b: True, 5)
        errors = sample_value(body, "cj_health_poll_errors_total", reason="connection") or 0
        assert errors >= OUTAGE_CYCLES
        # Leaks: threads and descriptors come back to where they were, one pooled connection.
        wait_until(lambda: settled_count(lambda: thread_count(pid)) <= threads_before, 5,
                   f"threads back to {threads_before}")
        wait_until(lambda: settled_count(lambda: fd_count(pid)) <= fds_before, 5,
                   f"file descriptors back to {fds_before}")
        backends = exporter_backends(dsn)
        assert len(backends) <= 1, backends
        print(f"\n{OUTAGE_CYCLES} outages survived; recovery after restart "
              f"mean {sum(recoveries) / len(recoveries):.2f}s max {max(recoveries):.2f}s; "
              f"threads {threads_before}->{thread_count(pid)}, fds {fds_before}->"
              f"{fd_count(pid)}, backends {len(backends)}, connection errors {errors:.0f}")
        assert exp.stop(signal.SIGTERM) == 0
    assert "Traceback" not in exp.output()


def slow_down_outbox_view(url: str, seconds: float) -> None:
    """Every read of cj_outbox_health now sleeps in Postgres (the view keeps its columns)."""
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("ALTER VIEW cj_outbox_health RENAME TO cj_outbox_health_fast"))
        conn.execute(text("CREATE VIEW cj_outbox_health AS SELECT f.* FROM"
                          f" cj_outbox_health_fast AS f CROSS JOIN pg_sleep({seconds})"))
    engine.dispose()


def longest_exporter_query(url: str, database: str) -> float:
    """Seconds the oldest still-running exporter statement has been running (0 if none)."""
    engine = create_engine(url)
    with engine.connect() as conn:
        value = conn.execute(text(
            "SELECT COALESCE(max(extract(epoch FROM clock_timestamp() - query_start)), 0)"
            " FROM pg_stat_activity WHERE application_name = 'cj-health-exporter'"
            " AND datname = :db AND state = 'active'"), {"db": database}).scalar_one()
    engine.dispose()
    return float(value)


def database_name(url: str) -> str:
    return url.rsplit("/", 1)[1].split("?")[0]


def test_poll_slower_than_statement_timeout_is_cancelled_server_side(
        seeded_db: SeededDb) -> None:
    db = database_name(seeded_db.url)
    with ExporterProcess(seeded_db.url, poll_interval=0.5,
                         extra_args=["--statement-timeout", "0.5"]) as exp:
        slow_down_outbox_view(seeded_db.url, 30)
        latencies, longest = [], 0.0
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            started = time.monotonic()
            status, _, body = http_get(f"{exp.url}/metrics")
            latencies.append(time.monotonic() - started)
            assert status == 200
            longest = max(longest, longest_exporter_query(seeded_db.url, db))
            time.sleep(0.02)
        body = exp.wait_for(lambda b: (sample_value(b, "cj_health_poll_errors_total",
                                                    reason="timeout") or 0) >= 2, 10)
        assert up(body) == 0
        # A client-side timeout would leave pg_sleep(30) running for 30 s: server-side, no
        # exporter statement ever lives much longer than the 0.5 s statement_timeout.
        assert longest < 1.5, f"a poll query ran {longest:.1f}s in Postgres"
        assert max(latencies) < 0.5, f"a scrape took {max(latencies):.3f}s during slow polls"
        assert "QueryCanceled" in exp.output()
        print(f"\nslow poll: longest exporter query in Postgres {longest:.2f}s "
              f"(statement_timeout 0.5s); {len(latencies)} scrapes meanwhile, "
              f"max {max(latencies) * 1000:.1f} ms")


def test_scrape_storm_has_bounded_latency(seeded_db: SeededDb) -> None:
    scrapes = 200
    with ExporterProcess(seeded_db.url, poll_interval=0.2) as exp:
        assert exp.proc is not None
        pid = exp.proc.pid
        polls_before = sample_value(exp.metrics(), "cj_health_polls_total") or 0
        threads_before = settled_count(lambda: thread_count(pid))
        barrier = threading.Barrier(scrapes)

        def scrape(i: int) -> tuple[float, bytes]:
            # Half ask as Prometheus does (OpenMetrics, gzip), half plain text.
            headers = {"Accept": "application/openmetrics-text;version=1.0.0",
                       "Accept-Encoding": "gzip"} if i % 2 else {}
            request = urllib.request.Request(f"{exp.url}/metrics", headers=headers)
            barrier.wait()
            started = time.monotonic()
            with urllib.request.urlopen(request, timeout=30) as response:
                body = response.read()
            return time.monotonic() - started, body

        with concurrent.futures.ThreadPoolExecutor(scrapes) as pool:
            results = list(pool.map(scrape, range(scrapes)))
        # Checked after the storm: parsing in the scrape threads would hold the GIL while
        # the other scrapes are being timed.
        for i, (_, body) in enumerate(results):
            if i % 2:
                body = gzip.decompress(body)
                assert body.endswith(b"# EOF\n")
            assert parse(body, openmetrics=bool(i % 2)).samples("cj_batch_problem"), i
        figures = percentiles([elapsed for elapsed, _ in results])
        polls_after = sample_value(exp.metrics(), "cj_health_polls_total") or 0
        print(f"\nscrape storm, {scrapes} concurrent: p50 {figures['p50'] * 1000:.0f} ms, "
              f"p99 {figures['p99'] * 1000:.0f} ms, max {figures['max'] * 1000:.0f} ms; "
              f"polls during the storm and after: {polls_after - polls_before:.0f}")
        # Measured here: p50 ~140 ms, p99 ~200 ms, max ~220 ms. With socketserver's listen
        # backlog of 5 the kernel dropped SYNs and p99 was 4.7 s (retries after 1, 3, 7 s):
        # p99 < 1 s catches that, and leaves a 5x margin for a loaded CI machine.
        assert figures["p99"] < 1.0 and figures["max"] < 2.5, figures
        assert polls_after > polls_before, "polls must go on during the storm"
        assert up(exp.metrics()) == 1
        wait_until(lambda: thread_count(pid) <= threads_before, 10, "HTTP threads to end")


def test_sigterm_during_a_stuck_poll_exits_within_5s(seeded_db: SeededDb) -> None:
    db = database_name(seeded_db.url)
    with ExporterProcess(seeded_db.url, poll_interval=0.5,
                         extra_args=["--statement-timeout", "60"]) as exp:
        slow_down_outbox_view(seeded_db.url, 60)
        wait_until(lambda: longest_exporter_query(seeded_db.url, db) > 0.3, 10,
                   "a poll stuck in pg_sleep")
        started = time.monotonic()
        code = exp.stop(signal.SIGTERM, timeout=30)
        took = time.monotonic() - started
        assert code == 0 and took < 5, (code, took)
        # The query did not outlive the process: Postgres was told to cancel it.
        wait_until(lambda: not exporter_backends(seeded_db.url, db), 5,
                   "the exporter's backend to go away")
        print(f"\nSIGTERM during a 60 s poll query: exit 0 after {took:.2f}s")
    assert "Traceback" not in exp.output()
    assert "exiting with" not in exp.output(), "the cancel must end the poll, not os._exit"


def test_malformed_rows_are_counted_never_fatal(seeded_db: SeededDb) -> None:
    admin = create_engine(seeded_db.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        seeder = Seeder(conn, rng=random.Random(7))  # ids unlike the demo seed's
        null_state = seeder.insert_batch(BatchSpec(status="PERFORMING_COMPARISONS",
                                                   state="WAITING_CALLBACKS", finished=False))
        new_labels = seeder.insert_batch(BatchSpec(status="PERFORMING_COMPARISONS",
                                                   state="WAITING_CALLBACKS", finished=False))
        odd_json = seeder.insert_batch(BatchSpec(status="PERFORMING_COMPARISONS",
                                                 state="WAITING_CALLBACKS", finished=False,
                                                 submitted=10, completed=4,
                                                 request={"max_comparisons_override": 10}))
        infinite = seeder.insert_batch(BatchSpec(status="PERFORMING_COMPARISONS",
                                                 state="WAITING_CALLBACKS", finished=False))
        # Upstream may add labels (never renames); ADD VALUE must commit before it is used.
        conn.execute(text("ALTER TYPE cj_batch_state_enum ADD VALUE 'PAUSED'"))
        conn.execute(text("ALTER TYPE cj_batch_status_enum ADD VALUE 'AWAITING_REVIEW'"))
        conn.execute(text("UPDATE cj_batch_states SET state = 'PAUSED' WHERE batch_id = :b"),
                     {"b": new_labels})
        conn.execute(text("UPDATE cj_batch_uploads SET status = 'AWAITING_REVIEW'"
                          " WHERE id = :b"), {"b": new_labels})
        # A NULL state: only possible once the column lost NOT NULL (a drifted schema).
        conn.execute(text("ALTER TABLE cj_batch_states ALTER COLUMN state DROP NOT NULL"))
        conn.execute(text("UPDATE cj_batch_states SET state = NULL WHERE batch_id = :b"),
                     {"b": null_state})
        # json columns hold any JSON: scalars, arrays, wrong types under the expected keys.
        conn.execute(text("UPDATE cj_batch_states SET processing_metadata = '\"text\"'"
                          " WHERE batch_id = :b"), {"b": odd_json})
        conn.execute(text(
            "UPDATE cj_processed_essays SET processing_metadata = CASE"
            " WHEN els_essay_id = (SELECT min(els_essay_id) FROM cj_processed_essays"
            "  WHERE cj_batch_id = :b) THEN '[1, 2]'::json"
            " ELSE '{\"is_anchor\": {\"nested\": true}, \"anchor_ref_id\": \"99999999999\","
            " \"anchor_grade\": 7}'::json END WHERE cj_batch_id = :b"), {"b": odd_json})
        conn.execute(text(
            "INSERT INTO event_outbox (aggregate_id, aggregate_type, event_type, event_data,"
            " topic) VALUES (:b, 'cj_batch', 'huleedu.cj_assessment.completed.v1', '42',"
            " 'x'), (:b, 'assessment_result', 'assessment.result.published', '[null]', 'y')"),
            {"b": str(odd_json)})
        # 'infinity' is a valid timestamptz that no Python datetime can hold.
        conn.execute(text("UPDATE cj_batch_states SET last_activity_at = 'infinity'"
                          " WHERE batch_id = :b"), {"b": infinite})

        with ExporterProcess(seeded_db.url, poll_interval=0.3) as exp:
            body = exp.wait_for(lambda b: True, 5)
            assert up(body) == 1
            assert sample_value(body, "cj_health_malformed_rows") == 1  # the infinite one, alone
            assert sample_value(body, "cj_batch_last_activity_timestamp_seconds",
                                cj_batch_id=str(infinite)) is None
            # NULL state reads as "no state" (the view cannot tell the two apart).
            assert sample_value(body, "cj_batch_last_activity_timestamp_seconds",
                                cj_batch_id=str(null_state), cj_state="NONE") is not None
            assert sample_value(body, "cj_batch_last_activity_timestamp_seconds",
                                cj_batch_id=str(new_labels), cj_state="PAUSED",
                                upload_status="AWAITING_REVIEW") is not None
            assert sample_value(body, "cj_batches", cj_state="PAUSED",
                                upload_status="AWAITING_REVIEW") == 1
            # Non-object state metadata, while the request asked for a budget a continuation
            # would then lose, is "incomplete", not an error.
            assert sample_value(body, "cj_batch_problem", cj_batch_id=str(odd_json),
                                problem="metadata_incomplete") == 1
            assert sample_value(body, "cj_batch_anchors", cj_batch_id=str(odd_json),
                                source="metadata") == 0
            # Every planted demo problem is still exported next to the bad rows.
            for batch, problems in seeded_db.planted.items():
                for problem in problems:
                    assert sample_value(body, "cj_batch_problem", cj_batch_id=str(batch),
                                        problem=problem) == 1, (batch, problem)

            # Counters near 2^31 are computed in bigint: the corrupt row is exported as it
            # is and the poll stays up (it used to overflow and fail every poll).
            # (Moving last_activity_at, as every service update does, so that the next
            # incremental poll reads the batch again: exporter/poll/changes.py.)
            conn.execute(text("UPDATE cj_batch_states SET submitted_comparisons = 2147483647,"
                              " completed_comparisons = -10, last_activity_at = now()"
                              " WHERE batch_id = :b"), {"b": odd_json})
            body = exp.wait_for(lambda b: sample_value(b, "cj_batch_comparisons", kind="pending",
                                                       cj_batch_id=str(odd_json)) == 2147483657, 10)
            assert up(body) == 1

            # A query the database refuses (here: a view dropped under the exporter) fails
            # the poll: counted as reason="query", the process lives on and recovers.
            errors_before = sample_value(body, "cj_health_poll_errors_total", reason="query") or 0
            conn.execute(text("DROP VIEW cj_outbox_health"))
            body = exp.wait_for(lambda b: up(b) == 0, 10)
            assert (sample_value(body, "cj_health_poll_errors_total", reason="query") or 0) \
                > errors_before
            sqlfiles.install_views(conn)
            exp.wait_for(lambda b: up(b) == 1, 10)
            assert exp.proc is not None and exp.proc.poll() is None
    admin.dispose()
    output = exp.output()
    assert "Traceback" not in output
    assert f"skipping malformed cj_batch_health row {infinite}" in output
