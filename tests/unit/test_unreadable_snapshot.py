"""Unreadable JSON documents in the snapshot and on /metrics (no database: rows as the view
returns them). The view's side is tested in tests/db/test_hostile_documents.py."""

from __future__ import annotations

from exporter.collector import SelfStats, SnapshotCollector, render
from exporter.poll.snapshot import Snapshot, build_snapshot
from exporter.vocabulary import UNREADABLE_DOCUMENT_COLUMNS
from tests.support.exposition import parse
from tests.support.rows import EMPTY_OUTBOX, NOW, view_row

RECENT = 3600.0


def snapshot(*rows: dict[str, object], max_batches: int = 100) -> Snapshot:
    return build_snapshot(list(rows), EMPTY_OUTBOX, now=NOW, duration=0.1,
                          recent_window=RECENT, max_batches=max_batches)


def test_a_batch_with_unreadable_documents_is_exported_however_old_and_counted() -> None:
    snap = snapshot(
        view_row(1, idle=30 * 86400.0, unreadable_essay_documents=2,
                 unreadable_completion_events=1),  # finished long ago, healthy otherwise
        view_row(2, idle=30 * 86400.0),  # the same without: watched only
        view_row(3, unreadable_state_documents=1),
    )
    assert snap.malformed_rows == 0
    assert {b.cj_batch_id: dict(b.unreadable) for b in snap.batches} == {
        1: {"essay_metadata": 2, "completion_event": 1}, 3: {"state_metadata": 1}}
    assert dict(snap.unreadable_documents) == {
        **dict.fromkeys(UNREADABLE_DOCUMENT_COLUMNS, 0),
        "essay_metadata": 2, "state_metadata": 1, "completion_event": 1}
    stats = SelfStats(up=True, stale=False, last_success=NOW, last_duration=0.1, polls=1,
                      errors={}, skipped=0)
    metrics = parse(render(SnapshotCollector(snap, stats)).text)
    assert metrics.value("cj_batch_unreadable_documents", cj_batch_id="1") == 3
    assert metrics.value("cj_batch_unreadable_documents", cj_batch_id="3") == 1
    assert metrics.value("cj_batch_unreadable_documents", cj_batch_id="2") is None
    assert metrics.value("cj_unreadable_documents", document="essay_metadata") == 2
    assert metrics.value("cj_unreadable_documents", document="completion_event") == 1


def test_the_cap_keeps_problem_batches_before_unreadable_ones() -> None:
    snap = snapshot(view_row(1, unreadable_essay_documents=1),
                    view_row(2, problems=["wedged"]),
                    view_row(3, idle=10.0), max_batches=2)
    assert [b.cj_batch_id for b in snap.batches] == [2, 1]
    assert snap.dropped == 1
