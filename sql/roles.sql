-- cj-health-exporter: least-privilege roles for a CJ database. Run with psql as a role that may
-- create roles AND grant on the CJ tables (a superuser, or the tables' owner if it has
-- CREATEROLE), in the CJ database, AFTER `cj-health-exporter install-view` (and
-- `install-view --remediation` if the finalizer is used). The file ships in the wheel:
-- `cj-health-exporter assets roles.sql` prints where it is.
--
--   psql "postgresql://admin@cj-db/huleedu_cj_assessment" -v ON_ERROR_STOP=1 \
--       -f "$(cj-health-exporter assets roles.sql)"
--
-- It is idempotent and authoritative: every run first revokes what these roles hold on the
-- schema's tables, then grants exactly what is below. Re-run it after every upgrade of the
-- exporter (a new column read by a new version needs its grant; the test suite runs the poller
-- and the finalizer under these roles, so a missing grant fails CI, not production).
--
-- Roles (names are psql variables; the defaults are shown):
--   ro_role  cj_health_ro          LOGIN. `serve` polls with it. SELECT on the two views, and
--                                  on the id, timestamp and xmin columns the poll's watched set
--                                  and change signals read. It cannot read an essay, a prompt,
--                                  a grade or an event, nor write.
--   rw_role  cj_health_remediator  LOGIN. The finalizer's write DSN. Reads what re-finalizing a
--                                  batch needs; UPDATEs only the columns upstream's
--                                  finalize_scoring changes; INSERTs grade projections, outbox
--                                  events and audit rows. No DELETE, no TRUNCATE, no DDL anywhere.
--   op_role  cj_health_operator    NOLOGIN, for people: grant it to a person's own login role
--                                  (GRANT cj_health_operator TO alice). Polling and finalizer
--                                  rights, what `inspect` and the runbooks' SQL read
--                                  (docs/runbooks/), and the pause switch
--                                  (`remediate --pause/--resume`). Still never an essay text,
--                                  an LLM prompt, a justification or a raw LLM response.
--
-- Passwords never live in this file. Either set one afterwards with psql's \password (it sends
-- only a SCRAM verifier, so the server log never sees the password), or pass a variable, ideally
-- holding a SCRAM verifier rather than the clear text:
--   psql ... -v ro_password='SCRAM-SHA-256$4096:...' -v rw_password='SCRAM-SHA-256$4096:...'
-- Other variables: schema (default public), ro_connection_limit and rw_connection_limit (10).

\set ON_ERROR_STOP on
\if :{?ro_role}
\else
  \set ro_role cj_health_ro
\endif
\if :{?rw_role}
\else
  \set rw_role cj_health_remediator
\endif
\if :{?op_role}
\else
  \set op_role cj_health_operator
\endif
\if :{?schema}
\else
  \set schema public
\endif
\if :{?ro_connection_limit}
\else
  \set ro_connection_limit 10
\endif
\if :{?rw_connection_limit}
\else
  \set rw_connection_limit 10
\endif

BEGIN;

-- Create the roles that do not exist yet (CREATE ROLE has no IF NOT EXISTS).
SELECT format('CREATE ROLE %I', name)
FROM (VALUES (:'ro_role'), (:'rw_role'), (:'op_role')) AS r(name)
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r.name)
\gexec

-- Login roles that can do nothing beyond their grants: no superuser, no role or database
-- creation, no replication, no row-level-security bypass, and no inheritance of other roles
-- someone might grant them later by mistake.
ALTER ROLE :"ro_role" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    NOINHERIT CONNECTION LIMIT :ro_connection_limit;
ALTER ROLE :"rw_role" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    NOINHERIT CONNECTION LIMIT :rw_connection_limit;
ALTER ROLE :"op_role" NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    INHERIT;

\if :{?ro_password}
ALTER ROLE :"ro_role" PASSWORD :'ro_password';
\endif
\if :{?rw_password}
ALTER ROLE :"rw_role" PASSWORD :'rw_password';
\endif

