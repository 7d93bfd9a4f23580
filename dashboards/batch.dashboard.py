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


def of_batch(name: str) -> str:
    """`name{job=~"$job", instance=~"$instance", cj_batch_id="$cj_batch_id"}`."""
    return metric(name, BATCH)


LAST_ACTIVITY = of_batch("cj_batch_last_activity_timestamp_seconds")
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
        "duplicate_charge, inconsistent_state, metadata_incomplete. Empty is healthy.",
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
        "Outbox rows about the batch: completion and result events (more than 1 is a duplicate "
        "completion), resource-consumption events of its BOS batch (more than the completed "
        "runs is a duplicate charge), and the most completion events within any 60 s.",
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
