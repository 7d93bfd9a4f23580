-- cj_health_json(doc): read a `json` document of the CJ service safely.
--
-- The CJ tables hold `json` (not `jsonb`) documents, and PostgreSQL accepts into a `json`
-- column documents that its own operators cannot read: `->`, `->>` and everything built on them
-- de-escape EVERY string of the document and recurse through every level, so one of
--   * a `\u0000` escape (what Python's json.dumps writes for a NUL character),
--   * a lone UTF-16 surrogate escape such as `\ud800`,
--   * nesting deeper than the stack allows (about 16,000 levels on PostgreSQL 16 and 13,000 on
--     15 with the default max_stack_depth of 2 MB, far fewer with a smaller one),
--   * (in a database whose encoding is not UTF8) an escape of a character the encoding lacks,
-- anywhere in a document fails the whole statement that reads any key of it. In the view that
-- would be every poll. Casting `json` to `text` never fails (it is the stored text).
--
-- The pattern, for every document the views read (and anything added to them later):
--
--     cj_health_json(t.some_json_column) AS doc     -- once per row, in a fenced subquery
--     ... doc ->> 'key' ...                          -- NULL when the document is unreadable
--     (t.some_json_column IS NOT NULL AND doc IS NULL) AS unreadable  -- count it, never raise
--
-- cj_health_json returns the document itself when `->`/`->>` can read it and NULL when they
-- cannot, so an unreadable document behaves like a missing one (its facts are unknown) and is
-- counted by the view's unreadable_* columns. It is never part of an index: nothing here can
-- make a write of the CJ service fail.
--
-- Cost: a cheap test on the text decides for almost every document (no escape PostgreSQL
-- cannot decode, and too short to nest deeply); only a document that fails it (it holds
-- `\u0000` or a surrogate escape, emoji written by json.dumps included, or is longer than
-- max_stack_depth / 256 bytes, 8 kB by default) is parsed once inside an exception block
-- (cj_health_json_parses: one subtransaction, a few microseconds, plus the parse).
--
-- Both functions are created in the schema of the views (the first of the installer's
-- search_path) by `cj-health-exporter install-view`; sql/roles.sql grants EXECUTE on them.

-- The expensive path: parse the whole document exactly as `->` does (every string de-escaped,
-- every level visited) and say whether that worked. Not IMMUTABLE: the answer depends on
-- max_stack_depth and on the database encoding. PARALLEL RESTRICTED: an exception block opens a
-- subtransaction, which only the leader of a parallel query may do.
CREATE OR REPLACE FUNCTION cj_health_json_parses(doc json) RETURNS boolean
    LANGUAGE plpgsql STABLE STRICT PARALLEL RESTRICTED
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- `->` on an array or a scalar still parses all of it (and returns NULL).
    PERFORM doc -> '';
    RETURN true;
EXCEPTION
    -- class 22 (data_exception): 22P05 "unsupported Unicode escape sequence" for \u0000,
    -- 22P02 "invalid input syntax for type json" for a lone surrogate, 22021 for a character
    -- the encoding lacks. Class 54 (program_limit_exceeded): 54001 "stack depth limit
    -- exceeded". A cancel or statement_timeout is never caught (plpgsql cannot catch them).
    WHEN data_exception OR program_limit_exceeded THEN
        RETURN false;
END
$$;

COMMENT ON FUNCTION cj_health_json_parses(json) IS
    'cj-health-exporter: true when ->/->> can read the whole json document (see cj_health_json)';

-- The primitive: the document when it is readable, NULL when it is not (or is NULL).
-- A SQL-standard body (bound when created, so the caller's search_path cannot change what it
-- calls) that the planner inlines into the query: the cheap test costs no function call.
CREATE OR REPLACE FUNCTION cj_health_json(doc json) RETURNS json
    LANGUAGE sql STABLE PARALLEL RESTRICTED
RETURN CASE
    WHEN doc IS NULL THEN NULL
    -- Only \u0000 and surrogate escapes fail in a UTF8 database ('\\u' is a backslash and a
    -- u; a false alarm such as an escaped backslash followed by "u0000" only costs the slow
    -- path). In another encoding any \u escape may fail.
    WHEN strpos(doc::text, '\u') > 0
         AND (getdatabaseencoding() <> 'UTF8' OR doc::text ~* '\\u(0000|d[89a-f])')
        THEN CASE WHEN cj_health_json_parses(doc) THEN doc END
    -- Nesting takes two bytes per level, and PostgreSQL reads 6 to 8 levels per kB of
    -- max_stack_depth (16,364 at the default 2 MB on PostgreSQL 16, 13,090 on 15): a document
    -- of at most max_stack_depth / 256 bytes nests at most 2 levels per kB, a third of that
    -- or less. 400 bytes is that bound at the 100 kB minimum, so short documents (most essay
    -- metadata) skip reading the setting; longer ones up to the bound (8 kB at 2 MB) pay for
    -- it (under a microsecond), and longer still are parsed once more on the slow path
    -- (cheaper than counting their brackets: translate() costs 12 us per kB).
    WHEN octet_length(doc::text) <= 400 THEN doc
    WHEN octet_length(doc::text) <= pg_size_bytes(current_setting('max_stack_depth')) / 256
        THEN doc
    ELSE CASE WHEN cj_health_json_parses(doc) THEN doc END
END;

COMMENT ON FUNCTION cj_health_json(json) IS
    'cj-health-exporter: the json document if ->/->> can read it, else NULL (never an error)';
