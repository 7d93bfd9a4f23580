"""exporter.collector: a Snapshot rendered into /metrics, without a database.

Every family rendered is one declared in exporter.vocabulary (name, type, help, labels); the
per-batch series follow the snapshot exactly (NULL is absent, never 0; a batch that left the
snapshot or changed state has no old series); a stale snapshot withdraws every per-batch and
aggregate series; the finalizer's counter is exported at 0 while it is off; build info says
what runs. The same rendering over a real database is in tests/db/test_metrics.py.
"""

from __future__ import annotations

import gzip
import platform
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from importlib import metadata

from prometheus_client.core import Metric
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from exporter import config
from exporter.collector import SelfStats, SnapshotCollector, idle_remediation_families, render
from exporter.config import Settings
from exporter.finalizer.leader import LeaderLock
from exporter.finalizer.metrics import RemediationMetrics
from exporter.handoff import Rendered
from exporter.poll.scheduler import Poller
from exporter.poll.snapshot import Snapshot, build_snapshot
from exporter.vocabulary import (
    ACTIONS,
    EXPORTED_FAMILIES,
    FAMILIES,
    OUTCOMES,
    POLL_ERROR_REASONS,
    PROBLEM_COLUMNS,
    exposed_name,
)
from tests.support.exposition import Exposition, parse
from tests.support.rows import NOW, in_flight_row, view_row

STATS = SelfStats(up=True, stale=False, last_success=NOW, last_duration=0.25, polls=4,
                  errors={"connection": 2}, skipped=1, full_polls=1, last_full_poll=NOW - 60,
                  unsignalled_bound=315.0)
OUTBOX = {"unpublished_events": 7, "failed_events": 3, "oldest_unpublished_age_seconds": 1500.0,
          "undated_unpublished_events": 1}
# Families that come from the poll's snapshot (withdrawn when it is stale or missing).
SNAPSHOT_FAMILIES = {name for name in FAMILIES if name.startswith(("cj_batch", "cj_outbox"))}
# ours and prometheus_client's process/platform/GC families, rendered with every snapshot
DECLARED = EXPORTED_FAMILIES


def a_snapshot(*rows: dict[str, object], max_batches: int = 100) -> Snapshot:
    return build_snapshot(list(rows), OUTBOX, now=NOW, duration=0.25, recent_window=3600,
                          max_batches=max_batches)


def demo_like(*extra: dict[str, object]) -> Snapshot:
    return a_snapshot(
        view_row(20, problems=["wedged", "anchor_mismatch", "missing_projections"],
                 cj_state="WAITING_CALLBACKS", idle=7200.0, grade_projections=0,
                 anchors_flagged=0, anchor_mismatches=5, completion_events=0, result_events=0,
                 resource_events=0, charge_events=0, completion_event_burst=0,
                 is_terminal=False),
        view_row(21, problems=["duplicate_completion", "duplicate_charge"],
                 completion_events=83, result_events=83, resource_events=83,
                 charge_events=83, overcharged_quantity=82 * 30.0, completion_event_burst=83),
        in_flight_row(22, total_budget=None, progress_ratio=None, budget_progress=None,
                      problems=["metadata_incomplete"]),
        view_row(23),
        *extra,
    )


# An essay document PostgreSQL cannot read: its facts are unknown, the batch is exported with
# cj_batch_unreadable_documents (rendered only above 0, so every family needs one).
UNREADABLE = in_flight_row(24, unreadable_essay_documents=1)


def rendered(snapshot: Snapshot | None, stats: SelfStats = STATS,
             extra: Callable[[], Iterable[Metric]] = tuple) -> Rendered:
    return render(SnapshotCollector(snapshot, stats, extra))


def exposition(snapshot: Snapshot | None, stats: SelfStats = STATS,
               extra: Callable[[], Iterable[Metric]] = tuple) -> Exposition:
    return parse(rendered(snapshot, stats, extra).text)


