"""Snapshot -> metric families, rendered once per poll into every format /metrics serves.

A custom Collector over an immutable Snapshot, as the Prometheus "writing exporters" guide asks:
the families are built fresh from each snapshot, so a batch that leaves the exported set or
changes state simply has no series in the next render (no ghost series to clean up).
"""

from __future__ import annotations

import gzip
import platform
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib import metadata

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector

from exporter.config import ACTIONS as REMEDIATION_ACTIONS
from exporter.health import PROBLEMS, Snapshot

REFRESH = " Refreshed every poll interval."
ERROR_REASONS = ("connection", "timeout", "query", "data")
# The finalizer's outcomes (exporter/finalizer/model.py), named here so the core can export the
# counter at 0 without importing the finalizer.
REMEDIATION_OUTCOMES = ("applied", "dry_run", "skipped", "needs_person", "failed")


@dataclass(frozen=True)
class SelfStats:
    """The poller's own counters at render time."""

    up: bool
    stale: bool
    last_success: float | None
    last_duration: float | None
    polls: int
    errors: dict[str, int]
    skipped: int
    remediation_enabled: bool = False


@dataclass(frozen=True)
class Rendered:
    text: bytes
    text_gzip: bytes
    openmetrics: bytes
    openmetrics_gzip: bytes


class SnapshotCollector(Collector):
    def __init__(self, snapshot: Snapshot | None, stats: SelfStats,
                 extra: Callable[[], Iterable[Metric]] = tuple) -> None:
        self._snapshot = None if stats.stale else snapshot
        self._stats = stats
        self._extra = extra

    def collect(self) -> Iterator[Metric]:
        if self._snapshot is not None:
            yield from batch_families(self._snapshot)
            yield from aggregate_families(self._snapshot)
        yield from self_families(self._snapshot, self._stats)
        yield from self._extra()


def batch_families(snap: Snapshot) -> Iterator[Metric]:
    activity = GaugeMetricFamily(
        "cj_batch_last_activity_timestamp_seconds",
        "Unix time of the batch's last activity (cj_batch_states.last_activity_at)." + REFRESH,
        labels=["cj_batch_id", "bos_batch_id", "cj_state", "upload_status"])
    comparisons = GaugeMetricFamily(
        "cj_batch_comparisons",
        "Comparisons of the batch by kind (budget = total_budget, pending = submitted - completed"
        " - failed)." + REFRESH, labels=["cj_batch_id", "kind"])
    progress = GaugeMetricFamily(
        "cj_batch_progress_ratio",
        "(completed + failed) / total_budget; absent while the budget is NULL." + REFRESH,
        labels=["cj_batch_id"])
    projections = GaugeMetricFamily(
        "cj_batch_grade_projections", "Rows in grade_projections for the batch." + REFRESH,
        labels=["cj_batch_id"])
    anchors = GaugeMetricFamily(
        "cj_batch_anchors",
        "Anchor essays by source: the is_anchor column, the metadata flag, the ANCHOR_ id."
        + REFRESH, labels=["cj_batch_id", "source"])
    mismatches = GaugeMetricFamily(
        "cj_batch_anchor_mismatches",
        "Essays whose is_anchor column disagrees with processing_metadata.is_anchor." + REFRESH,
        labels=["cj_batch_id"])
    events = GaugeMetricFamily(
        "cj_batch_completion_events",
        "Outbox events written for the batch: completed and result by CJ batch, resource by its"
        " BOS batch." + REFRESH, labels=["cj_batch_id", "bos_batch_id", "event"])
    burst = GaugeMetricFamily(
        "cj_batch_completion_event_burst",
        "Most completion events of the batch within any 60 seconds." + REFRESH,
        labels=["cj_batch_id"])
    problem = GaugeMetricFamily(
        "cj_batch_problem", "1 for each problem the batch has right now." + REFRESH,
        labels=["cj_batch_id", "bos_batch_id", "problem"])
    for b in snap.batches:
        bid = str(b.cj_batch_id)
        activity.add_metric([bid, b.bos_batch_id, b.cj_state, b.upload_status], b.last_activity)
        for kind, value in (("budget", b.total_budget), ("total", b.total_comparisons),
                            ("submitted", b.submitted_comparisons),
                            ("completed", b.completed_comparisons),
                            ("failed", b.failed_comparisons), ("pending", b.pending_callbacks)):
            if value is not None:  # NULL is unknown, never 0
                comparisons.add_metric([bid, kind], value)
        if b.progress_ratio is not None:
            progress.add_metric([bid], b.progress_ratio)
        projections.add_metric([bid], b.grade_projections)
        for source, value in (("column", b.anchors_flagged), ("metadata", b.anchors_in_metadata),
                              ("id", b.anchors_by_id)):
            anchors.add_metric([bid, source], value)
        mismatches.add_metric([bid], b.anchor_mismatches)
        for event, value in (("completed", b.completion_events), ("result", b.result_events),
                             ("resource", b.resource_events)):
            events.add_metric([bid, b.bos_batch_id, event], value)
        burst.add_metric([bid], b.completion_event_burst)
        for name in sorted(b.problems):
            problem.add_metric([bid, b.bos_batch_id, name], 1)
    yield from (activity, comparisons, progress, projections, anchors, mismatches, events,
                burst, problem)


