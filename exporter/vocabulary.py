"""The exporter's vocabulary, declared once: problem kinds, poll error reasons, remediation
actions and outcomes, and every metric family it exports (name, type, help, labels).

Everything else reads these declarations: the collector may only build families declared here
(`family()` raises for an unknown name, as postgres_exporter refuses a collector whose name is
not declared), `inspect` explains problems with `ProblemKind.explanation`, the alert generator
and the dashboards iterate `PROBLEM_KINDS`, the bench seed and the demo scenarios name problems
by their labels, and a test compares docs/metrics.md with these declarations and with a real
`/metrics`. No other module of the package is imported here, so anything may import it.
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
        "more resource-consumption events than finalized runs of the BOS batch",
        "critical", "CJDuplicateResourceConsumption"),
    ProblemKind(
        "inconsistent_state", "inconsistent_state",
        "state is final but the upload status is not",
        "warning", "CJBatchInconsistentState"),
    ProblemKind(
        "metadata_incomplete", "metadata_incomplete",
        "in flight without total_budget or request metadata",
        "warning", "CJBatchMetadataIncomplete"),
)
PROBLEMS: Mapping[str, ProblemKind] = {k.label: k for k in PROBLEM_KINDS}
# problem label -> boolean column of cj_batch_health
PROBLEM_COLUMNS: Mapping[str, str] = {k.label: k.column for k in PROBLEM_KINDS}


def problem_set(*labels: str) -> frozenset[str]:
    """A set of problem labels, checked: a misspelt label fails at import, not in a test."""
    for label in labels:
        if label not in PROBLEMS:
            raise KeyError(f"unknown problem kind {label!r}")
    return frozenset(labels)

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
        "Outbox events written for the batch: completed and result by CJ batch, resource by its"
        " BOS batch." + REFRESH, ("cj_batch_id", "bos_batch_id", "event")),
    MetricFamily(
        "cj_batch_completion_event_burst", GAUGE,
        "Most completion events of the batch within any 60 seconds." + REFRESH,
        ("cj_batch_id",)),
    MetricFamily(
        "cj_batch_problem", GAUGE, "1 for each problem the batch has right now." + REFRESH,
        ("cj_batch_id", "bos_batch_id", "problem")),
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
        "Outbox events beyond the first per watched batch (resource: beyond one per finalized"
        " run of the BOS batch)." + REFRESH, ("event",)),
    MetricFamily("cj_outbox_unpublished_events", GAUGE,
                 "Outbox rows not yet published." + REFRESH),
    MetricFamily("cj_outbox_oldest_unpublished_age_seconds", GAUGE,
                 "Age of the oldest unpublished outbox row, 0 when none." + REFRESH),
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


def family(name: str) -> MetricFamily:
    """The declaration of a metric family; KeyError for a name nobody declared."""
    return FAMILIES[name]


def exposed_name(f: MetricFamily) -> str:
    """The name in the exposition: counters gain `_total`."""
    return f"{f.name}_total" if f.type == COUNTER else f.name
