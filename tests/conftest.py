"""Fixtures shared by every tier. Helpers live in tests/support/ (never import this file)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine

from exporter.demo.embedded import EmbeddedPostgres
from tests.support.database import (
    BACKEND,
    SeededDb,
    Server,
    database,
    seeded_own_postgres,
    start_server,
)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    server = start_server()
    yield server
    server.close()  # type: ignore[attr-defined]


@pytest.fixture
def cj_db(pg_server: Server) -> Iterator[str]:
    """A fresh database with the reference CJ schema and the views; yields its URL."""
    with database(pg_server) as db:
        yield db.url


@pytest.fixture
def seeded_db(pg_server: Server) -> Iterator[SeededDb]:
    """A fresh database with the demo scenarios; `.planted` maps cj_batch_id -> expected
    problems."""
    with database(pg_server, demo=True) as db:
        yield db


@pytest.fixture
def remediation_db(pg_server: Server) -> Iterator[Any]:
    """`seeded_db` plus the finalizer's audit and pause tables (a RemediationDb)."""
    from tests.support.remediation import RemediationDb  # imports the finalizer (numpy & co)

    with database(pg_server, demo=True, remediation=True) as db:
        engine = create_engine(db.url)
        yield RemediationDb(db.url, engine, db.planted)
        engine.dispose()


@pytest.fixture
def own_postgres() -> Iterator[EmbeddedPostgres]:
    """`seeded_own_postgres()` for one test, always closed."""
    pg = seeded_own_postgres()
    try:
        yield pg
    finally:
        pg.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if "name" in BACKEND:
        line = f"PostgreSQL backend: {BACKEND['name']}"
        if "fallback" in BACKEND:
            line += f" ({BACKEND['fallback']})"
        terminalreporter.write_line(line)
