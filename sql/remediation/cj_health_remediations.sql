-- cj-health-exporter's finalizer: its audit trail and its maintenance switch.
--
-- Created by `cj-health-exporter install-view --remediation` only: a database whose exporter
-- never remediates gets no table of ours besides the views. Every statement is idempotent.
-- Grants (sql/roles.sql): the finalizer's write role may SELECT/INSERT the audit rows (never
-- UPDATE/DELETE them) and only read the pause switch; people pause and resume.
--
-- No foreign key to cj_batch_uploads on purpose: the audit must survive the batch, and an
-- audit insert must never wait on a lock held on a CJ row.

CREATE TABLE IF NOT EXISTS cj_health_remediations (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    replica text NOT NULL,
    cj_batch_id integer NOT NULL,
    action text NOT NULL CHECK (action IN ('backfill_anchors', 'refinalize')),
    dry_run boolean NOT NULL,
    outcome text NOT NULL,
    detail jsonb NOT NULL DEFAULT '{}'::jsonb
);

-- The outcomes of exporter/vocabulary.py (OUTCOMES). Replaced on every install, so that an
-- existing audit table takes an outcome added since (`closed`); the lock is on our own table
-- only, for the time it takes to check its rows.
ALTER TABLE cj_health_remediations
    DROP CONSTRAINT IF EXISTS cj_health_remediations_outcome_check,
    ADD CONSTRAINT cj_health_remediations_outcome_check
        CHECK (outcome IN ('applied', 'closed', 'dry_run', 'skipped', 'needs_person', 'failed'));

-- Valves read a batch's history per action: attempts (max_attempts) and the last one (cooldown).
CREATE INDEX IF NOT EXISTS cj_health_remediations_batch_action_idx
    ON cj_health_remediations (cj_batch_id, action, at);

COMMENT ON TABLE cj_health_remediations IS
    'cj-health-exporter: one row per remediation action (applied, planned, skipped, refused)';

-- The maintenance switch: while this table holds its single row, no replica takes any action.
CREATE TABLE IF NOT EXISTS cj_health_remediation_pause (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    paused_at timestamptz NOT NULL DEFAULT now(),
    paused_by text NOT NULL,
    reason text NOT NULL
);

COMMENT ON TABLE cj_health_remediation_pause IS
    'cj-health-exporter: a row here pauses all remediation (cj-health-exporter remediate --pause)';
