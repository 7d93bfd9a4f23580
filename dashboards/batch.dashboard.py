"""CJ batch drill-down: everything the exporter knows about one batch (uid cj-health-batch).

Open it with `?var-cj_batch_id=<cj_batch_uploads.id>` (the alert rules' dashboard links and the
overview's tables do). Generated into batch.json by `python dashboards/generate.py`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cjdash import (
    BATCH_UID,
    GREEN,
    ORANGE,
    RED,
    alert_annotation,
    alertlist,
    bargauge,
    batch_variable,
    datasource_variable,
    job_instance_variables,
    metric,
    pos,
    queries,
    stat,
    steps,
    table,
    timeseries,
)
from cjdash import dashboard as build_dashboard

BATCH = 'cj_batch_id="$cj_batch_id"'


def of_batch(name: str, *extra: str) -> str:
    """`name{job=~"$job", instance=~"$instance", cj_batch_id="$cj_batch_id", extra...}`."""
    return metric(name, BATCH, *extra)


LAST_ACTIVITY = of_batch("cj_batch_last_activity_timestamp_seconds")
RESULT_EVENTS = of_batch("cj_batch_completion_events", 'event="result"')
CHARGES = of_batch("cj_batch_completion_events", 'event="resource"')
AGE = f"time() - max by (job, cj_batch_id) ({LAST_ACTIVITY})"

panels = [
    table(
        "Batch",
        "The batch's ids, CJ state (cj_batch_states.state, NONE without a state row), upload "
        "status (cj_batch_uploads.status) and the time of its last activity. No row means the "
        "batch is not exported: terminal, healthy and finished more than recent_window ago.",
        queries(
            "max by (job, cj_batch_id, bos_batch_id, cj_state, upload_status) "
            f"({LAST_ACTIVITY}) * 1000",
            table=True,
        ),
        pos(0, 0, 12, 5),
        "dateTimeAsIso",
        columns=["cj_batch_id", "bos_batch_id", "cj_state", "upload_status", "job"],
        value_name="last activity",
        no_value="batch not exported",
    ),
    stat(
        "Time since last activity",
        "time() - cj_batch_last_activity_timestamp_seconds: how long the batch has been in its "
        "current state without progress. The stuck/wedged alerts fire on this age.",
        queries((AGE, "since last activity")),
        pos(12, 0, 4, 5),
        "s",
        thresholds=steps((GREEN, None), (ORANGE, 3600), (RED, 7200)),
    ),
    stat(
        "Progress",
        "(completed + failed comparisons) / total_budget (cj_batch_progress_ratio). Empty when "
        "the batch has no budget, which the monitor then reads as 0 % (metadata_incomplete).",
        queries((f"max by (job) ({of_batch('cj_batch_progress_ratio')})", "progress")),
        pos(16, 0, 4, 5),
        "percentunit",
        no_value="no budget",
    ),
    stat(
        "Grade projections",
        "Rows in grade_projections for the batch. 0 on a COMPLETE_* batch that has anchors of "
        "at least 2 grades is the missing_projections problem.",
        queries((f"max by (job) ({of_batch('cj_batch_grade_projections')})", "projections")),
        pos(20, 0, 4, 5),
        "short",
    ),
    stat(
        "Problems",
        "Each problem the batch has (cj_batch_problem), one red tile per problem: wedged, "
        "stuck_scoring, missing_projections, anchor_mismatch, duplicate_completion, "
        "duplicate_charge, inconsistent_state, metadata_incomplete, wrong_result, superseded, "
        "completion_without_result, unbilled, unpublishable_result, budget_source_flip, "
        "rehydration_mismatch, anchor_grade_unresolved. Empty is healthy. `cj-health-exporter "
        "inspect <cj_batch_id>` explains each one and names what differs.",
        queries((f"max by (job, problem) ({of_batch('cj_batch_problem')})", "{{problem}}")),
        pos(0, 5, 8, 8),
        "none",
        thresholds=steps((RED, None)),
        no_value="no problem",
        text_mode="name",
    ),
    alertlist(
        "Alerts for this batch",
        "Firing and pending CJ alerts whose labels carry this cj_batch_id: the page that led "
        "here, and any other alert about the same batch.",
        pos(8, 5, 8, 8),
        extra_filter=BATCH,
    ),
    stat(
        "Anchors",
        "Anchor essays counted three ways: by the is_anchor column, by processing_metadata's "
        "is_anchor flag, and by the ANCHOR_ id prefix; and the essays whose column disagrees "
        "with the metadata flag (anchor_mismatch: projections ignore those anchors).",
        queries(
            (f"max by (job, source) ({of_batch('cj_batch_anchors')})", "by {{source}}"),
            (f"max by (job) ({of_batch('cj_batch_anchor_mismatches')})", "flag mismatches"),
        ),
        pos(16, 5, 8, 8),
        "short",
    ),
    timeseries(
        "Comparisons",
        "The comparison counters of cj_batch_states by kind: budget (total_budget), total, "
        "submitted, completed, failed, and pending callbacks (submitted - completed - "
        "failed). Submitted > 0 with nothing pending while waiting for callbacks is wedged.",
        queries((f"max by (job, kind) ({of_batch('cj_batch_comparisons')})", "{{kind}}")),
        pos(0, 13, 12, 8),
        "short",
    ),
    timeseries(
        "Outbox events for this batch",
        "Outbox rows about the batch: completion and result events (more than 1 completion is "
        "a duplicate completion; a completion without a result is completion_without_result), "
        "resource-consumption events naming this run by data.processing_id (more than 1 is a "
        "duplicate charge), and the most completion events within any 60 s.",
        queries(
            (f"max by (job, event) ({of_batch('cj_batch_completion_events')})", "{{event}} events"),
            (
                f"max by (job) ({of_batch('cj_batch_completion_event_burst')})",
                "most completion events in 60 s",
            ),
        ),
        pos(12, 13, 12, 8),
        "short",
        thresholds=steps((GREEN, None), (RED, 2)),
    ),
    timeseries(
        "Time since last activity over time",
        "The batch's idle time at each moment: a sawtooth is a batch making progress, a "
        "straight rising line is a stuck one.",
        queries((AGE, "since last activity")),
        pos(0, 21, 12, 8),
        "s",
    ),
    timeseries(
        "State and status over time",
        "Which CJ state and upload status the batch was in, over time: each state/status pair "
        "is 1 while the batch is in it. A status that changes to COMPLETE_* while the state "
        "stays WAITING_CALLBACKS or SCORING is the wedge.",
        queries(
            (
                f"count by (job, cj_state, upload_status) ({LAST_ACTIVITY})",
                "{{cj_state}} / {{upload_status}}",
            )
        ),
        pos(12, 21, 12, 8),
        "none",
        draw="bars",
        fill=60,
    ),
    stat(
        "Result and charges",
        "What the run published and what it charged: its result events (the last one is what "
        "RAS shows: wrong_result when it is not what finalization would publish now), the "
        "resource-consumption events naming this run (0 once finalized is unbilled, more than "
        "1 a duplicate charge) and the quantity charged beyond the first charge, to refund by "
        "hand (`cj-health-exporter charges`).",
        queries(
            (f"max by (job) ({RESULT_EVENTS})", "result events"),
            (f"max by (job) ({CHARGES})", "charges"),
            (f"max by (job) ({of_batch('cj_batch_overcharged_quantity')})", "over-charged"),
        ),
        pos(0, 29, 8, 8),
        "short",
    ),
    bargauge(
        "Anchor grade resolution",
        "The batch's anchors (by column or metadata) by the tier of the grade projector's "
        "lookup that resolves their grade, in its order: anchor_grade, known_grade, the "
        "assignment's reference by text_storage_id, by anchor_ref_id; unresolved ones are "
        "skipped by the projector (anchor_grade_unresolved).",
        queries(
            (
                f"max by (job, tier) ({of_batch('cj_batch_anchor_grade_resolution')})",
                "{{tier}}",
            ),
            instant=True,
        ),
        pos(8, 29, 8, 8),
        "short",
        thresholds=steps((GREEN, None)),
    ),
    stat(
        "Budget and partial scoring",
        "completed / total_budget (cj_batch_budget_progress_ratio) and whether partial scoring "
        "is reached by the stored flag (partial_scoring_triggered) and by the counters "
        "(completed >= total_budget x completion_threshold_pct / 100). The flag is set on the "
        "callback path and triggers nothing: they may differ. A comparison_budget.source that "
        "broke its invariant is budget_source_flip; `inspect` shows the budget and its source.",
        queries(
            (f"max by (job) ({of_batch('cj_batch_budget_progress_ratio')})", "budget progress"),
            (
                f"max by (job, source) ({of_batch('cj_batch_partial_scoring')})",
                "partial scoring ({{source}})",
            ),
        ),
        pos(16, 29, 8, 8),
        "short",
    ),
    stat(
        "Unreadable documents",
        "JSON documents of the batch that PostgreSQL stores but cannot read (a \\u0000 or "
        "lone-surrogate escape, or nesting too deep; cj_batch_unreadable_documents). The facts "
        "they hold are unknown, so the problems above may be missing or wrong; "
        "`cj-health-exporter inspect <cj_batch_id>` names the kinds. Alert "
        "CJBatchDocumentsUnreadable.",
        queries((f"max by (job) ({of_batch('cj_batch_unreadable_documents')})", "unreadable")),
        pos(0, 37, 8, 5),
        "short",
        thresholds=steps((GREEN, None), (RED, 1)),
    ),
]

dashboard = build_dashboard(
    title="CJ batch health: batch drill-down",
    uid=BATCH_UID,
    description="One CJ batch as cj-health-exporter sees it: state, comparisons, anchors, "
    "projections, outbox events, problems and its alerts. Pick the batch with the CJ batch "
    "variable or open it from the overview or an alert.",
    panels=panels,
    variables=[datasource_variable(), *job_instance_variables(), batch_variable()],
    annotations=[alert_annotation(BATCH)],
    time_from="now-24h",
)
