-- Reference copy of the CJ Assessment Service schema at Alembic head 7edaa0e072e7
-- (paunchygent/huleedu services/cj_assessment_service; the tables are docs/design.md §F1-F2).
-- Used by the tests and the demo only: cj-health-exporter never creates or alters these tables
-- in a real CJ database. Names, types, nullability, defaults and constraints follow the migrated
-- schema; the ORM `create_all` variant differs only in enum label order and missing defaults on
-- six cj_batch_states columns (docs/design.md §F1), which tests/db/test_schema_variants.py covers.

CREATE TYPE cj_batch_state_enum AS ENUM (
    'INITIALIZING', 'GENERATING_PAIRS', 'WAITING_CALLBACKS', 'SCORING',
    'COMPLETED', 'FAILED', 'CANCELLED'
);

CREATE TYPE cj_batch_status_enum AS ENUM (
    'PENDING', 'FETCHING_CONTENT', 'PERFORMING_COMPARISONS', 'COMPLETE_STABLE',
    'COMPLETE_MAX_COMPARISONS', 'ERROR_PROCESSING', 'ERROR_ESSAY_PROCESSING',
    'COMPLETE_INSUFFICIENT_ESSAYS', 'COMPLETE_FORCED_RECOVERY'
);

-- one row per CJ run; id is the "CJ batch id" / cj_assessment_job_id
CREATE TABLE cj_batch_uploads (
    id serial NOT NULL,
    bos_batch_id varchar(36) NOT NULL,
    event_correlation_id varchar(36) NOT NULL,
    language varchar(10) NOT NULL,
    course_code varchar(50) NOT NULL,
    expected_essay_count integer NOT NULL,
    status cj_batch_status_enum NOT NULL,
    created_at timestamp without time zone DEFAULT now() NOT NULL,
    updated_at timestamp without time zone DEFAULT now() NOT NULL,
    completed_at timestamp without time zone,
    processing_metadata json,
    assignment_id varchar(100),
    user_id varchar(255),
    org_id varchar(255),
    CONSTRAINT cj_batch_uploads_pkey PRIMARY KEY (id)
);
CREATE INDEX ix_cj_batch_uploads_bos_batch_id ON cj_batch_uploads (bos_batch_id);
CREATE INDEX ix_cj_batch_uploads_status ON cj_batch_uploads (status);
CREATE INDEX ix_cj_batch_uploads_user_id ON cj_batch_uploads (user_id);
CREATE INDEX ix_cj_batch_uploads_org_id ON cj_batch_uploads (org_id);

-- the fine-grained state machine, 1:1 with the upload
CREATE TABLE cj_batch_states (
    batch_id integer NOT NULL,
    state cj_batch_state_enum NOT NULL,
    total_comparisons integer NOT NULL,
    submitted_comparisons integer DEFAULT 0 NOT NULL,
    completed_comparisons integer DEFAULT 0 NOT NULL,
    failed_comparisons integer DEFAULT 0 NOT NULL,
    last_activity_at timestamp with time zone DEFAULT now() NOT NULL,
    partial_scoring_triggered boolean DEFAULT false NOT NULL,
    completion_threshold_pct integer DEFAULT 95 NOT NULL,
    current_iteration integer DEFAULT 0 NOT NULL,
    processing_metadata json,
    total_budget integer,
    CONSTRAINT cj_batch_states_pkey PRIMARY KEY (batch_id),
    CONSTRAINT cj_batch_states_batch_id_fkey FOREIGN KEY (batch_id)
        REFERENCES cj_batch_uploads (id) ON DELETE CASCADE
);
CREATE INDEX ix_cj_batch_states_state ON cj_batch_states (state);

-- students and anchors; els_essay_id is global across batches
CREATE TABLE cj_processed_essays (
    els_essay_id varchar(36) NOT NULL,
    cj_batch_id integer NOT NULL,
    text_storage_id varchar(256) NOT NULL,
    assessment_input_text text NOT NULL,
    current_bt_score double precision,
    comparison_count integer NOT NULL,
    created_at timestamp without time zone DEFAULT now() NOT NULL,
    updated_at timestamp without time zone DEFAULT now() NOT NULL,
    processing_metadata json,
    current_bt_se double precision,
    is_anchor boolean DEFAULT false NOT NULL,
    CONSTRAINT cj_processed_essays_pkey PRIMARY KEY (els_essay_id),
    CONSTRAINT cj_processed_essays_cj_batch_id_fkey FOREIGN KEY (cj_batch_id)
        REFERENCES cj_batch_uploads (id) ON DELETE CASCADE
);
CREATE INDEX ix_cj_processed_essays_cj_batch_id ON cj_processed_essays (cj_batch_id);

-- one row per submitted LLM comparison; winner NULL = callback pending
CREATE TABLE cj_comparison_pairs (
    id serial NOT NULL,
    cj_batch_id integer NOT NULL,
    essay_a_els_id varchar(36) NOT NULL,
    essay_b_els_id varchar(36) NOT NULL,
    prompt_text text NOT NULL,
    winner varchar(20),
    confidence double precision,
    justification text,
    raw_llm_response text,
    error_code varchar(100),
    error_correlation_id uuid,
    error_timestamp timestamp with time zone,
    error_service varchar(100),
    error_details json,
    created_at timestamp without time zone DEFAULT now() NOT NULL,
    processing_metadata json,
    request_correlation_id uuid,
    submitted_at timestamp with time zone,
    completed_at timestamp with time zone,
    pair_generation_mode varchar(20),
    CONSTRAINT cj_comparison_pairs_pkey PRIMARY KEY (id),
    CONSTRAINT cj_comparison_pairs_cj_batch_id_fkey FOREIGN KEY (cj_batch_id)
        REFERENCES cj_batch_uploads (id) ON DELETE CASCADE,
    CONSTRAINT cj_comparison_pairs_essay_a_els_id_fkey FOREIGN KEY (essay_a_els_id)
        REFERENCES cj_processed_essays (els_essay_id),
    CONSTRAINT cj_comparison_pairs_essay_b_els_id_fkey FOREIGN KEY (essay_b_els_id)
        REFERENCES cj_processed_essays (els_essay_id)
);
CREATE INDEX ix_cj_comparison_pairs_cj_batch_id ON cj_comparison_pairs (cj_batch_id);
CREATE INDEX ix_cj_comparison_pairs_essay_a_els_id ON cj_comparison_pairs (essay_a_els_id);
CREATE INDEX ix_cj_comparison_pairs_essay_b_els_id ON cj_comparison_pairs (essay_b_els_id);
CREATE INDEX ix_cj_comparison_pairs_pair_generation_mode
    ON cj_comparison_pairs (pair_generation_mode);
