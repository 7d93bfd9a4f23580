"""The schema variants tests/db/test_schema_variants.py runs the views on, checked without a
database: the ORM create_all variant really differs from the reference schema."""

from __future__ import annotations

from tests.support.database import orm_create_all_ddl


def test_orm_variant_really_differs() -> None:
    """Guard against the transformation silently doing nothing."""
    sql = orm_create_all_ddl()
    assert "'PERFORMING_COMPARISONS', 'COMPLETE_FORCED_RECOVERY'" in sql
    assert "completion_threshold_pct integer NOT NULL" in sql
