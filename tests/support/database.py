"""Real PostgreSQL for the tests: testcontainers when a Docker engine answers, else pgserver.

One server per test session (the `pg_server` fixture of tests/conftest.py); every test gets its
own database cloned from a template that already holds the reference CJ schema, the views and
the indexes (CREATE DATABASE ... TEMPLATE is ~50 ms). The backend that ran is printed in the
pytest summary.

Every test database is made by one factory, `database()` (or `create_database()`), from one
recipe, `populate()`: schema, views, the demo scenarios, the finalizer's audit tables, in that
order. A server of a test's own (to stop, restart or reconfigure) is `seeded_own_postgres()`,
filled by the same recipe.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import URL

from exporter import sqlfiles
from exporter.demo import scenarios
from exporter.demo.embedded import EmbeddedPostgres, runtime_dir_env
from tests.support.paths import ALEMBIC_SCHEMA

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
        populate(conn, schema=True, views=True)
    sqlfiles.install_indexes(template)
    template.dispose()
    return server  # type: ignore[no-any-return]


def new_database(server: Server, template: str = TEMPLATE) -> str:
    """A new, uniquely named database on `server`, cloned from `template` (template0 is empty).
    Tests call `database()` / `create_database()`, which fill it by `populate()`."""
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
    """A test database: its URL (with the password), the problems planted per cj_batch_id
    (empty when the demo was not seeded), and its name on the session server."""

    url: str
    planted: dict[int, frozenset[str]]
    name: str = ""


def populate(conn: Connection, *, schema: bool = False, views: bool = False, demo: bool = False,
             remediation: bool = False) -> dict[int, frozenset[str]]:
    """The one recipe for what a test database holds: the reference CJ schema, the views, the
    demo scenarios, the finalizer's audit and pause tables. Returns what the demo planted."""
    if schema:
        sqlfiles.load_reference_schema(conn)
    if views:
        sqlfiles.install_views(conn)
    planted = scenarios.seed_demo(conn) if demo else {}
    if remediation:
        from exporter.finalizer import audit  # only the remediation tests pay for numpy & co

        audit.install(conn)
    return planted


Schema = Literal["template", "reference", "none"]


def create_database(server: Server, *, schema: Schema = "template", ddl: str | None = None,
                    views: bool = False, demo: bool = False,
                    remediation: bool = False) -> SeededDb:
    """A new database on the session server.

    schema: "template" clones the template (reference schema, views, indexes: what `install-view`
    leaves); "reference" has the reference schema alone (no views); "none" is empty. `ddl`, if
    given, is run instead (an upstream schema variant). `views` installs the views on a
    database that is not a template clone. Then the demo scenarios and the audit tables, if
    asked for.
    """
    from_template = schema == "template" and ddl is None
    name = new_database(server, TEMPLATE if from_template else "template0")
    url = url_string(server.url(name))
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            if ddl is not None:
                sqlfiles.run_script(conn, ddl)
            planted = populate(conn, schema=schema == "reference" and ddl is None,
                               views=views and not from_template, demo=demo,
                               remediation=remediation)
    except BaseException:
        drop_database(server, name)
        raise
    finally:
        engine.dispose()
    return SeededDb(url, planted, name)


@contextmanager
def database(server: Server, *, schema: Schema = "template", ddl: str | None = None,
             views: bool = False, demo: bool = False,
             remediation: bool = False) -> Iterator[SeededDb]:
    """`create_database(...)`, dropped when the block ends (also when a test fails)."""
    db = create_database(server, schema=schema, ddl=ddl, views=views, demo=demo,
                         remediation=remediation)
    try:
        yield db
    finally:
        drop_database(server, db.name)


# The CJ service's ORM create_all differs from its migrations (docs/design.md §F1): Python enum
# order for the upload status, and no server defaults on six cj_batch_states columns.
ORM_STATUS_ORDER = ("PENDING", "FETCHING_CONTENT", "PERFORMING_COMPARISONS",
                    "COMPLETE_FORCED_RECOVERY", "COMPLETE_STABLE", "COMPLETE_MAX_COMPARISONS",
                    "COMPLETE_INSUFFICIENT_ESSAYS", "ERROR_PROCESSING", "ERROR_ESSAY_PROCESSING")
NO_DEFAULT_IN_ORM = ("submitted_comparisons", "completed_comparisons", "failed_comparisons",
                     "partial_scoring_triggered", "completion_threshold_pct",
                     "current_iteration")


def alembic_head_ddl() -> str:
    """The schema the CJ service's own migrations produce (its pg_dump, in ../shared)."""
    assert ALEMBIC_SCHEMA.is_file(), f"the upstream schema dump is missing: {ALEMBIC_SCHEMA}"
    return ALEMBIC_SCHEMA.read_text()


def orm_create_all_ddl() -> str:
    """The reference schema as the ORM's create_all leaves it."""
    sql = sqlfiles.read("schema/cj_reference.sql")
    labels = ", ".join(f"'{label}'" for label in ORM_STATUS_ORDER)
    sql = re.sub(r"CREATE TYPE cj_batch_status_enum AS ENUM \([^)]*\)",
                 f"CREATE TYPE cj_batch_status_enum AS ENUM ({labels})", sql)
    for column in NO_DEFAULT_IN_ORM:
        sql, n = re.subn(rf"(\n    {column} \w+) DEFAULT \S+ NOT NULL", r"\1 NOT NULL", sql)
        assert n == 1, column
    return sql


def seed(url: str) -> SeededDb:
    """The demo scenarios in the (existing) database at `url`."""
    engine = create_engine(url)
    with engine.begin() as conn:
        planted = populate(conn, demo=True)
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
            populate(conn, schema=True, views=True, demo=True)
        engine.dispose()
    except BaseException:
        pg.close()
        raise
    return pg
