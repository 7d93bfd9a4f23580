"""Real PostgreSQL for the tests: testcontainers when a Docker engine answers, else pgserver.

One server per test session; every test gets its own database cloned from a template that
already holds the reference CJ schema and the views (CREATE DATABASE ... TEMPLATE is ~50 ms).
The backend that ran is printed in the pytest summary.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL

from exporter import sqlfiles
from exporter.demo import scenarios
from exporter.demo.embedded import EmbeddedPostgres, runtime_dir_env

TEMPLATE = "cj_template"
_BACKEND: dict[str, str] = {}
_counter = itertools.count()


class Server(Protocol):
    def url(self, database: str = "postgres") -> URL: ...


class ContainerServer:
    """postgres:15 as upstream runs it, when a Docker engine is available."""

    def __init__(self) -> None:
        try:
            from testcontainers.community.postgres import PostgresContainer
        except ImportError:  # testcontainers < 4.14
            from testcontainers.postgres import PostgresContainer

        self.container: Any = PostgresContainer("postgres:15", driver="psycopg").start()

    def url(self, database: str = "postgres") -> URL:
        base = URL.create(
            "postgresql+psycopg", username=self.container.username,
            password=self.container.password, host=self.container.get_container_host_ip(),
            port=int(self.container.get_exposed_port(5432)), database=database)
        return base

    def close(self) -> None:
        self.container.stop()


def _start_server() -> tuple[Any, str]:
    if os.environ.get("CJ_HEALTH_TEST_BACKEND", "auto") in ("auto", "docker"):
        try:
            return ContainerServer(), "testcontainers postgres:15"
        except Exception as exc:  # docker.errors.DockerException when no engine answers
            reason = str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__
            _BACKEND["fallback"] = f"no Docker engine ({reason})"
    runtime_dir_env()
    return EmbeddedPostgres(), "pgserver (embedded PostgreSQL 16)"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    server, name = _start_server()
    _BACKEND["name"] = name
    admin = create_engine(server.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {TEMPLATE}"))
        conn.execute(text(f"CREATE DATABASE {TEMPLATE}"))
    admin.dispose()
    template = create_engine(server.url(TEMPLATE))
    with template.begin() as conn:
        sqlfiles.load_reference_schema(conn)
        sqlfiles.install_views(conn)
    sqlfiles.install_indexes(template)
    template.dispose()
    yield server
    server.close()


def new_database(server: Server, template: str = TEMPLATE) -> str:
    name = f"t_{os.getpid()}_{next(_counter)}"
    admin = create_engine(server.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name} TEMPLATE {template}"))
    admin.dispose()
    return name


def drop_database(server: Server, name: str) -> None:
    admin = create_engine(server.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()


def url_string(url: URL) -> str:
    return url.render_as_string(hide_password=False)


@pytest.fixture
def cj_db(pg_server: Server) -> Iterator[str]:
    """A fresh database with the reference CJ schema and the views; yields its URL."""
    name = new_database(pg_server)
    yield url_string(pg_server.url(name))
    drop_database(pg_server, name)


@dataclass(frozen=True)
class SeededDb:
    url: str
    planted: dict[int, frozenset[str]]


@pytest.fixture
def seeded_db(cj_db: str) -> SeededDb:
    """`cj_db` with the demo scenarios; `.planted` maps cj_batch_id -> expected problems."""
    engine = create_engine(cj_db)
    with engine.begin() as conn:
        planted = scenarios.seed_demo(conn)
    engine.dispose()
    return SeededDb(cj_db, planted)


@pytest.fixture
def remediation_db(seeded_db: SeededDb) -> Iterator[Any]:
    """`seeded_db` plus the finalizer's audit and pause tables (a RemediationDb)."""
    from exporter.finalizer import audit  # only the remediation tests pay for numpy & co
    from tests.remediation_support import RemediationDb

    engine = create_engine(seeded_db.url)
    with engine.begin() as conn:
        audit.install(conn)
    yield RemediationDb(seeded_db.url, engine, seeded_db.planted)
    engine.dispose()


def seeded_own_postgres() -> EmbeddedPostgres:
    """A pgserver of the caller's own (it may stop, restart or reconfigure it), with the
    reference schema, the views and the demo scenarios in its `postgres` database."""
    runtime_dir_env()
    pg = EmbeddedPostgres()
    try:
        engine = create_engine(pg.url())
        with engine.begin() as conn:
            sqlfiles.load_reference_schema(conn)
            sqlfiles.install_views(conn)
            scenarios.seed_demo(conn)
        engine.dispose()
    except BaseException:
        pg.close()
        raise
    return pg


@pytest.fixture
def own_postgres() -> Iterator[EmbeddedPostgres]:
    """`seeded_own_postgres()` for one test, always closed."""
    pg = seeded_own_postgres()
    try:
        yield pg
    finally:
        pg.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if "name" in _BACKEND:
        line = f"PostgreSQL backend: {_BACKEND['name']}"
        if "fallback" in _BACKEND:
            line += f" ({_BACKEND['fallback']})"
        terminalreporter.write_line(line)