def finalizer_metrics() -> RemediationMetrics:
    """The finalizer's collector after one cycle (its last-cycle time exists from then on)."""
    metrics = RemediationMetrics(dry_run=True)
    metrics.cycle("ok", leader=True, blocked={}, paused=False, wedged=2)
    return metrics


def finalizer_families() -> Iterator[Metric]:
    """What a Remediator exports: its metrics, and its leader lock's (never connected here)."""
    yield from finalizer_metrics().collect()
    yield from LeaderLock(make_url("postgresql+psycopg://nobody@/nowhere"), 1).collect()


def assert_as_declared(metrics: Exposition) -> None:
    for name, family in metrics.families.items():
        declared = DECLARED[name]
        assert (family.type, family.documentation) == (declared.type, declared.help), name
        assert family.samples, name
        for sample in family.samples:
            assert sample.name == exposed_name(declared), sample
            assert set(sample.labels) == set(declared.labels), sample


def test_with_the_finalizer_every_declared_family_is_rendered_as_declared() -> None:
    metrics = exposition(demo_like(UNREADABLE), extra=finalizer_families)
    assert_as_declared(metrics)
    assert set(metrics.families) == set(DECLARED)


def test_without_it_the_core_renders_all_but_the_finalizers_own_families() -> None:
    metrics = exposition(demo_like(UNREADABLE), extra=idle_remediation_families)
    assert_as_declared(metrics)
    finalizer = {family.name for family in finalizer_families()}
    # the remediations counter is the one both export: at 0 while the finalizer is off
    assert finalizer & set(metrics.families) == {"cj_health_remediations"}
    assert set(metrics.families) | finalizer == set(DECLARED)


def test_per_batch_series_follow_the_snapshot() -> None:
    metrics = exposition(demo_like())
    assert metrics.series("cj_batch_last_activity_timestamp_seconds") == {
        frozenset({("cj_batch_id", "20"), ("bos_batch_id", "bos-20"),
                   ("cj_state", "WAITING_CALLBACKS"),
                   ("upload_status", "COMPLETE_STABLE")}): NOW - 7200.0,
        frozenset({("cj_batch_id", "21"), ("bos_batch_id", "bos-21"), ("cj_state", "COMPLETED"),
                   ("upload_status", "COMPLETE_STABLE")}): NOW - 60.0,
        frozenset({("cj_batch_id", "22"), ("bos_batch_id", "bos-22"),
                   ("cj_state", "WAITING_CALLBACKS"),
                   ("upload_status", "PERFORMING_COMPARISONS")}): NOW - 60.0,
        frozenset({("cj_batch_id", "23"), ("bos_batch_id", "bos-23"), ("cj_state", "COMPLETED"),
                   ("upload_status", "COMPLETE_STABLE")}): NOW - 60.0,
    }
    problems = {(s.labels["cj_batch_id"], s.labels["problem"]): s.value
                for s in metrics.samples("cj_batch_problem")}
    assert problems == {("20", "anchor_mismatch"): 1, ("20", "missing_projections"): 1,
                        ("20", "wedged"): 1, ("21", "duplicate_charge"): 1,
                        ("21", "duplicate_completion"): 1, ("22", "metadata_incomplete"): 1}
    assert metrics.value("cj_batch_anchors", cj_batch_id="20", source="column") == 0
    assert metrics.value("cj_batch_anchors", cj_batch_id="20", source="metadata") == 5
    assert metrics.value("cj_batch_anchors", cj_batch_id="20", source="id") == 5
    assert metrics.value("cj_batch_anchor_mismatches", cj_batch_id="20") == 5
    assert metrics.value("cj_batch_grade_projections", cj_batch_id="20") == 0
    for event in ("completed", "result", "resource"):
        assert metrics.value("cj_batch_completion_events", cj_batch_id="21", event=event,
                             bos_batch_id="bos-21") == 83
    assert metrics.value("cj_batch_completion_event_burst", cj_batch_id="21") == 83
    assert {s.labels["kind"]: s.value for s in metrics.samples(
        "cj_batch_comparisons", cj_batch_id="21")} == {
        "budget": 30, "total": 30, "submitted": 30, "completed": 28, "failed": 2, "pending": 0}
    assert metrics.value("cj_batch_progress_ratio", cj_batch_id="21") == 1.0


