"""The view must run unchanged on the schema the CJ service's own migrations produce, and on
its ORM create_all variant (docs/design.md §F1). The reference schema must match the migrated
one exactly (columns, types, nullability, defaults, constraints, indexes, enum labels)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, text

from exporter import sqlfiles
from exporter.config import Settings
from exporter.demo.scenarios import OUTBOX_FAILED
from exporter.poll import query
from tests.support.database import (
    SeededDb,
    Server,
    alembic_head_ddl,
    database,
    orm_create_all_ddl,
)


@pytest.fixture(params=["alembic_head", "orm_create_all"])
def variant_db(request: pytest.FixtureRequest, pg_server: Server) -> Iterator[SeededDb]:
    """The variant's schema, then the views and the demo scenarios on top of it."""
    ddl = alembic_head_ddl() if request.param == "alembic_head" else orm_create_all_ddl()
    with database(pg_server, ddl=ddl, views=True, demo=True) as db:
        yield db


def test_views_indexes_and_a_poll_run_unchanged_on_each_variant(variant_db: SeededDb) -> None:
    engine = create_engine(variant_db.url)
    sqlfiles.install_indexes(engine)
    snap = query.poll(engine, Settings())
    engine.dispose()
    flagged = {b.cj_batch_id: b.problems for b in snap.batches}
    for batch_id, expected in variant_db.planted.items():
        assert flagged.get(batch_id, frozenset()) == expected
    assert snap.malformed_rows == 0
    assert snap.outbox.failed_events == OUTBOX_FAILED


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


def catalog_of(url: str) -> dict[str, set[tuple[object, ...]]]:
    engine = create_engine(url)
    try:
        return catalog(engine)
    finally:
        engine.dispose()


def test_reference_schema_matches_the_migrated_schema(pg_server: Server) -> None:
    with (database(pg_server, schema="reference") as reference,
          database(pg_server, ddl=alembic_head_ddl()) as migrated):
        ours, theirs = catalog_of(reference.url), catalog_of(migrated.url)
    assert len(theirs["columns"]) == 97 and len(theirs["enums"]) == 16  # not vacuous
    for kind in CATALOG_QUERIES:
        assert ours[kind] == theirs[kind], (kind, ours[kind] ^ theirs[kind])
