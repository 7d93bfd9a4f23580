"""The exporter's vocabulary, declared once: problem kinds, poll error reasons, remediation
actions and outcomes, and every metric family it exports (name, type, help, labels).

Everything else reads these declarations: the collector may only build families declared here
(`family()` raises for an unknown name, as postgres_exporter refuses a collector whose name is
not declared), `inspect` explains problems with `ProblemKind.explanation`, the alert generator
and the dashboards iterate `PROBLEM_KINDS`, the standard process/platform/GC families of
prometheus_client are listed in `STANDARD_FAMILIES`, the bench seed and the demo scenarios name
problems by their labels, and a test compares docs/metrics.md with these declarations and with a
real `/metrics`. No other module of the package is imported here, so anything may import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# ---------------------------------------------------------------------------------------------
# Problem kinds: one boolean column of cj_batch_health each, exported as
# cj_batch_problem{problem=<label>} = 1 and counted in cj_batches_problem{problem=<label>}.


@dataclass(frozen=True)
class ProblemKind:
    label: str  # the `problem` label value
    column: str  # the boolean column of the cj_batch_health view
    explanation: str  # one line for `inspect`: what is wrong, and why it matters
    severity: str  # of the kind's alert: critical pages, warning is a ticket
    alert: str  # the alert that fires on it (alerts/ and docs/runbooks/<alert>.md)


PROBLEM_KINDS: tuple[ProblemKind, ...] = (
    ProblemKind(
        "wedged", "is_wedged",
        "upload says complete (or every callback is in) but the state machine never "
        "finished: nobody will finalize it",
        "critical", "CJBatchWedged"),
    ProblemKind(
        "stuck_scoring", "is_stuck_scoring",
        "finalization failed in SCORING; upstream never retries it",
        "critical", "CJBatchStuckScoring"),
    ProblemKind(
        "missing_projections", "missing_projections",
        "complete and projectable, yet no grade projections were written",
        "warning", "CJBatchCompletedWithoutProjections"),
    ProblemKind(
        "anchor_mismatch", "has_anchor_mismatch",
        "is_anchor column disagrees with processing_metadata.is_anchor",
        "warning", "CJAnchorFlagMismatch"),
    ProblemKind(
        "duplicate_completion", "has_duplicate_completion",
        "more than one completion event for this CJ run (a second result alone is a"
        " correction)",
        "warning", "CJDuplicateCompletionEvents"),
    ProblemKind(
        "duplicate_charge", "has_duplicate_charge",
        "more than one resource-consumption event names this run (data.processing_id): the "
        "customer was charged again for each; `charges` lists what to refund",
        "critical", "CJDuplicateResourceConsumption"),
    ProblemKind(
        "inconsistent_state", "inconsistent_state",
        "state is final but the upload status is not",
        "warning", "CJBatchInconsistentState"),
    ProblemKind(
        "metadata_incomplete", "metadata_incomplete",
        "in flight without total_budget (the monitor counts 0 %), or the state row cannot give "
        "a continuation the budget or overrides the upload's request asked for",
        "warning", "CJBatchMetadataIncomplete"),
    # Issue 11: what the upstream service's own batches showed the view had no signal for.
    ProblemKind(
        "wrong_result", "has_wrong_result",
        "the last result event is not what finalization would publish now (no assignment_id "
        "while the upload has one, every student \"U\" although the anchors are usable, or "
        "grades unlike the projections): RAS holds a wrong result",
        "critical", "CJPublishedResultWrong"),
    ProblemKind(
        "superseded", "is_superseded",
        "its essays now belong to a newer run of the same BOS batch (0 essays left): never "
        "rescore or republish it; its charges beyond one are refunded by hand",
        "warning", "CJBatchSuperseded"),
    ProblemKind(
        "completion_without_result", "has_completion_without_result",
        "a completion event was written but no result event: ELS and BOS consider CJ done "
        "while RAS never heard of the batch",
        "critical", "CJCompletionWithoutResult"),
    ProblemKind(
        "unbilled", "is_unbilled",
        "finalization began but no resource-consumption event names this run: nobody was "
        "charged (user_id NULL cannot be charged upstream)",
        "warning", "CJRunUnbilled"),
    ProblemKind(
        "unpublishable_result", "has_unpublishable_result",
        "grade projections the consumers' letter_grade pattern rejects (the ENG5 national "
        "scale's 1-9): no valid result event can be published for it",
        "warning", "CJResultUnpublishable"),
    # Issue 16: the invariants of the metadata-persistence work (never on pre-ADR-0020 batches).
    ProblemKind(
        "budget_source_flip", "has_budget_source_flip",
        "comparison_budget.source disagrees with the stored original_request, or a "
        "continuation changed the budget: the batch does not run with the budget it was given",
        "warning", "CJBudgetSourceFlipped"),
    ProblemKind(
        "rehydration_mismatch", "has_rehydration_mismatch",
        "the upload's and the state row's original_request disagree on identity, budget or "
        "override fields: continuations rehydrate a different request",
        "warning", "CJContinuationRequestMismatch"),
    ProblemKind(
        "anchor_grade_unresolved", "has_unresolved_anchors",
        "anchors whose grade no tier of the projector's lookup resolves: the projector skips "
        "them (all of them: no grades at all, the Batch 20 outcome)",
        "warning", "CJAnchorGradeUnresolved"),
)
PROBLEMS: Mapping[str, ProblemKind] = {k.label: k for k in PROBLEM_KINDS}
# problem label -> boolean column of cj_batch_health
PROBLEM_COLUMNS: Mapping[str, str] = {k.label: k.column for k in PROBLEM_KINDS}
# cj_batch_anchor_grade_resolution{tier}: the projector's lookup order, then the anchors no
# tier resolves (view columns anchors_by_<tier> and anchors_unresolved).
ANCHOR_GRADE_TIERS = ("anchor_grade", "known_grade", "text_storage_id", "anchor_ref_id")
UNRESOLVED = "unresolved"


def problem_set(*labels: str) -> frozenset[str]:
    """A set of problem labels, checked: a misspelt label fails at import, not in a test."""
    for label in labels:
        if label not in PROBLEMS:
            raise KeyError(f"unknown problem kind {label!r}")
    return frozenset(labels)

# ---------------------------------------------------------------------------------------------
# Unreadable documents: JSON documents PostgreSQL stores but cannot read with ->/->> (a \u0000
# or lone-surrogate escape anywhere, or nesting too deep; sql/views/cj_health_json.sql). The
# facts they hold are unknown; each kind is one integer column of cj_batch_health, summed per
# batch in cj_batch_unreadable_documents and counted by kind in
# cj_unreadable_documents{document=<label>} (inspect shows a batch's kinds).

UNREADABLE_DOCUMENT_COLUMNS: Mapping[str, str] = {
    "essay_metadata": "unreadable_essay_documents",  # cj_processed_essays.processing_metadata
    "state_metadata": "unreadable_state_documents",  # cj_batch_states.processing_metadata
    "completion_event": "unreadable_completion_events",  # event_outbox.event_data of its BOS id
    "upload_metadata": "unreadable_upload_documents",  # cj_batch_uploads.processing_metadata
    "result_event": "unreadable_result_events",  # its last result event's event_data
    "charge_event": "unreadable_charge_events",  # resource events of its BOS batch
}

# ---------------------------------------------------------------------------------------------
# Output formats of the `charges` report (here, not in exporter.commands.charges: the parser
# reads them, and building it must not import SQLAlchemy, see `healthcheck`).

CHARGES_FORMATS = ("table", "json", "csv")

# ---------------------------------------------------------------------------------------------
# Poll errors: cj_health_poll_errors_total{reason} (exporter.db.error_reason classifies them).

POLL_ERROR_REASONS = ("connection", "timeout", "query", "data")

# ---------------------------------------------------------------------------------------------
# Remediation: the finalizer's actions and their outcomes, cj_health_remediations_total{action,
# outcome}. Declared here, not in exporter.finalizer, so that the core can export the counter at
# 0 without importing the finalizer (and numpy, scipy, choix).

BACKFILL_ANCHORS = "backfill_anchors"
REFINALIZE = "refinalize"
ACTIONS = (BACKFILL_ANCHORS, REFINALIZE)  # the order a cycle runs them in for one batch

APPLIED = "applied"  # the database was changed (and the missing or corrected events written)
# The run's state closed in the CJ database with nothing published: a superseded run (its
# essays moved to a newer run of the BOS batch) or one whose events are out and still right.
CLOSED = "closed"
DRY_RUN = "dry_run"  # planned and printed, nothing changed
SKIPPED = "skipped"  # nothing to do: already finalized, locked by someone else, not wedged
# Refused on purpose (unusable anchors, an event its consumer's contract rejects, e.g. the ENG5
# national scale's grades): a person decides.
NEEDS_PERSON = "needs_person"
FAILED = "failed"  # an error rolled the action back; retried after the cooldown
OUTCOMES = (APPLIED, CLOSED, DRY_RUN, SKIPPED, NEEDS_PERSON, FAILED)

# Why the safety valves held a candidate action back: cj_health_remediation_blocked{reason}.
BLOCK_REASONS = ("paused", "too_many_wedged", "min_wedged_seconds", "max_attempts", "cooldown",
                 "cycle_limit")
# cj_health_remediation_cycles_total{result}
CYCLE_RESULTS = ("ok", "follower", "error")

# remediation.leader_election (exporter.finalizer.leader): auto picks the lock by what it is
# connected to; `transaction` always holds it in an open transaction; `none` elects no leader.
AUTO_ELECTION = "auto"
TRANSACTION_ELECTION = "transaction"
NO_ELECTION = "none"
LEADER_ELECTIONS = (AUTO_ELECTION, TRANSACTION_ELECTION, NO_ELECTION)
# How this replica's leadership is held: cj_health_remediation_leader_election{method}.
SESSION_LOCK = "session_lock"  # connected to PostgreSQL itself
TRANSACTION_LOCK = "transaction_lock"  # behind a pooler (PgBouncer), or asked for
LEADER_METHODS = (SESSION_LOCK, TRANSACTION_LOCK, NO_ELECTION)

# ---------------------------------------------------------------------------------------------
# Metric families. `labels` are in exposition order; counters are named without `_total`
# (prometheus_client adds it).

GAUGE = "gauge"
COUNTER = "counter"
# Per-batch and aggregate families hold what the last poll read (the Prometheus guidance for
# cached metrics: say so in the HELP text).
REFRESH = " Refreshed every poll interval."


@dataclass(frozen=True)
class MetricFamily:
    name: str
    type: str
    help: str
    labels: tuple[str, ...] = ()


_FAMILIES: tuple[MetricFamily, ...] = (
    # per batch
    MetricFamily(
        "cj_batch_last_activity_timestamp_seconds", GAUGE,
        "Unix time of the batch's last activity (cj_batch_states.last_activity_at)." + REFRESH,
        ("cj_batch_id", "bos_batch_id", "cj_state", "upload_status")),
    MetricFamily(
        "cj_batch_comparisons", GAUGE,
        "Comparisons of the batch by kind (budget = total_budget, pending = submitted - completed"
        " - failed)." + REFRESH, ("cj_batch_id", "kind")),
    MetricFamily(
        "cj_batch_progress_ratio", GAUGE,
        "(completed + failed) / total_budget; absent while the budget is NULL." + REFRESH,
        ("cj_batch_id",)),
    MetricFamily(
        "cj_batch_grade_projections", GAUGE,
        "Rows in grade_projections for the batch." + REFRESH, ("cj_batch_id",)),
    MetricFamily(
        "cj_batch_anchors", GAUGE,
        "Anchor essays by source: the is_anchor column, the metadata flag, the ANCHOR_ id."
        + REFRESH, ("cj_batch_id", "source")),
    MetricFamily(
        "cj_batch_anchor_mismatches", GAUGE,
        "Essays whose is_anchor column disagrees with processing_metadata.is_anchor." + REFRESH,
        ("cj_batch_id",)),
    MetricFamily(
        "cj_batch_completion_events", GAUGE,
        "Outbox events written for the batch: completed and result by CJ batch, resource by the"
        " run its data.processing_id names." + REFRESH, ("cj_batch_id", "bos_batch_id", "event")),
    MetricFamily(
        "cj_batch_overcharged_quantity", GAUGE,
        "Quantity the run's published resource-consumption events charged beyond its first"
        " charge: what to refund by hand (`cj-health-exporter charges`)." + REFRESH,
        ("cj_batch_id", "bos_batch_id")),
    MetricFamily(
        "cj_batch_anchor_grade_resolution", GAUGE,
        "Anchors of the batch by the tier of the projector's lookup that resolves their grade"
        " (anchor_grade, known_grade, text_storage_id, anchor_ref_id, or unresolved)."
        + REFRESH, ("cj_batch_id", "tier")),
    MetricFamily(
        "cj_batch_budget_progress_ratio", GAUGE,
        "completed / total_budget, as partial scoring counts it; absent while the budget is"
        " NULL." + REFRESH, ("cj_batch_id",)),
    MetricFamily(
        "cj_batch_partial_scoring", GAUGE,
        "1 when partial scoring is reached, by source: flag (partial_scoring_triggered) or"
        " counters (completed >= total_budget * completion_threshold_pct / 100)." + REFRESH,
        ("cj_batch_id", "source")),
    MetricFamily(
        "cj_batch_completion_event_burst", GAUGE,
        "Most completion events of the batch within any 60 seconds." + REFRESH,
        ("cj_batch_id",)),
    MetricFamily(
        "cj_batch_problem", GAUGE, "1 for each problem the batch has right now." + REFRESH,
        ("cj_batch_id", "bos_batch_id", "problem")),
    MetricFamily(
        "cj_batch_unreadable_documents", GAUGE,
        "JSON documents of the batch PostgreSQL cannot read (a \\u0000 or lone-surrogate escape,"
        " or nesting too deep): the facts they hold are unknown." + REFRESH, ("cj_batch_id",)),
    # aggregates
    MetricFamily(
        "cj_batches", GAUGE,
        "Watched batches (unfinished, or active within the lookback window) by state and status."
        + REFRESH, ("cj_state", "upload_status")),
    MetricFamily(
        "cj_batches_problem", GAUGE, "Watched batches having each problem." + REFRESH,
        ("problem",)),
    MetricFamily(
        "cj_outbox_duplicate_events", GAUGE,
        "Outbox events beyond the first per watched batch (resource: beyond one per run its"
        " data.processing_id names)." + REFRESH, ("event",)),
    MetricFamily(
        "cj_overcharged_quantity", GAUGE,
        "Quantity charged beyond one charge per run, summed over the watched batches." + REFRESH),
    MetricFamily(
        "cj_unreadable_documents", GAUGE,
        "JSON documents of watched batches PostgreSQL cannot read, by document." + REFRESH,
        ("document",)),
    MetricFamily("cj_outbox_unpublished_events", GAUGE,
                 "Outbox rows not yet published." + REFRESH),
    MetricFamily("cj_outbox_oldest_unpublished_age_seconds", GAUGE,
                 "Age of the oldest unpublished outbox row with a finite created_at, 0 when"
                 " none." + REFRESH),
    MetricFamily("cj_outbox_undated_unpublished_events", GAUGE,
                 "Unpublished outbox rows whose created_at is infinity or -infinity: in the"
                 " backlog, but without an age." + REFRESH),
    MetricFamily("cj_outbox_failed_events", GAUGE,
                 "Unpublished outbox rows past the relay's 5 retries: never delivered." + REFRESH),
    # the exporter itself
    MetricFamily("cj_health_up", GAUGE, "1 when the last poll of the database succeeded."),
    MetricFamily(
        "cj_health_snapshot_stale", GAUGE,
        "1 when per-batch series are withdrawn: no successful poll for stale_after intervals."),
    MetricFamily("cj_health_last_success_timestamp_seconds", GAUGE,
                 "Unix time of the last successful poll."),
    MetricFamily("cj_health_poll_duration_seconds", GAUGE, "Duration of the last poll attempt."),
    MetricFamily("cj_health_polls", COUNTER, "Poll attempts."),
    MetricFamily("cj_health_poll_errors", COUNTER, "Failed polls by reason.", ("reason",)),
    MetricFamily("cj_health_polls_skipped", COUNTER,
                 "Poll ticks skipped because the previous poll was still running."),
    MetricFamily("cj_health_exported_batches", GAUGE,
                 "Batches with per-batch series in this snapshot."),
    MetricFamily("cj_health_batches_dropped", GAUGE,
                 "Batches not exported because of the max_batches cap."),
    MetricFamily("cj_health_malformed_rows", GAUGE,
                 "View rows skipped in the last poll because they did not parse."),
    MetricFamily("cj_health_full_polls", COUNTER,
                 "Successful full polls: every watched batch read (the others read only the"
                 " batches whose rows changed)."),
    MetricFamily("cj_health_last_full_poll_timestamp_seconds", GAUGE,
                 "Unix time of the last successful full poll."),
    MetricFamily("cj_health_unsignalled_change_bound_seconds", GAUGE,
                 "Longest a change that moves no timestamp (an UPDATE by hand) can stay unseen:"
                 " until the next full poll."),
    MetricFamily("cj_health_poll_batches_read", GAUGE,
                 "Rows of cj_batch_health the last successful poll read (all watched batches in"
                 " a full poll, the changed and newly watched ones otherwise)."),
    MetricFamily("cj_health_remediation_enabled", GAUGE,
                 "1 when the finalizer is authorized to change the database."),
    MetricFamily("cj_health_build_info", GAUGE, "Build information; always 1.",
                 ("version", "python_version")),
    # the finalizer (cj_health_remediations_total is also exported, at 0, while it is off)
    MetricFamily(
        "cj_health_remediations", COUNTER,
        "Finalizer actions by outcome (applied, closed, dry_run, skipped, needs_person, failed);"
        " every one has a row in cj_health_remediations.", ("action", "outcome")),
    MetricFamily("cj_health_remediation_cycles", COUNTER,
                 "Remediation cycles by result (follower: another replica leads).",
                 ("result",)),
    MetricFamily("cj_health_remediation_blocked", GAUGE,
                 "Candidate actions the safety valves held back in the last cycle, by reason.",
                 ("reason",)),
    MetricFamily("cj_health_remediation_leader", GAUGE,
                 "1 when this replica holds the remediation leader lock (with"
                 " remediation.leader_election=none: every replica, always)."),
    MetricFamily("cj_health_remediation_leader_election", GAUGE,
                 "1 for how this replica's leader lock is held: session_lock (connected to"
                 " PostgreSQL itself), transaction_lock (in an open transaction: behind a pooler"
                 " such as PgBouncer), none (no election).", ("method",)),
    MetricFamily("cj_health_remediation_paused", GAUGE,
                 "1 when remediation is paused (remediation.paused or the"
                 " cj_health_remediation_pause row)."),
    MetricFamily("cj_health_remediation_dry_run", GAUGE,
                 "1 when the finalizer only plans (remediation.dry_run)."),
    MetricFamily("cj_health_remediation_wedged_batches", GAUGE,
                 "Batches wedged or stuck in SCORING seen by the last cycle."),
    MetricFamily("cj_health_remediation_last_cycle_timestamp_seconds", GAUGE,
                 "Unix time of the last remediation cycle."),
)
FAMILIES: Mapping[str, MetricFamily] = {f.name: f for f in _FAMILIES}

# prometheus_client's standard collectors, exported beside the families above as every Python
# exporter exports them (restarts: process_start_time_seconds; memory, CPU, file descriptors;
# the interpreter). Their names, types and help text are the client library's, not ours, so
# they are listed here rather than built through `families.new()`; a test holds this list to
# what the library renders, and docs/metrics.md lists them. Like everything on /metrics they
# are sampled when a poll renders (exporter.collector), not per scrape.
STANDARD_COLLECTORS = ("process", "platform", "gc")
STANDARD_FAMILIES: tuple[MetricFamily, ...] = (
    MetricFamily("process_virtual_memory_bytes", GAUGE, "Virtual memory size in bytes."),
    MetricFamily("process_resident_memory_bytes", GAUGE, "Resident memory size in bytes."),
    MetricFamily("process_start_time_seconds", GAUGE,
                 "Start time of the process since unix epoch in seconds."),
    MetricFamily("process_cpu_seconds", COUNTER, "Total user and system CPU time spent in"
                 " seconds."),
    MetricFamily("process_open_fds", GAUGE, "Number of open file descriptors."),
    MetricFamily("process_max_fds", GAUGE, "Maximum number of open file descriptors."),
    MetricFamily("python_info", GAUGE, "Python platform information",
                 ("implementation", "major", "minor", "patchlevel", "version")),
    MetricFamily("python_gc_objects_collected", COUNTER, "Objects collected during gc",
                 ("generation",)),
    MetricFamily("python_gc_objects_uncollectable", COUNTER,
                 "Uncollectable objects found during GC", ("generation",)),
    MetricFamily("python_gc_collections", COUNTER,
                 "Number of times this generation was collected", ("generation",)),
)
# Every family /metrics may carry: ours and the standard ones (tests compare expositions to it).
EXPORTED_FAMILIES: Mapping[str, MetricFamily] = {
    **FAMILIES, **{f.name: f for f in STANDARD_FAMILIES}}


def family(name: str) -> MetricFamily:
    """The declaration of a metric family; KeyError for a name nobody declared."""
    return FAMILIES[name]


def exposed_name(f: MetricFamily) -> str:
    """The name in the exposition: counters gain `_total`."""
    return f"{f.name}_total" if f.type == COUNTER else f.name
