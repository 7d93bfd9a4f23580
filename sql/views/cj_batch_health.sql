-- cj_batch_health: one row per CJ batch (cj_batch_uploads.id) with every fact the on-call needs.
--
-- Runs unchanged on a database made by the CJ service's Alembic migrations and on the ORM
-- create_all variant: it only reads the CJ tables and never depends on enum label order
-- (states and statuses are compared as text, so a label added upstream cannot break it).
--
-- Shape: the per-batch facts come from LATERAL subqueries keyed by the batch id, so a filter on
-- the batch columns (id, state, status, activity) is applied before them and the cost grows
-- with the batches selected, not with history. The exporter's poll selects the watched batches
-- by id (see exporter/health.py); `SELECT * FROM cj_batch_health` reads everything.
--
-- Times: cj_batch_uploads.* and cj_processed_essays.* are naive timestamps holding UTC
-- (cj_schema.md §1): they are converted with AT TIME ZONE 'UTC' before any arithmetic, and
-- every time column of this view is timestamptz.
--
-- Documents are `json`, not `jsonb`: only ->, ->> and json_typeof are used, which return NULL
-- (never an error) on a document of an unexpected shape.

CREATE OR REPLACE VIEW cj_batch_health AS
SELECT
    b.cj_batch_id,
    b.bos_batch_id,
    b.assignment_id,
    b.created_at,
    b.completed_at,
    b.upload_status,
    b.cj_state,
    b.total_budget,
    b.total_comparisons,
    b.submitted_comparisons,
    b.completed_comparisons,
    b.failed_comparisons,
    b.pending_callbacks,
    b.progress_ratio,
    b.pairs_with_winner,
    b.student_essays,
    b.anchors_flagged,
    b.anchors_in_metadata,
    b.anchors_by_id,
    b.anchor_mismatches,
    b.anchor_grades,
    b.grade_projections,
    b.projectable,
    b.completion_events,
    b.result_events,
    b.resource_events,
    b.first_completion_event_at,
    b.last_completion_event_at,
    b.completion_event_burst,
    b.last_activity_at,
    b.state_age_seconds,
    b.is_terminal,
    -- Batch 20: the upload says COMPLETE_* but the state machine never left WAITING_CALLBACKS /
    -- SCORING; or every callback is in and the completion sweep should already have finalized.
    COALESCE(
        (b.status_complete AND b.cj_state IN ('WAITING_CALLBACKS', 'SCORING'))
        OR (b.cj_state = 'WAITING_CALLBACKS'
            AND b.submitted_comparisons > 0 AND b.pending_callbacks <= 0),
        false
    ) AS is_wedged,
    -- Upstream never retries a failed finalization: a batch in SCORING stays there.
    COALESCE(b.cj_state = 'SCORING', false) AS is_stuck_scoring,
    (b.status_complete AND b.projectable AND b.grade_projections = 0) AS missing_projections,
    (b.anchor_mismatches > 0) AS has_anchor_mismatch,
    -- R2 of docs/finalizer.md: one completion per run. A second result event alone is not a
    -- duplicate completion: it is how a result is corrected (the finalizer's Batch 20 heal).
    (b.completion_events > 1) AS has_duplicate_completion,
    -- Entitlements charge once per resource-consumption event: more events for the BOS batch
    -- than runs of it that reached finalization means a customer was charged twice.
    (b.resource_events > b.finalized_runs) AS has_duplicate_charge,
    -- The monitor's < 80 % path sets FAILED but leaves the upload status non-terminal.
    COALESCE(b.cj_state IN ('FAILED', 'COMPLETED') AND NOT b.status_terminal, false)
        AS inconsistent_state,
    -- In flight without a budget or the request documents: the monitor sees 0 % progress and
    -- continuations cannot rehydrate. Finished batches are never flagged (the single-essay path
    -- legitimately never sets a budget).
    COALESCE(
        b.cj_state = 'WAITING_CALLBACKS'
        AND (b.total_budget IS NULL OR NOT b.has_original_request OR NOT b.has_comparison_budget),
        false
    ) AS metadata_incomplete
FROM (
    SELECT
        u.id AS cj_batch_id,
        u.bos_batch_id,
        u.assignment_id,
        u.created_at AT TIME ZONE 'UTC' AS created_at,
        u.completed_at AT TIME ZONE 'UTC' AS completed_at,
        u.status::text AS upload_status,
        s.state::text AS cj_state,
        s.total_budget,
        s.total_comparisons,
        s.submitted_comparisons,
        s.completed_comparisons,
        s.failed_comparisons,
        -- bigint: corrupt counters near 2^31 must not overflow and fail the whole query.
        s.submitted_comparisons::bigint - s.completed_comparisons - s.failed_comparisons
            AS pending_callbacks,
        CASE WHEN s.total_budget > 0 THEN
            (s.completed_comparisons::bigint + s.failed_comparisons)::double precision
                / s.total_budget
        END AS progress_ratio,
        pr.pairs_with_winner,
        es.student_essays,
        es.anchors_flagged,
        es.anchors_in_metadata,
        es.anchors_by_id,
        es.anchor_mismatches,
        es.anchor_grades,
        gp.grade_projections,
        -- The projector needs >= 1 anchor, >= 2 distinct anchor grades and a student. Anchors
        -- are counted as the metadata says (canonical), so a batch whose column lost the flag
        -- (Batch 20) still counts as projectable and its missing projections are flagged.
        (es.anchors_effective >= 1 AND es.anchor_grades >= 2 AND es.student_essays >= 1)
            AS projectable,
        ce.completion_events,
        re.result_events,
        rc.resource_events,
        rc.finalized_runs,
        ce.first_completion_event_at,
        ce.last_completion_event_at,
        ce.completion_event_burst,
        la.last_activity_at,
        -- 'infinity' is a valid timestamptz that cannot be subtracted: NULL age, not an error.
        CASE WHEN isfinite(la.last_activity_at) THEN
            extract(epoch FROM now() - la.last_activity_at)::double precision
        END AS state_age_seconds,
        (u.status::text LIKE 'COMPLETE%') AS status_complete,
        (u.status::text LIKE 'COMPLETE%' OR u.status::text LIKE 'ERROR%') AS status_terminal,
        COALESCE(
            s.state::text IN ('COMPLETED', 'FAILED', 'CANCELLED')
            AND (u.status::text LIKE 'COMPLETE%' OR u.status::text LIKE 'ERROR%'),
            false
        ) AS is_terminal,
        (json_typeof(s.processing_metadata -> 'original_request') IS NOT DISTINCT FROM 'object')
            AS has_original_request,
        (json_typeof(s.processing_metadata -> 'comparison_budget') IS NOT DISTINCT FROM 'object')
            AS has_comparison_budget
    FROM cj_batch_uploads AS u
    LEFT JOIN cj_batch_states AS s ON s.batch_id = u.id
    CROSS JOIN LATERAL (
        -- A batch always has a state row once created; before that, fall back to the upload.
        SELECT COALESCE(s.last_activity_at, u.updated_at AT TIME ZONE 'UTC') AS last_activity_at
    ) AS la
    CROSS JOIN LATERAL (
        SELECT count(*) AS pairs_with_winner
        FROM cj_comparison_pairs AS p
        WHERE p.cj_batch_id = u.id AND p.winner IN ('essay_a', 'essay_b')
    ) AS pr
    CROSS JOIN LATERAL (
        SELECT
            count(*) FILTER (WHERE NOT e.anchor) AS student_essays,
            count(*) FILTER (WHERE e.is_anchor) AS anchors_flagged,
            count(*) FILTER (WHERE e.meta_anchor) AS anchors_in_metadata,
            count(*) FILTER (WHERE e.els_essay_id LIKE 'ANCHOR\_%') AS anchors_by_id,
            count(*) FILTER (WHERE e.meta_anchor IS NOT NULL AND e.meta_anchor <> e.is_anchor)
                AS anchor_mismatches,
            count(*) FILTER (WHERE e.anchor) AS anchors_effective,
            count(DISTINCT e.grade) FILTER (WHERE e.anchor) AS anchor_grades
        FROM (
            SELECT
                e0.els_essay_id,
                e0.is_anchor,
                e0.meta_anchor,
                COALESCE(e0.meta_anchor, e0.is_anchor) AS anchor,
                -- The projector's lookup order: anchor_grade, known_grade, then the reference.
                -- Only anchors' grades are counted, so students skip the lookup.
                CASE WHEN COALESCE(e0.meta_anchor, e0.is_anchor) THEN COALESCE(
                    e0.doc ->> 'anchor_grade',
                    e0.doc ->> 'known_grade',
                    (
                        SELECT r.grade FROM anchor_essay_references AS r
                        WHERE r.id = CASE
                            WHEN e0.doc ->> 'anchor_ref_id' ~ '^[0-9]{1,9}$'
                            THEN (e0.doc ->> 'anchor_ref_id')::integer
                        END
                    )
                ) END AS grade
            FROM (
                SELECT
                    pe.els_essay_id,
                    pe.is_anchor,
                    pe.processing_metadata AS doc,
                    -- Only a real boolean (or its text spelling) counts; anything else is
                    -- "no key".
                    CASE lower(pe.processing_metadata ->> 'is_anchor')
                        WHEN 'true' THEN true
                        WHEN 'false' THEN false
                    END AS meta_anchor
                FROM cj_processed_essays AS pe
                WHERE pe.cj_batch_id = u.id
                -- A fence: without it the planner inlines meta_anchor into every aggregate
                -- above, re-parsing each essay's json document about ten times (EXPLAIN
                -- VERBOSE; 80 % of the poll at 100,000 batches, docs/performance.md).
                OFFSET 0
            ) AS e0
        ) AS e
    ) AS es
    CROSS JOIN LATERAL (
        SELECT count(*) AS grade_projections
        FROM grade_projections AS g
        WHERE g.cj_batch_id = u.id
    ) AS gp
    CROSS JOIN LATERAL (
        -- Keyed by the CJ batch, never by bos_batch_id alone: re-runs reuse the BOS id.
        SELECT
            count(*) AS completion_events,
            min(w.created_at) AS first_completion_event_at,
            max(w.created_at) AS last_completion_event_at,
            COALESCE(max(w.in_next_minute), 0) AS completion_event_burst
        FROM (
            SELECT
                o.created_at,
                count(*) OVER (
                    ORDER BY o.created_at
                    RANGE BETWEEN CURRENT ROW AND INTERVAL '60 seconds' FOLLOWING
                ) AS in_next_minute
            FROM event_outbox AS o
            WHERE o.event_type = 'huleedu.cj_assessment.completed.v1'
              AND (o.event_data -> 'data' ->> 'cj_assessment_job_id') = u.id::text
        ) AS w
    ) AS ce
    CROSS JOIN LATERAL (
        SELECT count(*) AS result_events
        FROM event_outbox AS o
        WHERE o.event_type = 'assessment.result.published' AND o.aggregate_id = u.id::text
    ) AS re
    CROSS JOIN LATERAL (
        SELECT
            (
                SELECT count(*) FROM event_outbox AS o
                WHERE o.event_type = 'huleedu.resource.consumption.v1'
                  AND o.aggregate_id = u.bos_batch_id
            ) AS resource_events,
            -- Runs of this BOS batch that reached finalization (and so may charge once each).
            (
                SELECT count(*) FROM cj_batch_uploads AS u2
                LEFT JOIN cj_batch_states AS s2 ON s2.batch_id = u2.id
                WHERE u2.bos_batch_id = u.bos_batch_id
                  AND (u2.status::text LIKE 'COMPLETE%'
                       OR s2.state::text IN ('SCORING', 'COMPLETED'))
            ) AS finalized_runs
    ) AS rc
) AS b;

COMMENT ON VIEW cj_batch_health IS
    'cj-health-exporter: one row per CJ batch with its state, counts, outbox events and problems';
