"""Fixtures of the database tier (the session's server and the database factories are in
tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Connection, create_engine


@pytest.fixture
def conn(cj_db: str) -> Iterator[Connection]:
    """A connection to a fresh database with the reference CJ schema and the views, in one
    transaction committed at the end of the test."""
    engine = create_engine(cj_db)
    with engine.begin() as connection:
        yield connection
    engine.dispose()