CREATE INDEX ix_cj_comparison_pairs_request_correlation_id
    ON cj_comparison_pairs (request_correlation_id);

-- students only; no ON DELETE CASCADE on either FK (since 4aefc9fed780)
CREATE TABLE grade_projections (
    els_essay_id varchar(255) NOT NULL,
    cj_batch_id integer NOT NULL,
    primary_grade varchar(4) NOT NULL,
    confidence_score double precision NOT NULL,
    confidence_label varchar(10) NOT NULL,
    calculation_metadata json NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    assessment_method varchar(50) DEFAULT 'cj_assessment' NOT NULL,
    model_used varchar(100),
    model_provider varchar(50),
    normalized_score double precision,
    population_prior double precision,
    grade_scale varchar(50) DEFAULT 'swedish_8_anchor' NOT NULL,
    CONSTRAINT grade_projections_pkey PRIMARY KEY (els_essay_id, cj_batch_id),
    CONSTRAINT grade_projections_els_essay_id_fkey FOREIGN KEY (els_essay_id)
        REFERENCES cj_processed_essays (els_essay_id),
    CONSTRAINT grade_projections_cj_batch_id_fkey FOREIGN KEY (cj_batch_id)
        REFERENCES cj_batch_uploads (id)
);
CREATE INDEX idx_batch_grade ON grade_projections (cj_batch_id, primary_grade);
CREATE INDEX ix_grade_projections_grade_scale ON grade_projections (grade_scale);

-- the assignment's anchor essays and their grades (resolved by text_storage_id, §F8)
CREATE TABLE anchor_essay_references (
    id serial NOT NULL,
    grade varchar(4) NOT NULL,
    text_storage_id varchar(255) NOT NULL,
    assignment_id varchar(100),
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    grade_scale varchar(50) DEFAULT 'swedish_8_anchor' NOT NULL,
    anchor_label varchar(255) NOT NULL,
    CONSTRAINT anchor_essay_references_pkey PRIMARY KEY (id),
    CONSTRAINT uq_anchor_assignment_label_scale UNIQUE (assignment_id, anchor_label, grade_scale)
);
CREATE INDEX ix_anchor_essay_references_anchor_label ON anchor_essay_references (anchor_label);
CREATE INDEX ix_anchor_essay_references_assignment_id ON anchor_essay_references (assignment_id);
CREATE INDEX ix_anchor_essay_references_grade ON anchor_essay_references (grade);
CREATE INDEX ix_anchor_essay_references_grade_scale ON anchor_essay_references (grade_scale);

-- an assignment's instructions and grade scale
CREATE TABLE assessment_instructions (
    id serial NOT NULL,
    assignment_id varchar(100),
    course_id varchar(50),
    instructions_text text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    grade_scale varchar(50) DEFAULT 'swedish_8_anchor' NOT NULL,
    student_prompt_storage_id varchar(255),
    judge_rubric_storage_id varchar(255),
    context_origin varchar(64) DEFAULT 'research_experiment' NOT NULL,
    CONSTRAINT assessment_instructions_pkey PRIMARY KEY (id),
    CONSTRAINT chk_context_type CHECK (
        (assignment_id IS NOT NULL AND course_id IS NULL)
        OR (assignment_id IS NULL AND course_id IS NOT NULL)
    )
);
CREATE UNIQUE INDEX ix_assessment_instructions_assignment_id
    ON assessment_instructions (assignment_id);
CREATE INDEX ix_assessment_instructions_course_id ON assessment_instructions (course_id);
CREATE INDEX ix_assessment_instructions_grade_scale ON assessment_instructions (grade_scale);
CREATE INDEX ix_assessment_instructions_student_prompt_storage_id
    ON assessment_instructions (student_prompt_storage_id);
CREATE INDEX ix_assessment_instructions_judge_rubric_storage_id
    ON assessment_instructions (judge_rubric_storage_id);
CREATE INDEX ix_assessment_instructions_context_origin ON assessment_instructions (context_origin);

-- transactional outbox; event_data is the serialized EventEnvelope plus a "topic" key
CREATE TABLE event_outbox (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    aggregate_id varchar(255) NOT NULL,
    aggregate_type varchar(100) NOT NULL,
    event_type varchar(255) NOT NULL,
    event_data json NOT NULL,
    event_key varchar(255),
    topic varchar(255) NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    published_at timestamp with time zone,
    retry_count integer DEFAULT 0 NOT NULL,
    last_error text,
    CONSTRAINT event_outbox_pkey PRIMARY KEY (id)
);
CREATE INDEX ix_event_outbox_aggregate_id ON event_outbox (aggregate_id);
CREATE UNIQUE INDEX idx_outbox_unique_unpublished
    ON event_outbox (aggregate_id, event_type) WHERE published_at IS NULL;