def aggregate_families(snap: Snapshot) -> Iterator[Metric]:
    batches = GaugeMetricFamily(
        "cj_batches",
        "Watched batches (unfinished, or active within the lookback window) by state and status."
        + REFRESH, labels=["cj_state", "upload_status"])
    for (state, status), count in sorted(snap.by_state.items()):
        batches.add_metric([state, status], count)
    problems = GaugeMetricFamily(
        "cj_batches_problem", "Watched batches having each problem." + REFRESH,
        labels=["problem"])
    for name in PROBLEMS:
        problems.add_metric([name], snap.problem_counts.get(name, 0))
    duplicates = GaugeMetricFamily(
        "cj_outbox_duplicate_events",
        "Outbox events beyond the first per watched batch (resource: beyond one per finalized"
        " run of the BOS batch)." + REFRESH, labels=["event"])
    for event in ("completed", "result", "resource"):
        duplicates.add_metric([event], snap.duplicate_events.get(event, 0))
    yield from (batches, problems, duplicates)
    yield GaugeMetricFamily("cj_outbox_unpublished_events",
                            "Outbox rows not yet published." + REFRESH,
                            value=snap.outbox.unpublished_events)
    yield GaugeMetricFamily("cj_outbox_oldest_unpublished_age_seconds",
                            "Age of the oldest unpublished outbox row, 0 when none." + REFRESH,
                            value=snap.outbox.oldest_unpublished_age_seconds)
    yield GaugeMetricFamily("cj_outbox_failed_events",
                            "Unpublished outbox rows past the relay's 5 retries: never delivered."
                            + REFRESH, value=snap.outbox.failed_events)


def idle_remediation_families() -> Iterator[Metric]:
    """cj_health_remediations_total at 0 for every action and outcome while the finalizer is
    not running, so rules and panels over it see a series (and a later increase) instead of
    nothing; the finalizer's own collector replaces this when remediation is enabled."""
    family = CounterMetricFamily("cj_health_remediations", "Finalizer actions by outcome.",
                                 labels=["action", "outcome"])
    for action in REMEDIATION_ACTIONS:
        for outcome in REMEDIATION_OUTCOMES:
            family.add_metric([action, outcome], 0)
    yield family


def self_families(snap: Snapshot | None, stats: SelfStats) -> Iterator[Metric]:
    yield GaugeMetricFamily("cj_health_up", "1 when the last poll of the database succeeded.",
                            value=int(stats.up))
    yield GaugeMetricFamily(
        "cj_health_snapshot_stale",
        "1 when per-batch series are withdrawn: no successful poll for stale_after intervals.",
        value=int(stats.stale))
    if stats.last_success is not None:
        yield GaugeMetricFamily("cj_health_last_success_timestamp_seconds",
                                "Unix time of the last successful poll.",
                                value=stats.last_success)
    if stats.last_duration is not None:
        yield GaugeMetricFamily("cj_health_poll_duration_seconds",
                                "Duration of the last poll attempt.", value=stats.last_duration)
    yield CounterMetricFamily("cj_health_polls", "Poll attempts.", value=stats.polls)
    errors = CounterMetricFamily("cj_health_poll_errors", "Failed polls by reason.",
                                 labels=["reason"])
    for reason in ERROR_REASONS:
        errors.add_metric([reason], stats.errors.get(reason, 0))
    yield errors
    yield CounterMetricFamily("cj_health_polls_skipped",
                              "Poll ticks skipped because the previous poll was still running.",
                              value=stats.skipped)
    if snap is not None:
        yield GaugeMetricFamily("cj_health_exported_batches",
                                "Batches with per-batch series in this snapshot.",
                                value=len(snap.batches))
        yield GaugeMetricFamily("cj_health_batches_dropped",
                                "Batches not exported because of the max_batches cap.",
                                value=snap.dropped)
        yield GaugeMetricFamily("cj_health_malformed_rows",
                                "View rows skipped in the last poll because they did not parse.",
                                value=snap.malformed_rows)
    yield GaugeMetricFamily("cj_health_remediation_enabled",
                            "1 when the finalizer is authorized to change the database.",
                            value=int(stats.remediation_enabled))
    info = GaugeMetricFamily("cj_health_build_info", "Build information; always 1.",
                             labels=["version", "python_version"])
    info.add_metric([_version(), platform.python_version()], 1)
    yield info


def _version() -> str:
    try:
        return metadata.version("cj-health-exporter")
    except metadata.PackageNotFoundError:
        return "unknown"


def render(collector: Collector) -> Rendered:
    """Render both exposition formats and their gzip once; scrapes then only copy bytes."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    text = generate_latest(registry)
    om = openmetrics.generate_latest(registry)  # type: ignore[no-untyped-call]
    return Rendered(text, gzip.compress(text, 6), om, gzip.compress(om, 6))