def test_null_is_absent_never_zero() -> None:
    metrics = exposition(demo_like())
    kinds = {s.labels["kind"] for s in metrics.samples("cj_batch_comparisons", cj_batch_id="22")}
    assert kinds == {"total", "submitted", "completed", "failed", "pending"}  # no budget
    assert not metrics.samples("cj_batch_progress_ratio", cj_batch_id="22")


def test_aggregates_and_outbox() -> None:
    metrics = exposition(demo_like())
    assert {(s.labels["cj_state"], s.labels["upload_status"]): s.value
            for s in metrics.samples("cj_batches")} == {
        ("COMPLETED", "COMPLETE_STABLE"): 2, ("WAITING_CALLBACKS", "COMPLETE_STABLE"): 1,
        ("WAITING_CALLBACKS", "PERFORMING_COMPARISONS"): 1}
    assert {s.labels["problem"]: s.value for s in metrics.samples("cj_batches_problem")} == {
        **dict.fromkeys(PROBLEM_COLUMNS, 0.0), "wedged": 1, "anchor_mismatch": 1,
        "missing_projections": 1, "duplicate_completion": 1, "duplicate_charge": 1,
        "metadata_incomplete": 1}
    assert {s.labels["event"]: s.value for s in metrics.samples("cj_outbox_duplicate_events")} \
        == {"completed": 82, "result": 82, "resource": 82}
    assert metrics.value("cj_outbox_unpublished_events") == 7
    assert metrics.value("cj_outbox_failed_events") == 3
    assert metrics.value("cj_outbox_oldest_unpublished_age_seconds") == 1500


def test_a_batch_that_changed_state_or_left_has_no_old_series() -> None:
    before = exposition(a_snapshot(in_flight_row(1), view_row(2)))
    assert {s.labels["cj_state"] for s in before.samples(
        "cj_batch_last_activity_timestamp_seconds", cj_batch_id="1")} == {"WAITING_CALLBACKS"}
    after = exposition(a_snapshot(view_row(1, cj_state="COMPLETED")))
    activity = after.samples("cj_batch_last_activity_timestamp_seconds")
    assert [(s.labels["cj_batch_id"], s.labels["cj_state"]) for s in activity] == [
        ("1", "COMPLETED")]
    assert not [s for family in after.families.values() for s in family.samples
                if s.labels.get("cj_batch_id") == "2"]


def test_a_stale_snapshot_withdraws_per_batch_and_aggregate_series() -> None:
    stale = replace(STATS, up=False, stale=True)
    metrics = exposition(demo_like(), stale)
    assert not SNAPSHOT_FAMILIES & set(metrics.families)
    assert metrics.value("cj_health_snapshot_stale") == 1
    assert metrics.value("cj_health_up") == 0
    # what the exporter says about itself stays, including when it last succeeded
    assert metrics.value("cj_health_last_success_timestamp_seconds") == NOW
    for name in ("cj_health_exported_batches", "cj_health_batches_dropped",
                 "cj_health_malformed_rows"):
        assert name not in metrics.families, name
    fresh = exposition(demo_like())
    assert set(fresh.families) >= SNAPSHOT_FAMILIES
    assert fresh.value("cj_health_snapshot_stale") == 0


def test_before_the_first_successful_poll_only_self_metrics() -> None:
    never = SelfStats(up=False, stale=False, last_success=None, last_duration=None, polls=1,
                      errors={"connection": 1}, skipped=0)
    metrics = exposition(None, never)
    assert not SNAPSHOT_FAMILIES & set(metrics.families)
    assert "cj_health_last_success_timestamp_seconds" not in metrics.families
    assert "cj_health_poll_duration_seconds" not in metrics.families
    assert metrics.value("cj_health_up") == 0
    assert metrics.value("cj_health_poll_errors_total", reason="connection") == 1