-- Session defaults, set on the role so they hold whatever the client does or forgets:
-- - default_transaction_read_only: every transaction of the polling role is read-only, a second
--   wall behind the missing write grants (a session could turn it off; it cannot grant itself).
-- - search_path pinned to the CJ schema: no object in a schema named like the role (the default
--   "$user" entry) can shadow a CJ table or a function the queries call.
-- - statement_timeout / lock_timeout: outer bounds; the exporter sets tighter ones per
--   transaction. idle_in_transaction_session_timeout: a hung process cannot hold a snapshot
--   (it stops vacuum) or row locks for long. idle_session_timeout is deliberately NOT set: the
--   finalizer's leader lock lives on an idle session.
ALTER ROLE :"ro_role" SET default_transaction_read_only = on;
ALTER ROLE :"ro_role" SET search_path = :"schema";
ALTER ROLE :"ro_role" SET statement_timeout = '30s';
ALTER ROLE :"ro_role" SET lock_timeout = '5s';
ALTER ROLE :"ro_role" SET idle_in_transaction_session_timeout = '60s';
ALTER ROLE :"rw_role" SET search_path = :"schema";
ALTER ROLE :"rw_role" SET statement_timeout = '60s';
ALTER ROLE :"rw_role" SET lock_timeout = '5s';
ALTER ROLE :"rw_role" SET idle_in_transaction_session_timeout = '60s';

-- Authoritative: start from nothing on the schema's tables, views and sequences.
REVOKE ALL ON ALL TABLES IN SCHEMA :"schema" FROM :"ro_role", :"rw_role", :"op_role";
REVOKE ALL ON ALL SEQUENCES IN SCHEMA :"schema" FROM :"ro_role", :"rw_role", :"op_role";
REVOKE ALL ON SCHEMA :"schema" FROM :"ro_role", :"rw_role", :"op_role";

GRANT CONNECT ON DATABASE :"DBNAME" TO :"ro_role", :"rw_role";
GRANT USAGE ON SCHEMA :"schema" TO :"ro_role", :"rw_role", :"op_role";

-- ---------------------------------------------------------------------------------------------
-- Polling (cj_health_ro). The views run with their owner's rights, so reading them needs no
-- grant on the tables behind them. The poll's watched-set filter (exporter/poll/watched.py)
-- reads three columns of cj_batch_states and two of cj_batch_uploads directly, for its index
-- scans.
-- ---------------------------------------------------------------------------------------------
SET LOCAL search_path = :"schema";
GRANT SELECT ON cj_batch_health, cj_outbox_health TO :"ro_role";
-- `charges` (exporter/commands/charges.py): each charge's run, user, org, quantity and time
-- through the view cj_charge_events, never the events themselves.
GRANT SELECT ON cj_charge_events TO :"ro_role";
-- Functions a view calls run with the caller's rights: the views read every JSON document
-- through these (sql/views/cj_health_json.sql), so both login roles need EXECUTE (PUBLIC's
-- default grant may have been revoked by the DBA).
GRANT EXECUTE ON FUNCTION cj_health_json(json), cj_health_json_parses(json)
    TO :"ro_role", :"rw_role";
GRANT SELECT (batch_id, state, last_activity_at) ON cj_batch_states TO :"ro_role";
GRANT SELECT (id, status) ON cj_batch_uploads TO :"ro_role";
-- The incremental poll's change signals (exporter/poll/changes.py): ids, timestamps, and the
-- system column xmin (which transaction wrote the row version), never a document or a grade.
GRANT SELECT (xmin) ON cj_batch_states TO :"ro_role";
GRANT SELECT (bos_batch_id, updated_at, xmin) ON cj_batch_uploads TO :"ro_role";
GRANT SELECT (cj_batch_id, updated_at, xmin) ON cj_processed_essays TO :"ro_role";
GRANT SELECT (cj_batch_id, created_at, xmin) ON grade_projections TO :"ro_role";
GRANT SELECT (aggregate_id, created_at, xmin) ON event_outbox TO :"ro_role";

-- ---------------------------------------------------------------------------------------------
-- Remediation (cj_health_remediator): exporter/finalizer/ (store.py, candidates.py, audit.py,
-- events.py). SELECT ... FOR UPDATE SKIP LOCKED needs UPDATE on some column of the table.
-- ---------------------------------------------------------------------------------------------
GRANT SELECT ON cj_batch_health TO :"rw_role";
GRANT SELECT (id, bos_batch_id, event_correlation_id, status, user_id, org_id, assignment_id,
              course_code, created_at, completed_at, updated_at) ON cj_batch_uploads
    TO :"rw_role";
GRANT UPDATE (status, completed_at, updated_at) ON cj_batch_uploads TO :"rw_role";
GRANT SELECT (batch_id, state, total_budget, submitted_comparisons, completed_comparisons,
              failed_comparisons, last_activity_at) ON cj_batch_states TO :"rw_role";
