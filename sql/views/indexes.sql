-- Recommended indexes for cj-health-exporter's poll. Optional: the views are correct without
-- them, only slower. Each statement is CONCURRENTLY (no write lock on the CJ tables) and
-- IF NOT EXISTS (re-running is harmless), so this file must run outside a transaction, one
-- statement at a time (`cj-health-exporter install-view --indexes` does that).
--
-- They never change the CJ tables' columns. Names start with cj_health_ so a DBA can tell
-- them from the service's own indexes.

-- Watched set, part 1: batches whose state machine is not finished (a small, hot partial index).
CREATE INDEX CONCURRENTLY IF NOT EXISTS cj_health_states_unfinished_idx
    ON cj_batch_states (batch_id)
    WHERE state NOT IN ('COMPLETED', 'FAILED', 'CANCELLED');

-- Watched set, part 2: batches active within the lookback window.
CREATE INDEX CONCURRENTLY IF NOT EXISTS cj_health_states_last_activity_idx
    ON cj_batch_states (last_activity_at);

-- Watched set, part 3: uploads whose status is not terminal.
CREATE INDEX CONCURRENTLY IF NOT EXISTS cj_health_uploads_unfinished_idx
    ON cj_batch_uploads (id)
    WHERE status NOT IN (
        'COMPLETE_STABLE', 'COMPLETE_MAX_COMPARISONS', 'COMPLETE_INSUFFICIENT_ESSAYS',
        'COMPLETE_FORCED_RECOVERY', 'ERROR_PROCESSING', 'ERROR_ESSAY_PROCESSING'
    );

-- Completion events by CJ batch: the view's per-batch lookup and burst window.
CREATE INDEX CONCURRENTLY IF NOT EXISTS cj_health_outbox_completion_job_idx
    ON event_outbox ((event_data -> 'data' ->> 'cj_assessment_job_id'), created_at)
    WHERE event_type = 'huleedu.cj_assessment.completed.v1';

-- Outbox backlog: only unpublished rows, which a healthy relay keeps near zero.
CREATE INDEX CONCURRENTLY IF NOT EXISTS cj_health_outbox_unpublished_idx
    ON event_outbox (created_at) INCLUDE (retry_count)
    WHERE published_at IS NULL;

-- Change signals of the incremental poll (exporter/poll/changes.py): plain btree indexes on
-- timestamp columns, so the poll between two full polls finds the rows stamped since the last
-- one without reading the watched batches' rows. Without all of them every poll is a full poll.
-- (cj_health_states_last_activity_idx above is the signal of cj_batch_states.) They cannot make
-- a write fail: no expression, no predicate, no uniqueness. Their cost to the service: an update
-- that moves updated_at can no longer be a HOT update, so it also writes an entry in each index
-- of its table (uploads: status changes; essays: scoring updates).
CREATE INDEX CONCURRENTLY IF NOT EXISTS cj_health_uploads_updated_idx
    ON cj_batch_uploads (updated_at);

CREATE INDEX CONCURRENTLY IF NOT EXISTS cj_health_essays_updated_idx
    ON cj_processed_essays (updated_at);

CREATE INDEX CONCURRENTLY IF NOT EXISTS cj_health_projections_created_idx
    ON grade_projections (created_at);

CREATE INDEX CONCURRENTLY IF NOT EXISTS cj_health_outbox_created_idx
    ON event_outbox (created_at);
