"""Real PostgreSQL for the tests: testcontainers when a Docker engine answers, else pgserver.

One server per test session (the `pg_server` fixture of tests/conftest.py); every test gets its
own database cloned from a template that already holds the reference CJ schema and the views
(CREATE DATABASE ... TEMPLATE is ~50 ms). The backend that ran is printed in the pytest summary.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL

from exporter import sqlfiles
from exporter.demo import scenarios
from exporter.demo.embedded import EmbeddedPostgres, runtime_dir_env

TEMPLATE = "cj_template"
BACKEND: dict[str, str] = {}
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
    if os.environ.get("CJ_HEALTH_TESTBACKEND", "auto") in ("auto", "docker"):
        try:
            return ContainerServer(), "testcontainers postgres:15"
        except Exception as exc:  # docker.errors.DockerException when no engine answers
            reason = str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__
            BACKEND["fallback"] = f"no Docker engine ({reason})"
    runtime_dir_env()
    return EmbeddedPostgres(), "pgserver (embedded PostgreSQL 16)"


def start_server() -> Server:
    """The session's server, with the template database ready."""
    server, name = _start_server()
    BACKEND["name"] = name
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
    return server  # type: ignore[no-any-return]


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


@dataclass(frozen=True)
class SeededDb:
    url: str
    planted: dict[int, frozenset[str]]


def seed(url: str) -> SeededDb:
    """The demo scenarios in the database at `url`."""
    engine = create_engine(url)
    with engine.begin() as conn:
        planted = scenarios.seed_demo(conn)
    engine.dispose()
    return SeededDb(url, planted)


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
