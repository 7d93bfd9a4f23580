"""Snapshot -> metric families -> the bytes of each format /metrics serves, at most once each.

A custom Collector over an immutable Snapshot, as the Prometheus "writing exporters" guide asks:
the families are built fresh from each snapshot, so a batch that leaves the exported set or
changes state simply has no series in the next render (no ghost series to clean up). Each
variant is rendered on demand (exporter.handoff.Rendered) from the same immutable snapshot,
self-stats and finalizer families, so every variant of one snapshot says the same thing.
"""

from __future__ import annotations

import inspect
import platform
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import Metric
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector

from exporter import version
from exporter.families import Family, new
from exporter.handoff import Rendered
from exporter.poll.snapshot import BatchRow, Snapshot
from exporter.vocabulary import (
    ACTIONS,
    OUTCOMES,
    POLL_ERROR_REASONS,
    PROBLEM_COLUMNS,
    UNREADABLE_DOCUMENT_COLUMNS,
)


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
    full_polls: int = 0
    last_full_poll: float | None = None
    unsignalled_bound: float | None = None


class SnapshotCollector(Collector):
    def __init__(self, snapshot: Snapshot | None, stats: SelfStats,
                 extra: Callable[[], Iterable[Metric]] = tuple) -> None:
        self._snapshot = None if stats.stale else snapshot
        self._stats = stats
        # Read now, not at the first scrape: the finalizer's counters of this page are those
        # of its publication, whichever variant is rendered later.
        self._extra = list(extra())

    def collect(self) -> Iterator[Metric]:
        # Built anew for each format rendered (the page does not keep ~10k samples alive for
        # the rare second format); from the same immutable inputs, so they say the same.
        if self._snapshot is not None:
            yield from batch_families(self._snapshot)
            yield from aggregate_families(self._snapshot)
        yield from self_families(self._snapshot, self._stats)
        yield from self._extra


def batch_families(snap: Snapshot) -> Iterator[Metric]:
    activity = new("cj_batch_last_activity_timestamp_seconds")
    comparisons = new("cj_batch_comparisons")
    progress = new("cj_batch_progress_ratio")
    projections = new("cj_batch_grade_projections")
    anchors = new("cj_batch_anchors")
    mismatches = new("cj_batch_anchor_mismatches")
    events = new("cj_batch_completion_events")
    burst = new("cj_batch_completion_event_burst")
    problem = new("cj_batch_problem")
    unreadable = new("cj_batch_unreadable_documents")
    overcharged = new("cj_batch_overcharged_quantity")
    tiers = new("cj_batch_anchor_grade_resolution")
    budget_progress = new("cj_batch_budget_progress_ratio")
    partial = new("cj_batch_partial_scoring")
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
                             ("resource", b.charge_events)):
            events.add_metric([bid, b.bos_batch_id, event], value)
        burst.add_metric([bid], b.completion_event_burst)
        for name in sorted(b.problems):
            problem.add_metric([bid, b.bos_batch_id, name], 1)
        unreadable.add_metric([bid], sum(b.unreadable.values()))
        overcharged.add_metric([bid, b.bos_batch_id], b.overcharged_quantity)
        for tier, count in b.anchor_tiers.items():
            tiers.add_metric([bid, tier], count)
        _budget(b, bid, budget_progress, partial)
    yield from (activity, comparisons, progress, projections, anchors, mismatches, events,
                burst, problem, unreadable, overcharged, tiers, budget_progress, partial)


def _budget(b: BatchRow, bid: str, progress: Family, partial: Family) -> None:
    """completed / total_budget and partial scoring by flag and by counters (NULL: no sample)."""
    if b.budget_progress is not None:
        progress.add_metric([bid], b.budget_progress)
    for source, reached in (("flag", b.partial_scoring_triggered),
                            ("counters", b.partial_scoring_threshold_reached)):
        if reached is not None:
            partial.add_metric([bid, source], int(reached))