def test_self_metrics() -> None:
    snap = a_snapshot(view_row(1), view_row(2), view_row(3, last_activity_at=float("inf")),
                      in_flight_row(4), max_batches=2)
    metrics = exposition(snap, replace(STATS, remediation_enabled=True))
    assert metrics.value("cj_health_up") == 1
    assert metrics.value("cj_health_polls_total") == 4
    assert metrics.value("cj_health_polls_skipped_total") == 1
    assert metrics.value("cj_health_poll_duration_seconds") == 0.25
    assert {s.labels["reason"]: s.value for s in metrics.samples(
        "cj_health_poll_errors_total")} == {**dict.fromkeys(POLL_ERROR_REASONS, 0),
                                            "connection": 2}
    assert metrics.value("cj_health_exported_batches") == 2
    assert metrics.value("cj_health_batches_dropped") == 1
    assert metrics.value("cj_health_malformed_rows") == 1
    assert metrics.value("cj_health_remediation_enabled") == 1


def test_the_idle_remediation_counter_is_zero_for_every_action_and_outcome() -> None:
    metrics = exposition(demo_like(UNREADABLE), extra=idle_remediation_families)
    assert metrics.families["cj_health_remediations"].type == "counter"
    assert metrics.series("cj_health_remediations_total") == {
        frozenset({("action", a), ("outcome", o)}): 0.0 for a in ACTIONS for o in OUTCOMES}
    assert "cj_health_remediations" not in exposition(demo_like()).families


def test_build_info_names_the_version_and_python() -> None:
    (info,) = exposition(demo_like()).samples("cj_health_build_info")
    assert info.value == 1
    assert info.labels == {"version": metadata.version("cj-health-exporter"),
                           "python_version": platform.python_version()}


def test_every_encoding_holds_the_same_exposition() -> None:
    out = rendered(demo_like(), extra=idle_remediation_families)
    assert gzip.decompress(out.text_gzip) == out.text
    assert gzip.decompress(out.openmetrics_gzip) == out.openmetrics
    assert out.openmetrics.endswith(b"# EOF\n")
    text, om = parse(out.text), parse(out.openmetrics, openmetrics=True)
    assert set(text.families) == set(om.families)
    for name, family in text.families.items():
        assert {(s.name, frozenset(s.labels.items()), s.value) for s in family.samples} == {
            (s.name, frozenset(s.labels.items()), s.value)
            for s in om.families[name].samples}, name


def test_the_poller_withdraws_series_once_its_snapshot_is_older_than_stale_after() -> None:
    """Poller.is_stale: stale_after poll intervals without a successful poll, by the monotonic
    clock: the snapshot's wall-clock time says nothing (a step of the host's clock would hide
    staleness, or invent it). No poll is run: the engine points nowhere and is never used."""
    settings = Settings(dsn="postgresql://u@127.0.0.1:1/x", poll_interval_seconds=10,
                        stale_after=3)
    poller = Poller(settings, create_engine(config.parse_dsn(settings.dsn or "")))
    rows = [view_row(1, problems=["wedged"], is_terminal=False)]
    for age, stale, wall_step in ((0.0, False, 0.0), (25.0, False, 0.0), (35.0, True, 0.0),
                                  (0.0, False, 86400.0), (35.0, True, -3600.0)):
        taken = time.time() - age + wall_step
        poller.snapshot = build_snapshot(rows, OUTBOX, now=taken, duration=0.1,
                                         recent_window=3600 + abs(wall_step), max_batches=10)
        poller.last_good_at = time.monotonic() - age
        poller.publish()
        page = poller.store.page
        metrics = parse(page.metrics.text)
        assert page.status["stale"] is stale, age
        assert metrics.value("cj_health_snapshot_stale") == int(stale)
        assert bool(metrics.samples("cj_batch_problem")) is not stale, age
        assert metrics.value("cj_health_last_success_timestamp_seconds") == taken
    poller.engine.dispose()
