-- cj_outbox_health: one row of outbox-wide facts.
--
-- Each column is its own scalar subquery so that a query selecting only some columns evaluates
-- only those (the exporter's poll reads the cheap backlog columns every poll; the duplicate
-- columns scan the whole outbox history and are meant for people and `inspect`).
--
-- The relay gives up after 5 attempts but leaves the row unpublished forever (no dead-letter
-- table, docs/design.md §F7): those rows are "failed", and they stay in the backlog.
--
-- Documents are read through cj_health_json (sql/views/cj_health_json.sql, the pattern is in
-- sql/views/cj_batch_health.sql): one event that ->/->> cannot read is counted, never fatal.

CREATE OR REPLACE VIEW cj_outbox_health AS
SELECT
    (SELECT count(*) FROM event_outbox WHERE published_at IS NULL) AS unpublished_events,
    (
        SELECT count(*) FROM event_outbox WHERE published_at IS NULL AND retry_count >= 5
    ) AS failed_events,
    -- The age of the backlog is the age of its oldest row with a real date: a row at
    -- '-infinity' (or 'infinity') has no age, and taking min() over it hid the real backlog's
    -- age behind a NULL (exported as 0). Such rows are counted in undated_unpublished_events.
    (
        SELECT min(created_at) FROM event_outbox
        WHERE published_at IS NULL AND isfinite(created_at)
    ) AS oldest_unpublished_at,
    COALESCE(
        (
            SELECT extract(epoch FROM now() - min(created_at))::double precision
            FROM event_outbox WHERE published_at IS NULL AND isfinite(created_at)
        ),
        0
    ) AS oldest_unpublished_age_seconds,
    -- Completion events beyond the first per CJ batch (keyed by cj_assessment_job_id); those
    -- whose document cannot be read have no job id and are counted apart.
    (
        SELECT COALESCE(sum(n - 1), 0) FROM (
            SELECT count(*) AS n FROM (
                SELECT cj_health_json(event_data) AS doc FROM event_outbox
                WHERE event_type = 'huleedu.cj_assessment.completed.v1'
                OFFSET 0
            ) AS d
            WHERE d.doc IS NOT NULL
            GROUP BY d.doc -> 'data' ->> 'cj_assessment_job_id'
        ) AS c
    ) AS duplicate_completion_events,
    -- Result events beyond the first per CJ batch (aggregate_id is the CJ batch id).
    (
        SELECT COALESCE(sum(n - 1), 0) FROM (
            SELECT count(*) AS n FROM event_outbox
            WHERE event_type = 'assessment.result.published'
            GROUP BY aggregate_id
        ) AS r
    ) AS duplicate_result_events,
    -- Resource-consumption events beyond one per finalized run of the BOS batch.
    (
        SELECT COALESCE(sum(GREATEST(rc.n - runs.finalized, 0)), 0) FROM (
            SELECT aggregate_id, count(*) AS n FROM event_outbox
            WHERE event_type = 'huleedu.resource.consumption.v1'
            GROUP BY aggregate_id
        ) AS rc
        CROSS JOIN LATERAL (
            SELECT count(*) AS finalized FROM cj_batch_uploads AS u
            LEFT JOIN cj_batch_states AS s ON s.batch_id = u.id
            WHERE u.bos_batch_id = rc.aggregate_id
              AND (u.status::text LIKE 'COMPLETE%' OR s.state::text IN ('SCORING', 'COMPLETED'))
        ) AS runs
    ) AS duplicate_resource_events,
    -- Appended columns (CREATE OR REPLACE VIEW can only add columns at the end).
    (
        SELECT count(*) FROM event_outbox
        WHERE published_at IS NULL AND NOT isfinite(created_at)
    ) AS undated_unpublished_events,
    (
        SELECT count(*) FROM event_outbox
        WHERE event_type = 'huleedu.cj_assessment.completed.v1'
          AND cj_health_json(event_data) IS NULL
    ) AS unreadable_completion_events;

COMMENT ON VIEW cj_outbox_health IS
    'cj-health-exporter: outbox backlog, permanently failed rows and duplicate events';
