-- cj_batch_health: one row per CJ batch (cj_batch_uploads.id) with every fact the on-call needs.
--
-- Runs unchanged on a database made by the CJ service's Alembic migrations and on the ORM
-- create_all variant: it only reads the CJ tables and never depends on enum label order
-- (states and statuses are compared as text, so a label added upstream cannot break it).
--
-- Shape: the per-batch facts come from LATERAL subqueries keyed by the batch id, so a filter on
-- the batch columns (id, state, status, activity) is applied before them and the cost grows
-- with the batches selected, not with history. The exporter's poll selects the watched batches
-- by id (see exporter/poll/watched.py); `SELECT * FROM cj_batch_health` reads everything.
--
-- Times: cj_batch_uploads.* and cj_processed_essays.* are naive timestamps holding UTC
-- (docs/design.md §F3): they are converted with AT TIME ZONE 'UTC' before any arithmetic, and
-- every time column of this view is timestamptz.
--
-- Documents are `json`, not `jsonb`. Every document is read through cj_health_json(doc)
-- (sql/views/cj_health_json.sql), never with ->/->> on the column itself: PostgreSQL stores
-- documents that ->/->> cannot read (a \u0000 or lone-surrogate escape anywhere in them, or
-- nesting too deep) and then fails the WHOLE query, which would blind every poll. Through
-- cj_health_json an unreadable document reads as NULL: its facts are unknown (a flag it holds
-- counts as "no key"), and it is counted in the batch's unreadable_* columns. The pattern:
--     1. a fenced subquery computes `cj_health_json(t.col) AS doc` next to `t.col` (OFFSET 0:
--        the planner inlines the function, so without the fence it would run once per use);
--     2. above it, only `doc -> ...` / `doc ->> ...`, never `t.col -> ...`, and
--        `(t.col IS NOT NULL AND doc IS NULL) AS unreadable`, counted per batch.
-- ->, ->> and json_typeof on a readable document return NULL (never an error) on a shape the
-- view does not expect.
--
-- Parse each document once: `->` on a `json` value re-parses the whole text every time, so a
-- document whose several keys are read goes through json_to_record (one parse, every key the
-- view needs as a column; only for an object: json_typeof reads just the first token) and the
-- small values it returns are read from there. Numbers are cast only when their text is a
-- plain integer of a few digits: a JSON number too large for `numeric` would otherwise raise.
--
-- No index of the project is built on a JSON expression: an index expression runs inside the
-- CJ service's own INSERT, and one that raises makes the service's write fail.

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
    -- Resource-consumption events of the BOS batch (all its runs); charge_events is the run's.
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
    -- R1: Entitlements charges once per resource-consumption event, and a run may be charged
    -- once. Charges are attributed to the run by data.processing_id (= the CJ batch id), never
    -- counted per BOS batch: a legitimate re-run of the BOS batch is charged once itself.
    (b.charge_events > 1) AS has_duplicate_charge,
    -- The monitor's < 80 % path sets FAILED but leaves the upload status non-terminal.
    COALESCE(b.cj_state IN ('FAILED', 'COMPLETED') AND NOT b.status_terminal, false)
        AS inconsistent_state,
    -- In flight, and a document a continuation or the monitor needs is missing in a way that
    -- changes what upstream does: no total_budget (the monitor counts 0 % progress and no
    -- continuation is ever triggered), or the upload's request asked for a budget or overrides
    -- that the state row cannot give back (no original_request there: a continuation falls back
    -- to the upload's columns and drops them; no comparison_budget: it falls back to the
    -- default budget instead of the runner's). A NULL or budget-less document alone is harmless
    -- (a pre-ADR-0020 batch: upstream uses its default budget) and is not flagged.
    COALESCE(
        b.cj_state = 'WAITING_CALLBACKS'
        AND (b.total_budget IS NULL
             OR (NOT b.has_original_request AND b.upload_request_has_overrides)
             OR (NOT b.has_comparison_budget AND b.request_has_budget_override)),
        false
    ) AS metadata_incomplete,
    -- Documents of this batch that ->/->> cannot read (see the header): their facts are
    -- unknown. Completion events are this BOS batch's (every run of it counts them): an
    -- unreadable event's cj_assessment_job_id cannot be read either. New columns go last:
    -- CREATE OR REPLACE VIEW can only append, and an append keeps the view's grants.
    b.unreadable_essay_documents,
    b.unreadable_state_documents,
    b.unreadable_completion_events,
    -- Charges (R1): the run's resource-consumption events, the quantity its published ones
    -- charged, and what was charged beyond its first published charge (to refund by hand:
    -- `cj-health-exporter charges`). Unpublished rows have not reached Entitlements yet.
    b.charge_events,
    b.charged_quantity,
    b.overcharged_quantity,
    -- The newest run that owns this run's essays now (R4: a re-run of the BOS batch with the
    -- same ELS essays moves them), when this run has none left.
    b.superseded_by,
    -- The last result event written for the run, against what finalization would publish now:
    -- top-level data.assignment_id (RAS reads it), its students, how many have a grade other
    -- than "U", and how many differ from the run's projections ("U" where none).
    b.result_assignment_id,
    b.result_students,
    b.result_students_graded,
    b.result_grade_mismatches,
    -- Projections whose grade the consumers' letter_grade pattern ^([A-F][+-]?|U)$ rejects
    -- (the ENG5 national scale's 1-9): no valid result event can carry them.
    b.unpublishable_projections,
    b.unreadable_result_events,
    b.unreadable_charge_events,
    b.unreadable_upload_documents,
    -- What upstream's diagnostics script (inspect_batch_state.py) shows of the state row.
    b.partial_scoring_triggered,
    b.completion_threshold_pct,
    b.current_iteration,
    b.llm_batching_mode,
    b.has_config_overrides,
    b.budget_max_pairs,
    b.budget_source,
    -- Budget progress as partial scoring counts it: completed / total_budget, and whether the
    -- counters have reached completion_threshold_pct of the budget (partial_scoring_triggered
    -- should say the same; it is a flag only, set on the callback path, and triggers nothing).
    b.budget_progress,
    b.partial_scoring_threshold_reached,
    -- Anchors (by the is_anchor column or their metadata) by the tier of the projector's
    -- lookup that resolves their grade (grade_projector._map_anchor_grades, in its order), and
    -- those no tier resolves (the projector skips them with a warning).
    b.anchors_by_anchor_grade,
    b.anchors_by_known_grade,
    b.anchors_by_text_storage_id,
    b.anchors_by_anchor_ref_id,
    b.anchors_unresolved,
    -- The fields of original_request on which the upload and the state row disagree (comma
    -- separated), when both carry one; NULL when they agree or cannot be compared.
    b.rehydration_mismatched_fields,
    -- Why the budget source broke its invariant (see has_budget_source_flip), or NULL.
    b.budget_source_violation,
    -- The published result is not what finalization would publish now: no (or another)
    -- assignment_id while the upload has one; every student "U" although the anchors are
    -- usable; a student whose grade differs from the run's projection. A superseded run is
    -- never judged: nothing would be published for it (R4).
    COALESCE(
        b.result_events > 0 AND b.superseded_by IS NULL AND b.unreadable_result_events = 0
        AND ((b.assignment_id IS NOT NULL
              AND b.result_assignment_id IS DISTINCT FROM b.assignment_id)
             OR (b.projectable AND b.result_students > 0 AND b.result_students_graded = 0)
             OR (b.grade_projections > 0 AND b.result_grade_mismatches > 0)),
        false
    ) AS has_wrong_result,
    -- R4: no essays left, and the essays its comparisons judged belong to another run now.
    (b.superseded_by IS NOT NULL) AS is_superseded,
    -- ELS and BOS consider CJ done while RAS never heard of it.
    (b.completion_events > 0 AND b.result_events = 0) AS has_completion_without_result,
    -- No resource-consumption event names the run although it finished (state COMPLETED or
    -- a COMPLETE_* upload), published its completion, or reached SCORING without a user_id
    -- (upstream cannot charge it: its finalization raises before any event). A run merely
    -- stuck in SCORING with a user is stuck_scoring, and is charged once it is finalized.
    (b.charge_events = 0 AND b.unreadable_charge_events = 0
     AND (COALESCE(b.cj_state = 'COMPLETED', false) OR b.status_complete
          OR b.completion_events > 0
          OR (b.user_id IS NULL AND COALESCE(b.cj_state = 'SCORING', false)))) AS is_unbilled,
    (b.unpublishable_projections > 0) AS has_unpublishable_result,
    -- Issue 16's invariants of the metadata-persistence work. A pre-ADR-0020 batch (NULL state
    -- metadata, which upstream tolerates) is never flagged by them.
    (b.budget_source_violation IS NOT NULL) AS has_budget_source_flip,
    (b.rehydration_mismatched_fields IS NOT NULL) AS has_rehydration_mismatch,
    COALESCE(b.has_state_document AND b.anchors_unresolved > 0, false) AS has_unresolved_anchors
