"""The view must run unchanged on the schema the CJ service's own migrations produce, and on
its ORM create_all variant (cj_schema.md §1.10). The reference schema must match the migrated
one exactly (columns, types, nullability, defaults, constraints, indexes, enum labels)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, text

from exporter import sqlfiles
from exporter.config import Settings
from exporter.demo import scenarios
from exporter.poll import query
from tests.support.database import Server, drop_database, url_string
from tests.support.paths import ALEMBIC_SCHEMA

ALEMBIC_DUMP = ALEMBIC_SCHEMA
ORM_STATUS_ORDER = ("PENDING", "FETCHING_CONTENT", "PERFORMING_COMPARISONS",
                    "COMPLETE_FORCED_RECOVERY", "COMPLETE_STABLE", "COMPLETE_MAX_COMPARISONS",
                    "COMPLETE_INSUFFICIENT_ESSAYS", "ERROR_PROCESSING", "ERROR_ESSAY_PROCESSING")
NO_DEFAULT_IN_ORM = ("submitted_comparisons", "completed_comparisons", "failed_comparisons",
                     "partial_scoring_triggered", "completion_threshold_pct",
                     "current_iteration")


def alembic_sql() -> str:
    assert ALEMBIC_DUMP.is_file(), f"the upstream schema dump is missing: {ALEMBIC_DUMP}"
    return ALEMBIC_DUMP.read_text()


def create_all_sql() -> str:
    """The reference schema as the ORM's create_all leaves it: Python enum order and no server
    defaults on six cj_batch_states columns."""
    sql = sqlfiles.read("schema/cj_reference.sql")
    labels = ", ".join(f"'{label}'" for label in ORM_STATUS_ORDER)
    sql = re.sub(r"CREATE TYPE cj_batch_status_enum AS ENUM \([^)]*\)",
                 f"CREATE TYPE cj_batch_status_enum AS ENUM ({labels})", sql)
    for column in NO_DEFAULT_IN_ORM:
        sql, n = re.subn(rf"(\n    {column} \w+) DEFAULT \S+ NOT NULL", r"\1 NOT NULL", sql)
        assert n == 1, column
    return sql


def fresh_db(server: Server, name: str, ddl: str) -> Engine:
    admin = create_engine(server.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        conn.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    engine = create_engine(url_string(server.url(name)))
    with engine.begin() as conn:
        sqlfiles.run_script(conn, ddl)
    return engine


@pytest.fixture(params=["alembic_head", "orm_create_all"])
def variant_db(request: pytest.FixtureRequest, pg_server: Server) -> Iterator[Engine]:
    ddl = alembic_sql() if request.param == "alembic_head" else create_all_sql()
    name = f"variant_{request.param}"
    engine = fresh_db(pg_server, name, ddl)
    yield engine
    engine.dispose()
    drop_database(pg_server, name)


def test_views_indexes_and_a_poll_run_unchanged_on_each_variant(variant_db: Engine) -> None:
    with variant_db.begin() as conn:
        sqlfiles.install_views(conn)
        planted = scenarios.seed_demo(conn)
    sqlfiles.install_indexes(variant_db)
    snap = query.poll(variant_db, Settings())
    flagged = {b.cj_batch_id: b.problems for b in snap.batches}
    for batch_id, expected in planted.items():
        assert flagged.get(batch_id, frozenset()) == expected
    assert snap.malformed_rows == 0
    assert snap.outbox.failed_events == 3


def test_orm_variant_really_differs() -> None:
    """Guard against the transformation silently doing nothing."""
    sql = create_all_sql()
    assert "'PERFORMING_COMPARISONS', 'COMPLETE_FORCED_RECOVERY'" in sql
    assert "completion_threshold_pct integer NOT NULL" in sql


CATALOG_QUERIES = {
    "columns": """
        SELECT table_name, column_name, data_type, character_maximum_length, is_nullable,
               regexp_replace(coalesce(column_default, ''), '::[a-z ]+|public\\.', '', 'g')
        FROM information_schema.columns WHERE table_schema = 'public'
          AND table_name NOT IN ('alembic_version', 'cj_batch_health', 'cj_outbox_health')""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace = 'public'::regnamespace
          AND conrelid::regclass::text <> 'alembic_version'""",
    "indexes": """
        SELECT tablename, indexname, replace(indexdef, 'public.', '') FROM pg_indexes
        WHERE schemaname = 'public' AND tablename <> 'alembic_version'""",
    "enums": """
        SELECT t.typname, e.enumsortorder, e.enumlabel FROM pg_enum e
        JOIN pg_type t ON t.oid = e.enumtypid""",
}


def catalog(engine: Engine) -> dict[str, set[tuple[object, ...]]]:
    with engine.connect() as conn:
        return {k: {tuple(r) for r in conn.execute(text(q))} for k, q in CATALOG_QUERIES.items()}


def test_reference_schema_matches_the_migrated_schema(pg_server: Server) -> None:
    reference = fresh_db(pg_server, "schema_reference", sqlfiles.read("schema/cj_reference.sql"))
    migrated = fresh_db(pg_server, "schema_migrated", alembic_sql())
    try:
        ours, theirs = catalog(reference), catalog(migrated)
    finally:
        reference.dispose()
        migrated.dispose()
        drop_database(pg_server, "schema_reference")
        drop_database(pg_server, "schema_migrated")
    assert len(theirs["columns"]) == 97 and len(theirs["enums"]) == 16  # not vacuous
    for kind in CATALOG_QUERIES:
        assert ours[kind] == theirs[kind], (kind, ours[kind] ^ theirs[kind])
