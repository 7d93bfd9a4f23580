"""CJ batch health: the overview an on-call engineer opens first (uid cj-health-overview).

Generated into overview.json by `python dashboards/generate.py` (or grafanalib's
`generate-dashboard -o dashboards/overview.json dashboards/overview.dashboard.py`).
Panel by panel, docs/dashboards.md says which question each one answers.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cjdash import (
    BAD_FROM_ONE,
    GREEN,
    ORANGE,
    OVERVIEW_UID,
    RED,
    alert_annotation,
    alertlist,
    bargauge,
    datasource_variable,
    drilldown_link,
    job_instance_variables,
    metric,
    pos,
    queries,
    rate_interval,
    stat,
    steps,
    table,
    timeseries,
    value_text,
)
from cjdash import (
    dashboard as build_dashboard,
)


def problem_count(problem: str) -> str:
    matcher = 'problem="' + problem + '"'
    return f"max by (job) ({metric('cj_batches_problem', matcher)})"


LAST_ACTIVITY = metric("cj_batch_last_activity_timestamp_seconds")
WEDGED = metric("cj_batch_problem", 'problem="wedged"')
BATCH_AGE = f"time() - max by (job, cj_batch_id) ({LAST_ACTIVITY})"

panels = [
    # --- what is on fire right now ----------------------------------------------------------
    stat(
        "Exporter up",
        "cj_health_up per exporter instance: UP when its last poll of the CJ database "
        "succeeded; DOWN when the poll failed or Prometheus cannot scrape the instance (up = "
        "0). DOWN means every other panel shows an ageing snapshot (or nothing, once the "
        "per-batch series are withdrawn); see the exporter health panels at the bottom.",
        queries(
            (
                f"max by (job, instance) ({metric('cj_health_up')})\n"
                "or on (job, instance)\n"
                f"max by (job, instance) ({metric('up')}) * 0",
                "{{instance}}",
            )
        ),
        pos(0, 0, 4, 4),
        "none",
        thresholds=steps((RED, None), (GREEN, 1)),
        mappings=value_text({"0": ("DOWN", RED), "1": ("UP", GREEN)}),
        no_value="no exporter",
    ),
    stat(
        "Wedged",
        "Batches whose upload status is COMPLETE_* while the state is still WAITING_CALLBACKS "
        "or SCORING, or that wait for callbacks with none pending (the sweep should have "
        "finalized them). They never finish on their own; alert CJBatchWedged.",
        queries(problem_count("wedged")),
        pos(4, 0, 4, 4),
        "short",
        thresholds=BAD_FROM_ONE,
    ),
    stat(
        "Stuck in SCORING",
        "Batches in state SCORING: a finalization that failed is never retried upstream, so "
        "these stay there until someone (or the finalizer) re-finalizes them; alert "
        "CJBatchStuckScoring.",
        queries(problem_count("stuck_scoring")),
        pos(8, 0, 4, 4),
        "short",
        thresholds=BAD_FROM_ONE,
    ),
    stat(
        "Unpublished outbox events",
        "event_outbox rows with published_at IS NULL: events the relay has not delivered to "
        "Kafka yet. A few are normal for seconds; a growing number means the relay is down "
        "or failing.",
        queries(f"max by (job) ({metric('cj_outbox_unpublished_events')})"),
        pos(12, 0, 4, 4),
        "short",
        thresholds=steps((GREEN, None), (ORANGE, 10), (RED, 100)),
    ),
    stat(
        "Oldest unpublished event",
        "Age of the oldest outbox row still unpublished (0 when the outbox is empty). Minutes "
        "here mean downstream services (results, entitlements) are not hearing about "
        "finished batches.",
        queries(f"max by (job) ({metric('cj_outbox_oldest_unpublished_age_seconds')})"),
        pos(16, 0, 4, 4),
        "s",
        thresholds=steps((GREEN, None), (ORANGE, 600), (RED, 1800)),
    ),
    stat(
        "Failed outbox events",
        "Unpublished outbox rows with retry_count >= 5: the relay gave up on them and they "
        "will never be delivered without a person; alert CJOutboxEventsFailed.",
        queries(f"max by (job) ({metric('cj_outbox_failed_events')})"),
        pos(20, 0, 4, 4),
        "short",
        thresholds=BAD_FROM_ONE,
    ),
    # --- alerts, problems, states -----------------------------------------------------------
    alertlist(
        "Active CJ alerts",
        "Firing and pending alerts of the CJ rule pack (alerts/cj-batch-health.rules.yml), as "
        "Prometheus evaluates them. Per-batch alerts carry cj_batch_id: open the batch "
        "drill-down from the alert's dashboard link or the tables below.",
        pos(0, 4, 8, 9),
    ),
    bargauge(
        "Problem batches by kind",
        "Watched batches having each problem (cj_batches_problem; a batch with two problems "
        "counts in both bars). Every kind is always listed, 0 included, so a missing bar "
        "means the exporter is not exporting.",
        queries(
            (f"max by (job, problem) ({metric('cj_batches_problem')})", "{{problem}}"), instant=True
        ),
        pos(8, 4, 8, 9),
        "short",
    ),
    timeseries(
        "Batches by state and status",
        "Watched batches (non-terminal or active within the lookback, default 7 days) by CJ "
        "state and upload status (cj_batches). A band that keeps growing in WAITING_CALLBACKS "
        "or SCORING is the first sign of a stuck pipeline.",
        queries(
            (
                f"max by (job, cj_state, upload_status) ({metric('cj_batches')})",
                "{{cj_state}} / {{upload_status}}",
            )
        ),
        pos(16, 4, 8, 9),
        "short",
        stacked=True,
    ),
    table(
        "Wedged batches",
        "One row per wedged batch with its ids, state, status and the time since its last "
        "activity (time() - cj_batch_last_activity_timestamp_seconds), oldest first. Click a "
        "cj_batch_id to open the batch drill-down. The runbook of CJBatchWedged says how to "
        "re-finalize.",
        queries(
            "time() - max by (job, cj_batch_id, bos_batch_id, cj_state, upload_status) "
            f"({LAST_ACTIVITY})\n"
            "and on (job, cj_batch_id)\n"
            f"max by (job, cj_batch_id) ({WEDGED})",
            table=True,
        ),
        pos(0, 13, 12, 9),
        "s",
        columns=["cj_batch_id", "bos_batch_id", "cj_state", "upload_status", "job"],
        value_name="state age",
        overrides=[drilldown_link()],
        no_value="no wedged batch",
    ),
    table(
        "Batches with problems",
        "Every exported batch with at least one problem, one row per problem (wedged, "
        "stuck_scoring, missing_projections, anchor_mismatch, duplicate_completion, "
        "duplicate_charge, inconsistent_state, metadata_incomplete, wrong_result, superseded, "
        "completion_without_result, unbilled, unpublishable_result, budget_source_flip, "
        "rehydration_mismatch, anchor_grade_unresolved), with the time since the batch's last "
        "activity. Click a cj_batch_id to open the batch drill-down.",
        queries(
            f"max by (job, cj_batch_id, bos_batch_id, problem) ({metric('cj_batch_problem')})\n"
            f"* on (job, cj_batch_id) group_left ()\n({BATCH_AGE})",
            table=True,
        ),
        pos(12, 13, 12, 9),
        "s",
        columns=["cj_batch_id", "bos_batch_id", "problem", "job"],
        value_name="since last activity",
        overrides=[drilldown_link()],
        no_value="no problem batch",
    ),
    # --- completion events and the outbox ---------------------------------------------------
    table(
        "Duplicate completion events",
        "Batches with more than one completion event (huleedu.cj_assessment.completed.v1) in "
        "the outbox: downstream services saw the batch finish more than once; alert "
        "CJDuplicateCompletionEvents. A second result event alone is a correction (it replaces "
        "a wrong result), not listed here.",
        queries(
            "max by (job, cj_batch_id, bos_batch_id, event) ("
            + metric("cj_batch_completion_events", 'event="completed"')
            + ") > 1",
            table=True,
        ),
        pos(0, 22, 8, 8),
        "short",
        columns=["cj_batch_id", "bos_batch_id", "event", "job"],
        value_name="events",
        overrides=[drilldown_link()],
        no_value="no duplicates",
    ),
    timeseries(
        "Duplicate outbox events",
        "Outbox events beyond the first per watched batch, by event (cj_outbox_duplicate_events;"
        " for resource: beyond one per run its data.processing_id names, i.e. a customer "
        "charged twice). Should be flat at 0.",
        queries((f"max by (job, event) ({metric('cj_outbox_duplicate_events')})", "{{event}}")),
        pos(8, 22, 8, 8),
        "short",
        thresholds=BAD_FROM_ONE,
    ),
    timeseries(
        "Completion event bursts",
        "Batches whose completion events came in a burst: the most completion events of the "
        "batch within any 60 s (cj_batch_completion_event_burst), shown when above 1. The "
        "runaway finalization loop wrote 83 in 6 s; alert CJCompletionEventRunaway.",
        queries(
            (
                f"max by (job, cj_batch_id) ({metric('cj_batch_completion_event_burst')}) > 1",
                "batch {{cj_batch_id}}",
            )
        ),
        pos(16, 22, 8, 8),
        "short",
        draw="points",
        thresholds=steps((GREEN, None), (ORANGE, 2), (RED, 4)),
    ),
    timeseries(
        "Outbox backlog",
        "Unpublished outbox rows, and among them the failed ones (retry_count >= 5, never "
        "delivered). A backlog that grows while failed stays flat means the relay is slow or "
        "down; failed rows need a person.",
        queries(
            (f"max by (job) ({metric('cj_outbox_unpublished_events')})", "unpublished"),
            (f"max by (job) ({metric('cj_outbox_failed_events')})", "failed (retry_count >= 5)"),
        ),
        pos(0, 30, 12, 8),
        "short",
    ),
    timeseries(
        "Oldest unpublished outbox event",
        "Age of the oldest unpublished outbox row (cj_outbox_oldest_unpublished_age_seconds). "
        "A sawtooth is healthy; a straight rising line means nothing is being published; "
        "alert CJOutboxBacklog.",
        queries(
            (
                f"max by (job) ({metric('cj_outbox_oldest_unpublished_age_seconds')})",
                "oldest unpublished",
            )
        ),
        pos(12, 30, 12, 8),
        "s",
        thresholds=steps((GREEN, None), (ORANGE, 600), (RED, 1800)),
    ),
    # --- the exporter itself ----------------------------------------------------------------
    stat(
        "Time since last successful poll",
        "time() - cj_health_last_success_timestamp_seconds per instance. Polls run every "
        "poll interval (15 s by default); after stale_after (3 intervals) without a good poll "
        "the per-batch series are withdrawn; alert CJHealthPollStale.",
        queries(
            (
                f"time() - max by (job, instance) "
                f"({metric('cj_health_last_success_timestamp_seconds')})",
                "{{instance}}",
            )
        ),
        pos(0, 38, 6, 4),
        "s",
        thresholds=steps((GREEN, None), (ORANGE, 45), (RED, 300)),
        no_value="never",
    ),
    stat(
        "Per-batch series",
        "cj_health_snapshot_stale per instance: WITHDRAWN when no poll succeeded for "
        "stale_after intervals and the per-batch series were dropped so that nothing stale is "
        "served as fresh. The batch panels above are then empty on purpose.",
        queries((f"max by (job, instance) ({metric('cj_health_snapshot_stale')})", "{{instance}}")),
        pos(6, 38, 6, 4),
        "none",
        thresholds=steps((GREEN, None), (RED, 1)),
        mappings=value_text({"0": ("fresh", GREEN), "1": ("WITHDRAWN", RED)}),
    ),
    stat(
        "Remediation",
        "cj_health_remediation_enabled per instance: enabled when the finalizer is authorized "
        "to act (remediation.enabled, a write DSN and an action list, not dry-run). Only the "
        "leader-elected replica acts.",
        queries(
            (f"max by (job, instance) ({metric('cj_health_remediation_enabled')})", "{{instance}}")
        ),
        pos(12, 38, 6, 4),
        "none",
        mappings=value_text({"0": ("off", "text"), "1": ("enabled", "blue")}),
    ),
    stat(
        "Exporter version",
        "cj_health_build_info: the exporter version each instance runs (the series value is "
        "always 1; the tile shows its version label).",
        queries(
            (
                f"max by (job, instance, version) ({metric('cj_health_build_info')})",
                "{{instance}}: {{version}}",
            )
        ),
        pos(18, 38, 6, 4),
        "none",
        text_mode="name",
    ),
    timeseries(
        "Poll duration",
        "Duration of each instance's last poll attempt (cj_health_poll_duration_seconds). A "
        "poll longer than the poll interval skips the next tick; a poll that hits the "
        "server-side statement_timeout fails with reason timeout.",
        queries(
            (
                f"max by (job, instance) ({metric('cj_health_poll_duration_seconds')})",
                "{{instance}}",
            )
        ),
        pos(0, 42, 8, 8),
        "s",
    ),
    timeseries(
        "Poll errors by reason",
        "Failed polls per $__rate_interval, by reason (connection, timeout, query, data), "
        "from increase(cj_health_poll_errors_total). Any bar means the snapshot is ageing.",
        queries(
            (
                f"sum by (job, instance, reason) "
                f"({rate_interval('increase', 'cj_health_poll_errors_total')})",
                "{{instance}} {{reason}}",
            )
        ),
        pos(8, 42, 8, 8),
        "short",
        draw="bars",
        fill=80,
    ),
    timeseries(
        "Skipped polls (overruns)",
        "Poll ticks skipped per $__rate_interval because the previous poll was still running "
        "(increase(cj_health_polls_skipped_total)). Steady skips mean the poll interval is "
        "shorter than the query needs.",
        queries(
            (
                f"sum by (job, instance) "
                f"({rate_interval('increase', 'cj_health_polls_skipped_total')})",
                "{{instance}}",
            )
        ),
        pos(16, 42, 8, 8),
        "short",
        draw="bars",
        fill=80,
    ),
    timeseries(
        "Exported and dropped batches",
        "Batches with per-batch series in the current snapshot (cj_health_exported_batches) "
        "and batches left out because they exceeded max_batches (cj_health_batches_dropped; "
        "problem batches are exported first). Dropped above 0 means tables here are partial.",
        queries(
            (
                f"max by (job, instance) ({metric('cj_health_exported_batches')})",
                "exported {{instance}}",
            ),
            (
                f"max by (job, instance) ({metric('cj_health_batches_dropped')})",
                "dropped {{instance}}",
            ),
        ),
        pos(0, 50, 12, 8),
        "short",
    ),
    timeseries(
        "Remediation actions",
        "Finalizer actions per $__rate_interval by action and outcome "
        "(increase(cj_health_remediations_total)): anchor backfills, re-finalizations, and "
        "skips or failures. Failures page as CJHealthRemediationFailing.",
        queries(
            (
                f"sum by (job, action, outcome) "
                f"({rate_interval('increase', 'cj_health_remediations_total')})",
                "{{action}} {{outcome}}",
            )
        ),
        pos(12, 50, 12, 8),
        "short",
        draw="bars",
        fill=80,
    ),
    # --- results and charges --------------------------------------------------------------
    stat(
        "Over-charged quantity",
        "Quantity charged beyond one charge per CJ run, summed over the watched batches "
        "(cj_overcharged_quantity): credits Entitlements took twice. It cannot refund; "
        "`cj-health-exporter charges` lists each run, user and event to refund by hand, "
        "history included; alert CJDuplicateResourceConsumption.",
        queries(f"max by (job) ({metric('cj_overcharged_quantity')})"),
        pos(0, 58, 8, 8),
        "short",
        thresholds=BAD_FROM_ONE,
    ),
    table(
        "Results and charges to check",
        "Batches whose published result is wrong, that completed without a result, whose "
        "result cannot be published, that were superseded by a newer run, or that were never "
        "charged (wrong_result, completion_without_result, unpublishable_result, superseded, "
        "unbilled), one row per problem. Click a cj_batch_id to open the batch drill-down.",
        queries(
            "max by (job, cj_batch_id, bos_batch_id, problem) ("
            + metric(
                "cj_batch_problem",
                'problem=~"wrong_result|completion_without_result|unpublishable_result|'
                'superseded|unbilled"',
            )
            + ")",
            table=True,
        ),
        pos(8, 58, 8, 8),
        "short",
        columns=["cj_batch_id", "bos_batch_id", "problem", "job"],
        value_name="problem",
        overrides=[drilldown_link()],
        no_value="none",
    ),
    table(
        "Metadata invariants broken",
        "Batches breaking an invariant of the metadata-persistence work (budget_source_flip, "
        "rehydration_mismatch, anchor_grade_unresolved), one row per problem; never a "
        "pre-ADR-0020 batch (NULL metadata). `inspect` names the fields or the tier.",
        queries(
            "max by (job, cj_batch_id, bos_batch_id, problem) ("
            + metric(
                "cj_batch_problem",
                'problem=~"budget_source_flip|rehydration_mismatch|anchor_grade_unresolved"',
            )
            + ")",
            table=True,
        ),
        pos(16, 58, 8, 8),
        "short",
        columns=["cj_batch_id", "bos_batch_id", "problem", "job"],
        value_name="problem",
        overrides=[drilldown_link()],
        no_value="none",
    ),
    # --- what the exporter cannot read ----------------------------------------------------
    bargauge(
        "Unreadable documents by kind",
        "JSON documents of the watched batches that PostgreSQL stores but cannot read (a "
        "\\u0000 or lone-surrogate escape, or nesting too deep), by document kind "
        "(cj_unreadable_documents, every kind always listed). Their facts are unknown: the "
        "batches they belong to may have problems nobody sees (which batches: the table "
        "beside). Alert CJBatchDocumentsUnreadable.",
        queries(
            (f"max by (job, document) ({metric('cj_unreadable_documents')})", "{{document}}"),
            instant=True,
        ),
        pos(0, 66, 12, 8),
        "short",
        thresholds=BAD_FROM_ONE,
    ),
    table(
        "Batches with unreadable documents",
        "Batches with at least one JSON document PostgreSQL cannot read "
        "(cj_batch_unreadable_documents > 0) and how many (alert CJBatchDocumentsUnreadable). "
        "`cj-health-exporter inspect <cj_batch_id>` names the kinds. Click a cj_batch_id to "
        "open the batch drill-down.",
        queries(
            f"max by (job, cj_batch_id) ({metric('cj_batch_unreadable_documents')}) > 0",
            table=True,
        ),
        pos(12, 66, 12, 8),
        "short",
        columns=["cj_batch_id", "job"],
        value_name="unreadable documents",
        overrides=[drilldown_link()],
        no_value="none",
    ),
]

dashboard = build_dashboard(
    title="CJ batch health: overview",
    uid=OVERVIEW_UID,
    description="Health of Comparative Judgement assessment batches from cj-health-exporter: "
    "stuck and wedged batches, duplicate completion events, the event outbox and the exporter "
    "itself. Open a batch from the tables for its drill-down.",
    panels=panels,
    variables=[datasource_variable(), *job_instance_variables()],
    annotations=[alert_annotation()],
)