def aggregate_families(snap: Snapshot) -> Iterator[Metric]:
    batches = new("cj_batches")
    for (state, status), count in sorted(snap.by_state.items()):
        batches.add_metric([state, status], count)
    problems = new("cj_batches_problem")
    for name in PROBLEM_COLUMNS:
        problems.add_metric([name], snap.problem_counts.get(name, 0))
    duplicates = new("cj_outbox_duplicate_events")
    for event in ("completed", "result", "resource"):
        duplicates.add_metric([event], snap.duplicate_events.get(event, 0))
    unreadable = new("cj_unreadable_documents")
    for document in UNREADABLE_DOCUMENT_COLUMNS:
        unreadable.add_metric([document], snap.unreadable_documents.get(document, 0))
    yield from (batches, problems, duplicates, unreadable)
    yield new("cj_overcharged_quantity", snap.overcharged_quantity)
    yield new("cj_outbox_unpublished_events", snap.outbox.unpublished_events)
    yield new("cj_outbox_oldest_unpublished_age_seconds",
              snap.outbox.oldest_unpublished_age_seconds)
    yield new("cj_outbox_undated_unpublished_events", snap.outbox.undated_unpublished_events)
    yield new("cj_outbox_failed_events", snap.outbox.failed_events)


def idle_remediation_families() -> Iterator[Metric]:
    """cj_health_remediations_total at 0 for every action and outcome while the finalizer is
    not running, so rules and panels over it see a series (and a later increase) instead of
    nothing; the finalizer's own collector replaces this when remediation is enabled."""
    family = new("cj_health_remediations")
    for action in ACTIONS:
        for outcome in OUTCOMES:
            family.add_metric([action, outcome], 0)
    yield family


def self_families(snap: Snapshot | None, stats: SelfStats) -> Iterator[Metric]:
    yield new("cj_health_up", int(stats.up))
    yield new("cj_health_snapshot_stale", int(stats.stale))
    if stats.last_success is not None:
        yield new("cj_health_last_success_timestamp_seconds", stats.last_success)
    if stats.last_duration is not None:
        yield new("cj_health_poll_duration_seconds", stats.last_duration)
    yield new("cj_health_polls", stats.polls)
    errors = new("cj_health_poll_errors")
    for reason in POLL_ERROR_REASONS:
        errors.add_metric([reason], stats.errors.get(reason, 0))
    yield errors
    yield new("cj_health_polls_skipped", stats.skipped)
    if snap is not None:
        yield new("cj_health_exported_batches", len(snap.batches))
        yield new("cj_health_batches_dropped", snap.dropped)
        yield new("cj_health_malformed_rows", snap.malformed_rows)
        yield new("cj_health_poll_batches_read", snap.batches_read)
    yield new("cj_health_full_polls", stats.full_polls)
    if stats.last_full_poll is not None:
        yield new("cj_health_last_full_poll_timestamp_seconds", stats.last_full_poll)
    if stats.unsignalled_bound is not None:
        yield new("cj_health_unsignalled_change_bound_seconds", stats.unsignalled_bound)
    yield new("cj_health_remediation_enabled", int(stats.remediation_enabled))
    info = new("cj_health_build_info")
    info.add_metric([version(), platform.python_version()], 1)
    yield info


# vocabulary.STANDARD_COLLECTORS, built once (they hold no state of ours) and rendered with
# every snapshot. Each registers itself in the registry it is given: a throwaway one, so that
# they stay out of prometheus_client's global registry.
STANDARD = (ProcessCollector(registry=CollectorRegistry()),
            PlatformCollector(registry=CollectorRegistry()),
            GCCollector(registry=CollectorRegistry()))


class _Sampled(Collector):
    """Metrics collected once, yielded again for every encoding of one render."""

    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self._metrics)


def render(collector: Collector, standard: bool = True) -> Rendered:
    """The collector's metrics in every format /metrics serves, each rendered when first asked
    for (exporter.handoff.Rendered); scrapes then only copy bytes.

    standard: add process_*, python_info and python_gc_* (vocabulary.STANDARD_FAMILIES),
    sampled once here: the text and OpenMetrics renderings must carry the same values.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    if standard:
        registry.register(_Sampled([m for c in STANDARD for m in c.collect()]))
    return Rendered(lambda: bytes(generate_latest(registry, **_FAST_TEXT)),
                    lambda: bytes(openmetrics.generate_latest(  # type: ignore[no-untyped-call]
                        registry, **_FAST_OPENMETRICS)))


def _no_name_escaping(render: Callable[..., Any]) -> dict[str, str]:
    """prometheus_client >= 0.22 escapes metric and label names by checking each character in
    Python, a third of a render at 10k series. Every declared name is a legacy Prometheus name,
    which no escaping mode changes, so the check is skipped (tests/unit/test_incremental_merge.py
    holds the output to the default's); older versions have no such parameter."""
    accepts = "escaping" in inspect.signature(render).parameters
    return {"escaping": openmetrics.ALLOWUTF8} if accepts else {}


_FAST_TEXT = _no_name_escaping(generate_latest)
_FAST_OPENMETRICS = _no_name_escaping(openmetrics.generate_latest)
