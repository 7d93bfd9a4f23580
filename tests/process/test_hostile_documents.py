"""A real `serve` against hostile JSON documents (issue 12, items 1 and 8).

Before: one essay's metadata holding `\\u0000` made every poll fail (up 0, then every per-batch
series withdrawn). Now: that batch is exported with what could be read and flagged on /metrics,
every other batch is exported as before, and the warning is logged once, not every poll.
"""

from __future__ import annotations

import json
import random

from sqlalchemy import create_engine, text

from exporter.demo.scenarios import BatchSpec, Seeder
from tests.support.database import SeededDb
from tests.support.exposition import sample_value as metric
from tests.support.process import ExporterProcess

POLLS = 30  # at 0.2 s; the reminders come every 20 polls


def test_one_hostile_essay_costs_only_its_own_batch(seeded_db: SeededDb) -> None:
    engine = create_engine(seeded_db.url)
    with engine.begin() as conn:
        # The demo plants one batch whose essay documents PostgreSQL cannot read.
        demo = {int(b): int(n) for b, n in conn.execute(text(
            "SELECT cj_batch_id, unreadable_essay_documents FROM cj_batch_health"
            " WHERE unreadable_essay_documents > 0"))}
        seeder = Seeder(conn, rng=random.Random(31))
        in_flight = BatchSpec(status="PERFORMING_COMPARISONS", state="WAITING_CALLBACKS",
                              finished=False, submitted=10, completed=4)
        hostile, surrogate, infinite = (seeder.insert_batch(in_flight) for _ in range(3))
        essay = conn.execute(text("SELECT min(els_essay_id) FROM cj_processed_essays"
                                  " WHERE cj_batch_id = :b"), {"b": hostile}).scalar_one()
        # What json.dumps writes for a pasted NUL, and a lone surrogate in the state row.
        conn.execute(text("UPDATE cj_processed_essays SET processing_metadata = CAST(:d AS json)"
                          " WHERE els_essay_id = :e"),
                     {"d": json.dumps({"is_anchor": False, "note": "pasted\x00text"}),
                      "e": essay})
        conn.execute(text("UPDATE cj_batch_states SET processing_metadata = CAST(:d AS json)"
                          " WHERE batch_id = :b"),
                     {"d": json.dumps({"original_request": {"x": "\ud800"}}), "b": surrogate})
        # A malformed row (skipped and counted) and an outbox row at -infinity (item 8).
        conn.execute(text("UPDATE cj_batch_states SET last_activity_at = 'infinity'"
                          " WHERE batch_id = :b"), {"b": infinite})
        conn.execute(text(
            "INSERT INTO event_outbox (aggregate_id, aggregate_type, event_type, event_data,"
            " topic, created_at) VALUES ('undated', 'cj_batch',"
            " 'huleedu.cj_assessment.failed.v1', '{}', 't', '-infinity')"))
    engine.dispose()

    with ExporterProcess(seeded_db.url, poll_interval=0.2) as exp:
        body = exp.wait_for(lambda b: (metric(b, "cj_health_polls_total") or 0) >= POLLS, 60)
        polls = int(metric(body, "cj_health_polls_total") or 0)
        assert metric(body, "cj_health_up") == 1
        assert metric(body, "cj_health_poll_errors_total", reason="query") == 0
        assert metric(body, "cj_health_snapshot_stale") == 0
        # The hostile batches are exported, flagged, with the facts that could be read.
        assert metric(body, "cj_batch_unreadable_documents", cj_batch_id=str(hostile)) == 1
        assert metric(body, "cj_batch_unreadable_documents", cj_batch_id=str(surrogate)) == 1
        for batch in seeded_db.planted:
            assert metric(body, "cj_batch_unreadable_documents",
                          cj_batch_id=str(batch)) == demo.get(batch, 0)
        assert metric(body, "cj_batch_comparisons", cj_batch_id=str(hostile),
                      kind="pending") == 6
        assert metric(body, "cj_batch_anchors", cj_batch_id=str(hostile), source="column") == 0
        assert metric(body, "cj_unreadable_documents",
                      document="essay_metadata") == 1 + sum(demo.values())
        assert metric(body, "cj_unreadable_documents", document="state_metadata") == 1
        assert metric(body, "cj_unreadable_documents", document="completion_event") == 0
        # Every planted problem of every other batch is still exported.
        for batch, problems in seeded_db.planted.items():
            for problem in problems:
                assert metric(body, "cj_batch_problem", cj_batch_id=str(batch),
                              problem=problem) == 1, (batch, problem)
        assert metric(body, "cj_health_malformed_rows") == 1  # the infinite one
        # The backlog's age is the real one; the undated row is counted apart.
        assert (metric(body, "cj_outbox_oldest_unpublished_age_seconds") or 0) > 60
        assert metric(body, "cj_outbox_undated_unpublished_events") == 1
        # The log so far, then the poll count: every line read comes from a poll counted (the
        # process polls on while the test reads).
        log = exp.output()
        polls = int(metric(exp.metrics(), "cj_health_polls_total") or 0)
    assert "Traceback" not in exp.output()
    unreadable = [line for line in log.splitlines()
                  if "JSON documents PostgreSQL cannot read" in line
                  or "batches with unreadable JSON documents" in line]
    malformed = [line for line in log.splitlines()
                 if "malformed cj_batch_health row" in line]
    reminders = 1 + polls // 20
    # One warning naming the batches when they first appear, then a reminder every 20 polls.
    assert 2 <= len(unreadable) <= reminders, (polls, unreadable)  # >= 20 polls: a reminder
    assert f"batch {hostile}: essay_metadata 1" in unreadable[0]
    assert f"batch {surrogate}: state_metadata 1" in unreadable[0]
    assert 2 <= len(malformed) <= reminders, (polls, malformed)
    assert f"skipping malformed cj_batch_health row {infinite}" in malformed[0]
    print(f"\n{polls} polls: {len(unreadable)} unreadable-document warnings,"
          f" {len(malformed)} malformed-row warnings (before: one per poll each)")
