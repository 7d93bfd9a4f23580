-- Recommended indexes for cj-health-exporter's poll. Optional: the views are correct without
-- them, only slower. Each statement is CONCURRENTLY (no write lock on the CJ tables) and
-- IF NOT EXISTS (re-running is harmless), so this file must run outside a transaction, one
-- statement at a time (`cj-health-exporter install-view` does that).
--
-- They never change the CJ tables' columns, and every key is a plain column: no row the CJ
-- service can write makes maintaining them fail. Names start with cj_health_ so a DBA can tell
-- them from the service's own indexes.
--
-- A CREATE INDEX CONCURRENTLY that fails (cancelled, timed out) leaves an INVALID index, and
-- IF NOT EXISTS then skips it forever. `install-view` checks pg_index: it drops and rebuilds
-- an INVALID index and never leaves one behind. Run by hand, check afterwards:
--   SELECT indexrelid::regclass FROM pg_index WHERE NOT indisvalid;

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

-- No index over a JSON expression, ever: PostgreSQL evaluates an index expression inside every
-- INSERT into the table, so an expression that can raise makes the CJ service's own write fail.
-- `event_data -> 'data' ->> 'cj_assessment_job_id'` (cj_health_outbox_completion_job_idx, in
-- earlier versions of this file) raises on a document holding a \u0000 or lone-surrogate
-- escape anywhere: the service's finalization failed and the batch wedged. The view finds
-- completion events through aggregate_id (the BOS batch id) with upstream's own index
-- ix_event_outbox_aggregate_id instead; `install-view` drops the old index
-- (exporter/sqlfiles.py, OBSOLETE_INDEXES).

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
