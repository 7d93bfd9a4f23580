"""Fixtures shared by every tier. Helpers live in tests/support/ (never import this file)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine

from exporter.demo.embedded import EmbeddedPostgres
from tests.support import report
from tests.support.database import (
    BACKEND,
    SeededDb,
    Server,
    drop_database,
    new_database,
    seed,
    seeded_own_postgres,
    start_server,
    url_string,
)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    server = start_server()
    yield server
    server.close()  # type: ignore[attr-defined]


@pytest.fixture
def cj_db(pg_server: Server) -> Iterator[str]:
    """A fresh database with the reference CJ schema and the views; yields its URL."""
    name = new_database(pg_server)
    yield url_string(pg_server.url(name))
    drop_database(pg_server, name)


@pytest.fixture
def seeded_db(cj_db: str) -> SeededDb:
    """`cj_db` with the demo scenarios; `.planted` maps cj_batch_id -> expected problems."""
    return seed(cj_db)


@pytest.fixture
def remediation_db(seeded_db: SeededDb) -> Iterator[Any]:
    """`seeded_db` plus the finalizer's audit and pause tables (a RemediationDb)."""
    from exporter.finalizer import audit  # only the remediation tests pay for numpy & co
    from tests.support.remediation import RemediationDb

    engine = create_engine(seeded_db.url)
    with engine.begin() as conn:
        audit.install(conn)
    yield RemediationDb(seeded_db.url, engine, seeded_db.planted)
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
    for line in report.LINES:
        terminalreporter.write_line(line)
    if "name" in BACKEND:
        line = f"PostgreSQL backend: {BACKEND['name']}"
        if "fallback" in BACKEND:
            line += f" ({BACKEND['fallback']})"
        terminalreporter.write_line(line)