FROM (
    SELECT
        u.id AS cj_batch_id,
        u.bos_batch_id,
        u.assignment_id,
        u.user_id,
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
        gp.unpublishable_projections,
        -- The projector needs >= 1 anchor, >= 2 distinct anchor grades and a student. Anchors
        -- are counted as the metadata says (canonical), so a batch whose column lost the flag
        -- (Batch 20) still counts as projectable and its missing projections are flagged.
        (es.anchors_effective >= 1 AND es.anchor_grades >= 2 AND es.student_essays >= 1)
            AS projectable,
        ce.completion_events,
        re.result_events,
        rc.resource_events,
        rc.charge_events,
        rc.charged_quantity,
        rc.overcharged_quantity,
        sp.superseded_by,
        CASE WHEN json_typeof(rdata.assignment_id) = 'string'
             THEN rdata.assignment_id #>> '{}' END AS result_assignment_id,
        rr.result_students,
        rr.result_students_graded,
        rr.result_grade_mismatches,
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
        (sd.doc IS NOT NULL) AS has_state_document,
        -- NULL (unknown) when the state document cannot be read; false when it lacks the key.
        CASE WHEN sd.doc IS NOT NULL OR s.processing_metadata IS NULL THEN
            json_typeof(sm.original_request) IS NOT DISTINCT FROM 'object'
        END AS has_original_request,
        CASE WHEN sd.doc IS NOT NULL OR s.processing_metadata IS NULL THEN
            json_typeof(sm.comparison_budget) IS NOT DISTINCT FROM 'object'
        END AS has_comparison_budget,
        rq.upload_request_has_overrides,
        (rq.upload_override OR rq.state_override) AS request_has_budget_override,
        es.unreadable_essay_documents,
        (s.processing_metadata IS NOT NULL AND sd.doc IS NULL)::integer
            AS unreadable_state_documents,
        ce.unreadable_completion_events,
        rd.unreadable::integer AS unreadable_result_events,
        rc.unreadable_charge_events,
        (u.processing_metadata IS NOT NULL AND ud.doc IS NULL)::integer
            AS unreadable_upload_documents,
        s.partial_scoring_triggered,
        s.completion_threshold_pct,
        s.current_iteration,
        CASE WHEN json_typeof(sm.llm_batching_mode) = 'string'
             THEN sm.llm_batching_mode #>> '{}' END AS llm_batching_mode,
        -- The diagnostics script's "has config overrides": a non-empty config_overrides.
        CASE WHEN sd.doc IS NOT NULL OR s.processing_metadata IS NULL THEN
            COALESCE(json_typeof(sm.config_overrides) = 'object'
                     AND sm.config_overrides::text !~ '^\s*\{\s*\}\s*$', false)
        END AS has_config_overrides,
        bg.max_pairs AS budget_max_pairs,
        bg.source AS budget_source,
        CASE WHEN s.total_budget > 0 THEN
            s.completed_comparisons::double precision / s.total_budget
        END AS budget_progress,
        -- upstream's test: completed >= total_budget * completion_threshold_pct / 100
        CASE WHEN s.total_budget > 0 THEN
            s.completed_comparisons::bigint * 100
                >= s.total_budget::bigint * s.completion_threshold_pct
        END AS partial_scoring_threshold_reached,
        es.anchors_by_anchor_grade,
        es.anchors_by_known_grade,
        es.anchors_by_text_storage_id,
        es.anchors_by_anchor_ref_id,
        es.anchors_unresolved,
        rm.rehydration_mismatched_fields,
        -- Issue 16, invariant 1 (the budget source never flips). Upstream re-derives
        -- comparison_budget at every submission from the request it rehydrates from the
        -- state's original_request, and sets total_budget once, at the first submission, from
        -- max_pairs_requested (docs/design.md §F10). So, for a batch with ADR-0020 metadata:
        -- a service_default source while a stored request carries max_comparisons_override; a
        -- runner_override source after a continuation (iteration >= 2) that no stored request
        -- explains (an override derived from max_pairs_cap); a continuation that changed the
        -- budget the first submission fixed. At iteration 1 a runner_override source whose
        -- request was stored without the override cannot be told from a caller that passed
        -- different requests to batch creation and submission (the upstream fixtures' batches
        -- 4-8 are like that): it is not flagged until a continuation acts on it.
        CASE
            WHEN sd.doc IS NULL OR bg.source IS NULL THEN NULL
            WHEN bg.source = 'service_default' AND (rq.upload_override OR rq.state_override)
                THEN 'service_default although the original request has max_comparisons_override'
            WHEN bg.source = 'runner_override' AND s.current_iteration >= 2
                 AND (NOT rq.state_override
                      OR (rq.upload_request AND NOT rq.upload_override))
                THEN 'runner_override after a continuation, not in the original request'
            WHEN s.current_iteration >= 2 AND bg.max_pairs IS DISTINCT FROM s.total_budget
                 AND bg.max_pairs IS NOT NULL AND s.total_budget IS NOT NULL
                THEN 'max_pairs_requested changed since the first submission fixed total_budget'
        END AS budget_source_violation
    FROM cj_batch_uploads AS u
    LEFT JOIN cj_batch_states AS s ON s.batch_id = u.id
    CROSS JOIN LATERAL (
        -- The state and upload documents, read safely once (OFFSET 0: not re-evaluated per
        -- use above), then their top-level keys in one parse each.
        SELECT cj_health_json(s.processing_metadata) AS doc OFFSET 0
    ) AS sd
    CROSS JOIN LATERAL json_to_record(CASE WHEN json_typeof(sd.doc) = 'object' THEN sd.doc END)
        AS sm(original_request json, comparison_budget json, llm_batching_mode json,
              config_overrides json)
    CROSS JOIN LATERAL (SELECT cj_health_json(u.processing_metadata) AS doc OFFSET 0) AS ud
    CROSS JOIN LATERAL json_to_record(CASE WHEN json_typeof(ud.doc) = 'object' THEN ud.doc END)
        AS um(original_request json)
    CROSS JOIN LATERAL json_to_record(
        CASE WHEN json_typeof(sm.comparison_budget) = 'object' THEN sm.comparison_budget END)
        AS bgr(max_pairs_requested json, source json)
    CROSS JOIN LATERAL (
        SELECT
            CASE WHEN json_typeof(bgr.max_pairs_requested) = 'number'
                      AND bgr.max_pairs_requested::text ~ '^\s*[0-9]{1,9}\s*$'
                 THEN (bgr.max_pairs_requested::text)::integer END AS max_pairs,
            CASE WHEN json_typeof(bgr.source) = 'string' THEN bgr.source #>> '{}' END AS source
    ) AS bg
    -- The original_request the batch was created with (on the upload) and the copy on the
    -- state row that continuations rehydrate from (batch_preparation.create_cj_batch writes
    -- both from one payload), field by field; None-valued keys are omitted upstream, so a
    -- missing key and a JSON null are the same.
    CROSS JOIN LATERAL json_to_record(
        CASE WHEN json_typeof(um.original_request) = 'object' THEN um.original_request END)
        AS ur(assignment_id json, user_id json, language json, course_code json,
              max_comparisons_override json, llm_config_overrides json,
              batch_config_overrides json)
    CROSS JOIN LATERAL json_to_record(
        CASE WHEN json_typeof(sm.original_request) = 'object' THEN sm.original_request END)
        AS sr(assignment_id json, user_id json, language json, course_code json,
              max_comparisons_override json, llm_config_overrides json,
              batch_config_overrides json)
    CROSS JOIN LATERAL (
        SELECT
            (json_typeof(um.original_request) IS NOT DISTINCT FROM 'object') AS upload_request,
            -- upstream: runner_override exactly when max_comparisons_override is truthy (>= 1)
            (json_typeof(ur.max_comparisons_override) IS NOT DISTINCT FROM 'number')
                AS upload_override,
            (json_typeof(sr.max_comparisons_override) IS NOT DISTINCT FROM 'number')
                AS state_override,
            (json_typeof(ur.max_comparisons_override) IS NOT DISTINCT FROM 'number'
             OR json_typeof(ur.llm_config_overrides) IS NOT DISTINCT FROM 'object'
             OR json_typeof(ur.batch_config_overrides) IS NOT DISTINCT FROM 'object')
                AS upload_request_has_overrides
    ) AS rq
    CROSS JOIN LATERAL (
        -- Issue 16, invariant 2 (continuations rehydrate from the original request): the
        -- fields the metadata-persistence checklist names. Objects compare key by key (their
        -- key order and spacing are the serializer's), scalars by their text.
        SELECT string_agg(f.name, ',' ORDER BY f.ord) AS rehydration_mismatched_fields
        FROM (VALUES
            (1, 'assignment_id', ur.assignment_id, sr.assignment_id),
            (2, 'user_id', ur.user_id, sr.user_id),
            (3, 'language', ur.language, sr.language),
            (4, 'course_code', ur.course_code, sr.course_code),
            (5, 'max_comparisons_override', ur.max_comparisons_override,
                sr.max_comparisons_override),
            (6, 'llm_config_overrides', ur.llm_config_overrides, sr.llm_config_overrides),
            (7, 'batch_config_overrides', ur.batch_config_overrides, sr.batch_config_overrides)
        ) AS f(ord, name, upload_value, state_value)
        CROSS JOIN LATERAL (
            SELECT
                CASE json_typeof(f.upload_value)
                    WHEN 'null' THEN NULL
                    WHEN 'object' THEN (
                        SELECT string_agg(j.key || '=' || (j.value #>> '{}'), ',' ORDER BY j.key)
                        FROM json_each(f.upload_value) AS j WHERE json_typeof(j.value) <> 'null')
                    ELSE f.upload_value #>> '{}'
                END AS upload_text,
                CASE json_typeof(f.state_value)
                    WHEN 'null' THEN NULL
                    WHEN 'object' THEN (
                        SELECT string_agg(j.key || '=' || (j.value #>> '{}'), ',' ORDER BY j.key)
                        FROM json_each(f.state_value) AS j WHERE json_typeof(j.value) <> 'null')
                    ELSE f.state_value #>> '{}'
                END AS state_text
        ) AS c
        WHERE rq.upload_request AND json_typeof(sm.original_request) = 'object'
          AND c.upload_text IS DISTINCT FROM c.state_text
    ) AS rm
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
            count(*) AS essays,
            count(*) FILTER (WHERE NOT e.anchor) AS student_essays,
            count(*) FILTER (WHERE e.is_anchor) AS anchors_flagged,
            count(*) FILTER (WHERE e.meta_anchor) AS anchors_in_metadata,
            count(*) FILTER (WHERE e.els_essay_id LIKE 'ANCHOR\_%') AS anchors_by_id,
            count(*) FILTER (WHERE e.meta_anchor IS NOT NULL AND e.meta_anchor <> e.is_anchor)
                AS anchor_mismatches,
            count(*) FILTER (WHERE e.anchor) AS anchors_effective,
            count(DISTINCT e.grade) FILTER (WHERE e.anchor) AS anchor_grades,
            count(*) FILTER (WHERE e.unreadable) AS unreadable_essay_documents,
            count(*) FILTER (WHERE e.tier = 'anchor_grade') AS anchors_by_anchor_grade,
            count(*) FILTER (WHERE e.tier = 'known_grade') AS anchors_by_known_grade,
            count(*) FILTER (WHERE e.tier = 'text_storage_id') AS anchors_by_text_storage_id,
            count(*) FILTER (WHERE e.tier = 'anchor_ref_id') AS anchors_by_anchor_ref_id,
            -- an anchor whose document cannot be read is unknown, not unresolved
            count(*) FILTER (WHERE e.any_anchor AND e.tier IS NULL AND NOT e.unreadable)
                AS anchors_unresolved
        FROM (
            SELECT
                e1.els_essay_id,
                e1.is_anchor,
                e1.meta_anchor,
                e1.unreadable,
                e1.anchor,
                e1.any_anchor,
                COALESCE(e1.by_anchor_grade, e1.by_known_grade, l3.grade, l4.grade) AS grade,
                CASE
                    WHEN e1.by_anchor_grade IS NOT NULL THEN 'anchor_grade'
                    WHEN e1.by_known_grade IS NOT NULL THEN 'known_grade'
                    WHEN l3.grade IS NOT NULL THEN 'text_storage_id'
                    WHEN l4.grade IS NOT NULL THEN 'anchor_ref_id'
                END AS tier
            FROM (
                SELECT
                    d.els_essay_id,
                    d.is_anchor,
                    d.unreadable,
                    d.meta_anchor,
                    COALESCE(d.meta_anchor, d.is_anchor) AS anchor,
                    (d.is_anchor OR COALESCE(d.meta_anchor, false)) AS any_anchor,
                    -- Tiers 1 and 2 of the lookup: a non-empty string in the metadata.
                    CASE WHEN json_typeof(d.anchor_grade) = 'string'
                         THEN NULLIF(d.anchor_grade #>> '{}', '') END AS by_anchor_grade,
                    CASE WHEN json_typeof(d.known_grade) = 'string'
                         THEN NULLIF(d.known_grade #>> '{}', '') END AS by_known_grade,
                    -- Tier 3 reads the essay's text_storage_id column (the ranking's), then the
                    -- metadata's; tier 4 the metadata's anchor_ref_id, which must be a string
                    -- (upstream looks it up among str(ref.id)).
                    COALESCE(NULLIF(d.text_storage_id, ''),
                             CASE WHEN json_typeof(d.meta_storage_id) = 'string'
                                  THEN NULLIF(d.meta_storage_id #>> '{}', '') END)
                        AS storage_id,
                    CASE WHEN json_typeof(d.anchor_ref_id) = 'string'
                         THEN d.anchor_ref_id #>> '{}' END AS ref_id
                FROM (
                    SELECT
                        d0.els_essay_id,
                        d0.is_anchor,
                        d0.text_storage_id,
                        (d0.metadata IS NOT NULL AND d0.doc IS NULL) AS unreadable,
                        -- Only a real boolean (or its text spelling) counts; anything else,
                        -- and an unreadable document, is "no key".
                        CASE lower(m.is_anchor)
                            WHEN 'true' THEN true
                            WHEN 'false' THEN false
                        END AS meta_anchor,
                        m.anchor_grade,
                        m.known_grade,
                        m.text_storage_id AS meta_storage_id,
                        m.anchor_ref_id
                    FROM (
                        SELECT
                            pe.els_essay_id,
                            pe.is_anchor,
                            pe.text_storage_id,
                            pe.processing_metadata AS metadata,
                            cj_health_json(pe.processing_metadata) AS doc
                        FROM cj_processed_essays AS pe
                        WHERE pe.cj_batch_id = u.id
                        OFFSET 0  -- cj_health_json once per essay (the planner would inline it)
                    ) AS d0
                    -- Every key the view reads, in one parse of the document.
                    CROSS JOIN LATERAL json_to_record(
                        CASE WHEN json_typeof(d0.doc) = 'object' THEN d0.doc END)
                        AS m(is_anchor text, anchor_grade json, known_grade json,
                             text_storage_id json, anchor_ref_id json)
                    -- A fence: without it the planner inlines the expressions into every
                    -- aggregate above (EXPLAIN VERBOSE; 80 % of the poll at 100,000 batches
                    -- once, docs/performance.md).
                    OFFSET 0
                ) AS d
                OFFSET 0
            ) AS e1
            -- Tiers 3 and 4 look among the assignment's references of the grade scale of its
            -- instructions (upstream's ContextBuilder; none without instructions), and only
            -- for an anchor the metadata did not resolve. An anchor whose document cannot be
            -- read has no known tier (upstream may read what PostgreSQL cannot).
            CROSS JOIN LATERAL (
                SELECT CASE WHEN e1.any_anchor AND NOT e1.unreadable AND e1.by_anchor_grade IS NULL
                                 AND e1.by_known_grade IS NULL AND e1.storage_id IS NOT NULL
                THEN (
                    SELECT r.grade FROM anchor_essay_references AS r
                    WHERE r.assignment_id = u.assignment_id
                      AND r.text_storage_id = e1.storage_id
                      AND r.grade_scale = (SELECT i.grade_scale FROM assessment_instructions AS i
                                           WHERE i.assignment_id = u.assignment_id)
                    LIMIT 1
                ) END AS grade
                OFFSET 0
            ) AS l3
            CROSS JOIN LATERAL (
                SELECT CASE WHEN e1.any_anchor AND NOT e1.unreadable AND e1.by_anchor_grade IS NULL
                                 AND e1.by_known_grade IS NULL AND l3.grade IS NULL
                                 AND e1.ref_id ~ '^[1-9][0-9]{0,8}$'
                THEN (
                    SELECT r.grade FROM anchor_essay_references AS r
                    WHERE r.id = e1.ref_id::integer
                      AND r.assignment_id = u.assignment_id
                      AND r.grade_scale = (SELECT i.grade_scale FROM assessment_instructions AS i
                                           WHERE i.assignment_id = u.assignment_id)
                ) END AS grade
                OFFSET 0
            ) AS l4
        ) AS e
    ) AS es
    CROSS JOIN LATERAL (
        SELECT
            count(*) AS grade_projections,
            count(*) FILTER (WHERE g.primary_grade !~ '^([A-F][+-]?|U)$')
                AS unpublishable_projections
        FROM grade_projections AS g
        WHERE g.cj_batch_id = u.id
    ) AS gp
    CROSS JOIN LATERAL (
        -- Keyed by the CJ batch, never by bos_batch_id alone: re-runs reuse the BOS id. The
        -- events are found by their aggregate_id (the BOS batch id, upstream's own index
        -- ix_event_outbox_aggregate_id) and then told apart by data.cj_assessment_job_id, so
        -- only this BOS batch's few documents are read, and no JSON index is needed.
        SELECT
            count(*) FILTER (WHERE w.mine) AS completion_events,
            min(w.created_at) FILTER (WHERE w.mine) AS first_completion_event_at,
            max(w.created_at) FILTER (WHERE w.mine) AS last_completion_event_at,
            COALESCE(max(w.in_next_minute) FILTER (WHERE w.mine), 0) AS completion_event_burst,
            count(*) FILTER (WHERE w.unreadable) AS unreadable_completion_events
        FROM (
            SELECT
                c.created_at,
                c.mine,
                c.unreadable,
                count(*) FILTER (WHERE c.mine) OVER (
                    ORDER BY c.created_at
                    RANGE BETWEEN CURRENT ROW AND INTERVAL '60 seconds' FOLLOWING
                ) AS in_next_minute
            FROM (
                SELECT
                    d.created_at,
                    COALESCE(d.doc -> 'data' ->> 'cj_assessment_job_id' = u.id::text, false)
                        AS mine,
                    d.doc IS NULL AS unreadable  -- event_data is NOT NULL
                FROM (
                    SELECT o.created_at, cj_health_json(o.event_data) AS doc
                    FROM event_outbox AS o
                    WHERE o.aggregate_id = u.bos_batch_id
                      AND o.event_type = 'huleedu.cj_assessment.completed.v1'
                    OFFSET 0  -- cj_health_json once per event
                ) AS d
            ) AS c
        ) AS w
    ) AS ce
    CROSS JOIN LATERAL (
        -- The run's result events (aggregate_id = the CJ batch id) and the last one written:
        -- the correction a consumer applied last (RAS is last-writer-wins).
        SELECT
            count(*) AS result_events,
            (array_agg(o.event_data ORDER BY o.created_at DESC, o.id DESC))[1] AS last_event
        FROM event_outbox AS o
        WHERE o.event_type = 'assessment.result.published' AND o.aggregate_id = u.id::text
    ) AS re
    CROSS JOIN LATERAL (
        SELECT r0.doc, (re.last_event IS NOT NULL AND r0.doc IS NULL) AS unreadable
        FROM (SELECT cj_health_json(re.last_event) AS doc OFFSET 0) AS r0
    ) AS rd
    CROSS JOIN LATERAL json_to_record(CASE WHEN json_typeof(rd.doc) = 'object' THEN rd.doc END)
        AS renv(data json)
    CROSS JOIN LATERAL json_to_record(
        CASE WHEN json_typeof(renv.data) = 'object' THEN renv.data END)
        AS rdata(assignment_id json, essay_results json)
    CROSS JOIN LATERAL (
        -- Students as upstream's publisher tells them (no ANCHOR_ id prefix); each grade
        -- against the run's projection, "U" where it has none (what it would publish now).
        SELECT
            count(*) AS result_students,
            count(*) FILTER (WHERE x.letter_grade IS DISTINCT FROM 'U') AS result_students_graded,
            count(*) FILTER (WHERE x.letter_grade IS DISTINCT FROM COALESCE(x.projected, 'U'))
                AS result_grade_mismatches
        FROM (
            SELECT
                er.letter_grade,
                (SELECT g.primary_grade FROM grade_projections AS g
                 WHERE g.cj_batch_id = u.id AND g.els_essay_id = er.essay_id) AS projected
            FROM json_array_elements(
                CASE WHEN json_typeof(rdata.essay_results) = 'array' THEN rdata.essay_results END)
                AS el(value)
            CROSS JOIN LATERAL json_to_record(
                CASE WHEN json_typeof(el.value) = 'object' THEN el.value END)
                AS er(essay_id text, letter_grade text)
            WHERE NOT starts_with(COALESCE(er.essay_id, ''), 'ANCHOR_')
        ) AS x
    ) AS rr
    CROSS JOIN LATERAL (
        -- Resource-consumption events are found by their aggregate_id (the BOS batch id) and
        -- attributed to this run by data.processing_id (R1).
        SELECT
            count(*) AS resource_events,
            count(*) FILTER (WHERE c.mine) AS charge_events,
            -- double precision: a sum of bigints is numeric, and no sum may overflow
            COALESCE(sum(c.quantity) FILTER (WHERE c.mine AND c.published), 0)::double precision
                AS charged_quantity,
            (COALESCE(sum(c.quantity) FILTER (WHERE c.mine AND c.published), 0)
             - COALESCE((array_agg(c.quantity ORDER BY c.created_at, c.id)
                         FILTER (WHERE c.mine AND c.published))[1], 0))::double precision
                AS overcharged_quantity,
            count(*) FILTER (WHERE c.unreadable) AS unreadable_charge_events
        FROM (
            SELECT
                d.id,
                d.created_at,
                d.published_at IS NOT NULL AS published,
                COALESCE(rdat.processing_id = u.id::text, false) AS mine,
                CASE WHEN json_typeof(rdat.quantity) = 'number'
                          AND rdat.quantity::text ~ '^\s*[0-9]{1,15}\s*$'
                     THEN (rdat.quantity::text)::bigint END AS quantity,
                d.doc IS NULL AS unreadable  -- event_data is NOT NULL
            FROM (
                SELECT o.id, o.created_at, o.published_at, cj_health_json(o.event_data) AS doc
                FROM event_outbox AS o
                WHERE o.aggregate_id = u.bos_batch_id
                  AND o.event_type = 'huleedu.resource.consumption.v1'
                OFFSET 0  -- cj_health_json once per event
            ) AS d
            CROSS JOIN LATERAL json_to_record(
                CASE WHEN json_typeof(d.doc) = 'object' THEN d.doc END) AS env(data json)
            CROSS JOIN LATERAL json_to_record(
                CASE WHEN json_typeof(env.data) = 'object' THEN env.data END)
                AS rdat(processing_id text, quantity json)
        ) AS c
    ) AS rc
    CROSS JOIN LATERAL (
        -- R4, only for a run without essays: the run now owning the essays its comparisons
        -- judged (cj_processed_essays is keyed by els_essay_id alone, so a re-run moved them).
        SELECT max(e.cj_batch_id) AS superseded_by
        FROM cj_comparison_pairs AS p
        JOIN cj_processed_essays AS e ON e.els_essay_id = p.essay_a_els_id
        WHERE es.essays = 0 AND p.cj_batch_id = u.id AND e.cj_batch_id <> u.id
    ) AS sp
) AS b;

COMMENT ON VIEW cj_batch_health IS
    'cj-health-exporter: one row per CJ batch with its state, counts, outbox events and problems';
