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
-- `->` on a `json` value parses the text again every time: each expression reading a document
-- sits in a fenced subquery (OFFSET 0), so it runs once per row, not once per use above, and a
-- big document is cut down first (the result event's `data`, then its two keys). Measured on
-- these documents (a few hundred bytes), a few `->`/`->>` cost less than one json_to_record:
-- 0.5 us per key against 2.5 us, so the view does not use it. The planner drops the fenced
-- outputs a query does not select. Numbers are cast only when their text is a plain integer of
-- a few digits: a JSON number too large for `numeric` would otherwise raise.
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
    -- than "U", those grades sorted, and the run's projections' grades sorted (only when there
    -- is a result to judge).
    b.result_assignment_id,
    b.result_students,
    b.result_students_graded,
    b.result_grades,
    b.projected_grades,
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
             OR (b.grade_projections > 0 AND b.result_students > 0
                 AND b.result_grades IS DISTINCT FROM b.projected_grades)),
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
        cq.charged_quantity,
        oc.overcharged_quantity,
        sp.superseded_by,
        CASE WHEN json_typeof(rdata.assignment_id) = 'string'
             THEN rdata.assignment_id #>> '{}' END AS result_assignment_id,
        rr.result_students,
        rr.result_students_graded,
        rr.result_grades,
        pg.projected_grades,
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
        -- use above).
        SELECT cj_health_json(s.processing_metadata) AS doc OFFSET 0
    ) AS sd
    CROSS JOIN LATERAL (
        -- The keys read of it, each once (fenced; the planner drops the ones a query does not
        -- select). ->/->> on an array or a scalar returns NULL.
        SELECT
            sd.doc -> 'original_request' AS original_request,
            sd.doc -> 'comparison_budget' AS comparison_budget,
            sd.doc -> 'llm_batching_mode' AS llm_batching_mode,
            sd.doc -> 'config_overrides' AS config_overrides
        OFFSET 0
    ) AS sm
    CROSS JOIN LATERAL (SELECT cj_health_json(u.processing_metadata) AS doc OFFSET 0) AS ud
    CROSS JOIN LATERAL (SELECT ud.doc -> 'original_request' AS original_request OFFSET 0) AS um
    CROSS JOIN LATERAL (
        SELECT
            CASE WHEN json_typeof(sm.comparison_budget -> 'max_pairs_requested') = 'number'
                      AND sm.comparison_budget ->> 'max_pairs_requested' ~ '^[0-9]{1,9}$'
                 THEN (sm.comparison_budget ->> 'max_pairs_requested')::integer END
                AS max_pairs,
            CASE WHEN json_typeof(sm.comparison_budget -> 'source') = 'string'
                 THEN sm.comparison_budget ->> 'source' END AS source
        OFFSET 0
    ) AS bg
    -- The original_request the batch was created with (on the upload) and the copy on the
    -- state row that continuations rehydrate from (batch_preparation.create_cj_batch writes
    -- both from one payload), field by field; None-valued keys are omitted upstream, so a
    -- missing key and a JSON null are the same.
    CROSS JOIN LATERAL (
        SELECT
            r.upload_request,
            r.upload_override,
            r.state_override,
            (r.upload_override
             OR json_typeof(um.original_request -> 'llm_config_overrides')
                IS NOT DISTINCT FROM 'object'
             OR json_typeof(um.original_request -> 'batch_config_overrides')
                IS NOT DISTINCT FROM 'object') AS upload_request_has_overrides
        FROM (
            SELECT
                (json_typeof(um.original_request) IS NOT DISTINCT FROM 'object')
                    AS upload_request,
                -- upstream: runner_override exactly when max_comparisons_override is truthy
                (json_typeof(um.original_request -> 'max_comparisons_override')
                    IS NOT DISTINCT FROM 'number') AS upload_override,
                (json_typeof(sm.original_request -> 'max_comparisons_override')
                    IS NOT DISTINCT FROM 'number') AS state_override
            OFFSET 0
        ) AS r
    ) AS rq
    CROSS JOIN LATERAL (
        -- Issue 16, invariant 2 (continuations rehydrate from the original request): the
        -- fields the metadata-persistence checklist names. Objects compare key by key (their
        -- key order and spacing are the serializer's), scalars by their text. Both copies come
        -- from one payload, so they are almost always the same text: then nothing is compared.
        SELECT string_agg(f.name, ',' ORDER BY f.ord) AS rehydration_mismatched_fields
        FROM (VALUES
            (1, 'assignment_id'), (2, 'user_id'), (3, 'language'), (4, 'course_code'),
            (5, 'max_comparisons_override'), (6, 'llm_config_overrides'),
            (7, 'batch_config_overrides')
        ) AS k(ord, name)
        CROSS JOIN LATERAL (
            SELECT k.ord, k.name, um.original_request -> k.name AS upload_value,
                   sm.original_request -> k.name AS state_value
        ) AS f
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
          AND um.original_request::text <> sm.original_request::text
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
            count(*) FILTER (WHERE e.tier = '1') AS anchors_by_anchor_grade,
            count(*) FILTER (WHERE e.tier = '2') AS anchors_by_known_grade,
            count(*) FILTER (WHERE e.tier = '3') AS anchors_by_text_storage_id,
            count(*) FILTER (WHERE e.tier = '4') AS anchors_by_anchor_ref_id,
            -- an anchor whose document cannot be read is unknown, not unresolved
            count(*) FILTER (WHERE e.any_anchor AND e.tier IS NULL AND NOT e.unreadable)
                AS anchors_unresolved
        FROM (
            SELECT
                t.els_essay_id,
                t.is_anchor,
                t.meta_anchor,
                t.unreadable,
                t.anchor,
                t.any_anchor,
                left(t.resolved, 1) AS tier,
                substr(t.resolved, 2) AS grade
            FROM (
                SELECT
                    d.els_essay_id,
                    d.is_anchor,
                    d.unreadable,
                    d.meta_anchor,
                    COALESCE(d.meta_anchor, d.is_anchor) AS anchor,
                    (d.is_anchor OR COALESCE(d.meta_anchor, false)) AS any_anchor,
                    -- The projector's lookup (grade_projector._map_anchor_grades), in its order,
                    -- as '<tier 1-4><grade>', the first tier that resolves; only for an anchor
                    -- (students skip it) whose document can be read (else it is unknown:
                    -- upstream may read what PostgreSQL cannot). Tiers 1 and 2: a non-empty
                    -- value in the metadata (upstream tests it for truth; it writes strings).
                    -- Tier 3: the assignment's reference, of its
                    -- instructions' grade scale (upstream's ContextBuilder; none without
                    -- instructions), with the essay's text_storage_id (its column, the
                    -- ranking's, else the metadata's). Tier 4: the one whose id is the
                    -- metadata's anchor_ref_id, a string (upstream looks among str(ref.id)).
                    -- COALESCE stops at the first tier that resolves: the lookups run only
                    -- for the anchors the metadata does not resolve.
                    CASE WHEN (d.is_anchor OR COALESCE(d.meta_anchor, false)) AND NOT d.unreadable
                    THEN COALESCE(
                        '1' || NULLIF(d.doc ->> 'anchor_grade', ''),
                        '2' || NULLIF(d.doc ->> 'known_grade', ''),
                        '3' || (
                            SELECT r.grade FROM anchor_essay_references AS r
                            WHERE r.assignment_id = u.assignment_id
                              AND r.text_storage_id = COALESCE(
                                  NULLIF(d.text_storage_id, ''),
                                  CASE WHEN json_typeof(d.doc -> 'text_storage_id') = 'string'
                                       THEN NULLIF(d.doc ->> 'text_storage_id', '') END)
                              AND r.grade_scale = (
                                  SELECT i.grade_scale FROM assessment_instructions AS i
                                  WHERE i.assignment_id = u.assignment_id)
                            LIMIT 1),
                        '4' || (
                            SELECT r.grade FROM anchor_essay_references AS r
                            WHERE r.id = CASE
                                      WHEN json_typeof(d.doc -> 'anchor_ref_id') = 'string'
                                           AND d.doc ->> 'anchor_ref_id' ~ '^[1-9][0-9]{0,8}$'
                                      THEN (d.doc ->> 'anchor_ref_id')::integer END
                              AND r.assignment_id = u.assignment_id
                              AND r.grade_scale = (
                                  SELECT i.grade_scale FROM assessment_instructions AS i
                                  WHERE i.assignment_id = u.assignment_id))
                    ) END AS resolved
                FROM (
                    SELECT
                        d0.els_essay_id,
                        d0.is_anchor,
                        d0.text_storage_id,
                        d0.doc,
                        (d0.metadata IS NOT NULL AND d0.doc IS NULL) AS unreadable,
                        -- Only a real boolean (or its text spelling) counts; anything else,
                        -- and an unreadable document, is "no key".
                        CASE lower(d0.doc ->> 'is_anchor')
                            WHEN 'true' THEN true
                            WHEN 'false' THEN false
                        END AS meta_anchor
                    FROM (
                        SELECT
                            pe.els_essay_id,
                            pe.is_anchor,
                            pe.text_storage_id,
                            pe.processing_metadata AS metadata,
                            cj_health_json(pe.processing_metadata) AS doc
                        FROM cj_processed_essays AS pe
                        WHERE pe.cj_batch_id = u.id
                        -- cj_health_json once per essay: written three times in one level it
                        -- costs more than this level (its strpos on the text is most of it)
                        OFFSET 0
                    ) AS d0
                    -- A fence: without it the planner inlines meta_anchor into every aggregate
                    -- above, re-parsing each essay's json document about ten times (EXPLAIN
                    -- VERBOSE; 80 % of the poll at 100,000 batches, docs/performance.md).
                    OFFSET 0
                ) AS d
                OFFSET 0  -- and the lookup once per essay (its tier and grade both read it)
            ) AS t
        ) AS e
    ) AS es
    CROSS JOIN LATERAL (
        SELECT
            count(*) AS grade_projections,
            -- the letter_grade pattern ^([A-F][+-]?|U)$ as a list (hashed: cheaper than a regex)
            count(*) FILTER (WHERE g.primary_grade NOT IN (
                'A', 'A+', 'A-', 'B', 'B+', 'B-', 'C', 'C+', 'C-', 'D', 'D+', 'D-', 'E', 'E+',
                'E-', 'F', 'F+', 'F-', 'U')) AS unpublishable_projections
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
        -- The run's result events (aggregate_id = the CJ batch id), counted on the index.
        SELECT count(*) AS result_events
        FROM event_outbox AS o
        WHERE o.event_type = 'assessment.result.published' AND o.aggregate_id = u.id::text
    ) AS re
    CROSS JOIN LATERAL (
        -- The last one written (the correction a consumer applied last: RAS is last-writer-wins),
        -- fetched only when there is one, read safely, then its data once (the biggest document
        -- the view reads) and the two keys of that.
        SELECT r1.doc -> 'data' AS data, (r1.event_data IS NOT NULL AND r1.doc IS NULL)
            AS unreadable
        FROM (
            SELECT r0.event_data, cj_health_json(r0.event_data) AS doc
            FROM (
                SELECT (SELECT o.event_data FROM event_outbox AS o
                        WHERE re.result_events > 0
                          AND o.event_type = 'assessment.result.published'
                          AND o.aggregate_id = u.id::text
                        ORDER BY o.created_at DESC, o.id DESC LIMIT 1) AS event_data
                OFFSET 0
            ) AS r0
            OFFSET 0
        ) AS r1
        OFFSET 0
    ) AS rd
    CROSS JOIN LATERAL (
        SELECT rd.data -> 'assignment_id' AS assignment_id,
               rd.data -> 'essay_results' AS essay_results
        OFFSET 0
    ) AS rdata
    CROSS JOIN LATERAL (
        -- Students as upstream's publisher tells them (no ANCHOR_ id prefix), and their grades
        -- other than "U", sorted: what finalization would publish now is one such grade per
        -- projection (a student without one is "U"), so the two sorted lists must be equal.
        -- Comparing lists costs no lookup per student (a permutation of grades among students
        -- is not seen).
        SELECT
            count(*) AS result_students,
            count(*) FILTER (WHERE er.letter_grade IS DISTINCT FROM 'U') AS result_students_graded,
            string_agg(er.letter_grade, ',' ORDER BY er.letter_grade)
                FILTER (WHERE er.letter_grade IS DISTINCT FROM 'U') AS result_grades
        FROM (
            SELECT el.value ->> 'essay_id' AS essay_id,
                   el.value ->> 'letter_grade' AS letter_grade
            FROM json_array_elements(
                CASE WHEN json_typeof(rdata.essay_results) = 'array'
                     THEN rdata.essay_results END) AS el(value)
            OFFSET 0
        ) AS er
        WHERE NOT starts_with(COALESCE(er.essay_id, ''), 'ANCHOR_')
    ) AS rr
    CROSS JOIN LATERAL (
        -- The projections' grades, sorted the same way: only for a run with a result to judge.
        SELECT CASE WHEN rr.result_students > 0 AND gp.grade_projections > 0 THEN (
            SELECT string_agg(g.primary_grade, ',' ORDER BY g.primary_grade)
            FROM grade_projections AS g WHERE g.cj_batch_id = u.id) END AS projected_grades
        OFFSET 0
    ) AS pg
    CROSS JOIN LATERAL (
        -- Resource-consumption events are found by their aggregate_id (the BOS batch id) and
        -- attributed to this run by data.processing_id (R1): one parse of each (#>> walks the
        -- path in one pass); what they charged is read below, only where it is needed.
        SELECT
            count(*) AS resource_events,
            count(*) FILTER (WHERE c.mine) AS charge_events,
            count(*) FILTER (WHERE c.mine AND c.published) AS published_charges,
            count(*) FILTER (WHERE c.unreadable) AS unreadable_charge_events
        FROM (
            SELECT
                d0.published_at IS NOT NULL AS published,
                COALESCE(d0.doc #>> '{data,processing_id}' = u.id::text, false) AS mine,
                d0.doc IS NULL AS unreadable  -- event_data is NOT NULL
            FROM (
                SELECT o.published_at, cj_health_json(o.event_data) AS doc
                FROM event_outbox AS o
                WHERE o.aggregate_id = u.bos_batch_id
                  AND o.event_type = 'huleedu.resource.consumption.v1'
                OFFSET 0  -- cj_health_json once per event
            ) AS d0
            OFFSET 0  -- and whose run it is, once
        ) AS c
    ) AS rc
    CROSS JOIN LATERAL (
        -- What this run's published charges charged (a quantity that is not a whole number
        -- counts 0): their events read again, only where it is needed. The poll does not read
        -- it (the planner drops a column no one reads).
        SELECT COALESCE(CASE WHEN rc.published_charges > 0 THEN (
            SELECT sum(q.quantity)
            FROM (
                SELECT o.id, o.created_at,
                       CASE WHEN x.quantity ~ '^[0-9]{1,15}$' THEN x.quantity::bigint END
                           AS quantity
                FROM event_outbox AS o
                CROSS JOIN LATERAL (
                    SELECT d.doc #>> '{data,processing_id}' AS processing_id,
                           d.doc #>> '{data,quantity}' AS quantity
                    FROM (SELECT cj_health_json(o.event_data) AS doc OFFSET 0) AS d
                    OFFSET 0
                ) AS x
                WHERE o.aggregate_id = u.bos_batch_id
                  AND o.event_type = 'huleedu.resource.consumption.v1'
                  AND o.published_at IS NOT NULL
                  AND x.processing_id = u.id::text
            ) AS q) END, 0)::double precision
            AS charged_quantity
        OFFSET 0
    ) AS cq
    CROSS JOIN LATERAL (
        -- What was charged beyond the first published charge (the legitimate one, in the order
        -- they were written): the refund, read only for a run charged more than once.
        SELECT COALESCE(CASE WHEN rc.published_charges > 1 THEN (
            SELECT COALESCE(sum(q.quantity), 0)
                   - COALESCE((array_agg(q.quantity ORDER BY q.created_at, q.id))[1], 0)
            FROM (
                SELECT o.id, o.created_at,
                       CASE WHEN x.quantity ~ '^[0-9]{1,15}$' THEN x.quantity::bigint END
                           AS quantity
                FROM event_outbox AS o
                CROSS JOIN LATERAL (
                    SELECT d.doc #>> '{data,processing_id}' AS processing_id,
                           d.doc #>> '{data,quantity}' AS quantity
                    FROM (SELECT cj_health_json(o.event_data) AS doc OFFSET 0) AS d
                    OFFSET 0
                ) AS x
                WHERE o.aggregate_id = u.bos_batch_id
                  AND o.event_type = 'huleedu.resource.consumption.v1'
                  AND o.published_at IS NOT NULL
                  AND x.processing_id = u.id::text
            ) AS q) END, 0)::double precision
            AS overcharged_quantity
        OFFSET 0
    ) AS oc
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
