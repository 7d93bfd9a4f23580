-- The least privileges of the finalizer's write role (remediation.write_dsn), as an example.
-- Replace cj_finalizer with your role; run as the owner of the CJ tables after
-- `cj-health-exporter install-view --remediation`. tests/test_remediation_grants.py runs this
-- file and then a whole remediation cycle as that role, so the list is known to be enough.
--
-- Reads: the views (candidates), the comparisons, the assignment context.
GRANT SELECT ON cj_batch_health, cj_outbox_health TO cj_finalizer;
GRANT SELECT ON cj_comparison_pairs, anchor_essay_references, assessment_instructions
    TO cj_finalizer;
-- Row locks (SELECT ... FOR UPDATE needs UPDATE), the anchor backfill, scores, state, status.
GRANT SELECT, UPDATE ON cj_batch_uploads, cj_batch_states, cj_processed_essays TO cj_finalizer;
-- Projections and the three outbox rows: insert only, never update or delete.
GRANT SELECT, INSERT ON grade_projections, event_outbox TO cj_finalizer;
-- Its own audit trail, and reading the maintenance switch.
GRANT SELECT, INSERT ON cj_health_remediations TO cj_finalizer;
GRANT USAGE ON SEQUENCE cj_health_remediations_id_seq TO cj_finalizer;
GRANT SELECT ON cj_health_remediation_pause TO cj_finalizer;
-- Whoever pauses and resumes (`cj-health-exporter remediate --pause/--resume`) also needs:
-- GRANT INSERT, UPDATE, DELETE ON cj_health_remediation_pause TO <operator role>;