GRANT UPDATE (state, last_activity_at) ON cj_batch_states TO :"rw_role";
-- Essays: ids, flags and metadata, never assessment_input_text (the student's essay). ctid:
-- upstream's SE reference is the last anchor in the physical row order (ORDER BY ctid).
GRANT SELECT (els_essay_id, cj_batch_id, is_anchor, processing_metadata, text_storage_id, ctid)
    ON cj_processed_essays TO :"rw_role";
GRANT UPDATE (is_anchor, current_bt_score, current_bt_se, comparison_count, updated_at)
    ON cj_processed_essays TO :"rw_role";
-- Comparisons: who won and the LLM's provider/model, never the prompt or the justification
-- (error_code: the model is attributed from comparisons without one, a tie going to the pair
-- met first in row order, ctid).
GRANT SELECT (id, cj_batch_id, essay_a_els_id, essay_b_els_id, winner, processing_metadata,
              error_code, ctid)
    ON cj_comparison_pairs TO :"rw_role";
GRANT SELECT (id, assignment_id, course_id, grade_scale) ON assessment_instructions
    TO :"rw_role";
GRANT SELECT (id, grade, text_storage_id, assignment_id, grade_scale)
    ON anchor_essay_references TO :"rw_role";
-- Projections are replaced, never inserted twice (INSERT ... ON CONFLICT DO UPDATE of the
-- computed columns, which reads the conflict target and the columns it sets). Never deleted.
GRANT SELECT (els_essay_id, cj_batch_id, primary_grade, confidence_score, confidence_label,
              calculation_metadata, population_prior, grade_scale, created_at)
    ON grade_projections TO :"rw_role";
GRANT INSERT (els_essay_id, cj_batch_id, primary_grade, confidence_score, confidence_label,
              calculation_metadata, population_prior, grade_scale, created_at)
    ON grade_projections TO :"rw_role";
GRANT UPDATE (primary_grade, confidence_score, confidence_label, calculation_metadata,
              population_prior, grade_scale, created_at)
    ON grade_projections TO :"rw_role";
-- The policy reads the run's events (and whether its last result is still unpublished); the
-- events are inserted, never changed.
GRANT SELECT (event_type, aggregate_id, event_data, created_at, published_at) ON event_outbox
    TO :"rw_role";
GRANT INSERT ON event_outbox TO :"rw_role";

-- The audit trail and the pause switch exist only after `install-view --remediation`.
SELECT to_regclass(format('%I.cj_health_remediations', :'schema')) IS NOT NULL AS has_audit
\gset
\if :has_audit
GRANT SELECT, INSERT ON cj_health_remediations TO :"rw_role";
GRANT USAGE ON SEQUENCE cj_health_remediations_id_seq TO :"rw_role";
-- The finalizer obeys the pause; only people (op_role) set and lift it.
GRANT SELECT ON cj_health_remediation_pause TO :"rw_role";
GRANT SELECT, INSERT, UPDATE, DELETE ON cj_health_remediation_pause TO :"op_role";
GRANT SELECT ON cj_health_remediations TO :"op_role";
\else
\echo 'cj_health_remediations is missing: run install-view --remediation, then this file again'
\endif

-- ---------------------------------------------------------------------------------------------
-- People (cj_health_operator): `inspect` lists a batch's outbox rows, the runbooks' SQL reads
-- the columns below (a test runs every statement of docs/runbooks/ under this role), and the
-- manual `remediate` runs with the finalizer's rights. Membership is granted without ADMIN
-- OPTION.
-- ---------------------------------------------------------------------------------------------
GRANT :"ro_role", :"rw_role" TO :"op_role";
GRANT SELECT (id, event_type, aggregate_type, aggregate_id, event_data, created_at,
              published_at, retry_count, last_error) ON event_outbox TO :"op_role";
-- The state row's counters and notes: the monitor's failed_reason / forced_to_scoring, the
-- budget, the batching mode, and the request the batch was started with (its assignment
-- settings; it may carry the assignment prompt and rubric as the request did).
GRANT SELECT (total_comparisons, processing_metadata) ON cj_batch_states TO :"op_role";
-- Scores of the failed run (CJBatchStuckScoring, CJBatchCompletedWithoutProjections).
GRANT SELECT (current_bt_score) ON cj_processed_essays TO :"op_role";
-- When open comparisons were sent and how answered ones failed; never the prompt, the
-- justification or the raw response.
GRANT SELECT (submitted_at, error_code) ON cj_comparison_pairs TO :"op_role";

COMMIT;
