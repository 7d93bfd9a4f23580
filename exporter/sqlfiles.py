"""The project's SQL files: the reference CJ schema (demo/tests) and the views and indexes.

The files live in `sql/` at the repository root and are shipped inside the wheel as
`exporter/sql/`, so both a checkout and a plain `pip install` find them.
"""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

# In install order: the views call the functions of cj_health_json.sql.
VIEW_FILES = ("cj_health_json.sql", "cj_batch_health.sql", "cj_outbox_health.sql",
              "cj_charge_events.sql")
VIEWS = ("cj_batch_health", "cj_outbox_health", "cj_charge_events")
# Indexes earlier versions recommended and that must not stay: install-view drops them.
OBSOLETE_INDEXES = {
    "cj_health_outbox_completion_job_idx":
        "its JSON expression made the CJ service's INSERT of a completion event fail",
}


def sql_dir() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "sql", here.parent / "sql"):
        if (candidate / "views" / "cj_batch_health.sql").is_file():
            return candidate
    raise FileNotFoundError("the sql/ folder of cj-health-exporter is missing from this install")


def read(relative: str) -> str:
    return (sql_dir() / relative).read_text(encoding="utf-8")


def statements(script: str) -> list[str]:
    """Split a script on semicolons that end a line; our files keep one statement per block."""
    without_comments = re.sub(r"--[^\n]*", "", script)
    return [s.strip() for s in re.split(r";\s*\n", without_comments + "\n") if s.strip()]


def run_script(conn: Connection, script: str) -> None:
    """Run a multi-statement script as-is, inside the connection's current transaction.

    Goes to the driver cursor without parameters, so '%' in LIKE patterns is not taken for a
    placeholder and psycopg sends the script in one simple-protocol round trip.
    """
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(script)
    finally:
        cursor.close()


def load_reference_schema(conn: Connection) -> None:
    """Create the CJ tables (demo and tests only: never run against a real CJ database)."""
    run_script(conn, read("schema/cj_reference.sql"))


def install_views(conn: Connection) -> None:
    """CREATE OR REPLACE the functions and both views; idempotent and keeps the grants made on
    them.

    CREATE OR REPLACE cannot change a column's type or drop a column, which an upgrade of this
    project may need: then the view is dropped and created again in the same transaction and
    its grants are issued again, so the polling role keeps its access.
    """
    autocommit = bool(getattr(conn.connection.dbapi_connection, "autocommit", False))
    for name in VIEW_FILES:
        script = read(f"views/{name}")
        # In a transaction the failed CREATE must be undone to a savepoint; in autocommit
        # mode (no transaction block, so no savepoint) it simply did not happen.
        savepoint = None if autocommit else conn.begin_nested()
        try:
            run_script(conn, script)
        except psycopg.errors.InvalidTableDefinition:
            if savepoint is not None:
                savepoint.rollback()
            if name.removesuffix(".sql") not in VIEWS:
                raise
            _recreate(conn, name.removesuffix(".sql"), script)
        else:
            if savepoint is not None:
                savepoint.commit()


_GRANTS = text(
    "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END AS grantee,"
    " a.privilege_type, a.is_grantable"
    " FROM pg_class AS c CROSS JOIN LATERAL aclexplode(c.relacl) AS a"
    " LEFT JOIN pg_roles AS r ON r.oid = a.grantee"
    " WHERE c.oid = to_regclass(:view) AND a.grantee <> c.relowner"
)


def _recreate(conn: Connection, view: str, script: str) -> None:
    grants = conn.execute(_GRANTS, {"view": view}).all()
    # Fails (and so does install-view, saying why) if another object depends on the view.
    conn.execute(text(f"DROP VIEW {view}"))
    run_script(conn, script)
    for grantee, privilege, grantable in grants:
        option = " WITH GRANT OPTION" if grantable else ""
        conn.execute(text(f"GRANT {privilege} ON {view} TO {grantee}{option}"))


def install_indexes(engine: Engine) -> list[str]:
    """Create the recommended indexes CONCURRENTLY, each in its own autocommit statement.

    Returns one line per index for the operator. An INVALID index found (a CREATE INDEX
    CONCURRENTLY that was interrupted once) is dropped and built again, and one this run fails
    to build is dropped before the error is raised: none is ever left behind (IF NOT EXISTS
    alone would report it "present" forever). Obsolete indexes are dropped first.
    """
    done = drop_obsolete_indexes(engine)
    for statement in statements(read("views/indexes.sql")):
        name = statement.split("IF NOT EXISTS", 1)[-1].split()[0]
        with _autocommit(engine) as conn:
            valid = _index_valid(conn, name)
        if valid:
            done.append(f"index {name} already present")
            continue
        if valid is False:
            _drop_index(engine, name)
        _build_index(engine, name, statement)
        done.append(f"index {name} {'rebuilt: it was INVALID' if valid is False else 'created'}")
    return done


def drop_obsolete_indexes(engine: Engine) -> list[str]:
    """Drop the indexes earlier versions installed that must not stay (OBSOLETE_INDEXES)."""
    done = []
    for name, why in OBSOLETE_INDEXES.items():
        with _autocommit(engine) as conn:
            exists = _index_valid(conn, name) is not None
        if exists:
            _drop_index(engine, name)
            done.append(f"index {name} dropped: {why}")
    return done


def invalid_indexes(conn: Connection) -> list[str]:
    """The project's indexes (cj_health_*) that are INVALID in the current schema path."""
    return list(conn.execute(text(
        "SELECT c.relname FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid"
        " WHERE NOT i.indisvalid AND c.relname LIKE 'cj\\_health\\_%'"
        " AND pg_catalog.pg_table_is_visible(c.oid) ORDER BY 1")).scalars())


def _autocommit(engine: Engine) -> Connection:
    return engine.connect().execution_options(isolation_level="AUTOCOMMIT")


def _index_valid(conn: Connection, name: str) -> bool | None:
    """True/False for a valid/INVALID index of that name, None when there is none."""
    return conn.execute(
        text("SELECT i.indisvalid FROM pg_index AS i"
             " WHERE i.indexrelid = to_regclass(:name)"), {"name": name}).scalar()


def _drop_index(engine: Engine, name: str) -> None:
    # CONCURRENTLY: no lock that would stop the CJ service's writes while it waits.
    with _autocommit(engine) as conn:
        conn.execute(text(f"DROP INDEX CONCURRENTLY IF EXISTS {name}"))


def _build_index(engine: Engine, name: str, statement: str) -> None:
    try:
        with _autocommit(engine) as conn:
            conn.execute(text(statement))
    except (DBAPIError, psycopg.Error) as exc:
        # The failed build left an INVALID index (CONCURRENTLY commits its catalog entry first):
        # drop it on a fresh connection (the failed one may be gone), then report both.
        try:
            _drop_index(engine, name)
        except (DBAPIError, psycopg.Error) as drop_exc:
            raise IndexBuildFailed(
                f"building index {name} failed ({_first_line(exc)}) and so did dropping the"
                f" INVALID index it left ({_first_line(drop_exc)}); run install-view again:"
                " it drops and rebuilds an INVALID index") from exc
        raise IndexBuildFailed(
            f"building index {name} failed ({_first_line(exc)}); the unfinished index was"
            " dropped, nothing is left behind: run install-view again") from exc


class IndexBuildFailed(Exception):
    """An index could not be built; the message says what was left and what to do."""


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return f"{type(orig).__name__}: {lines[0] if lines else ''}".rstrip(": ")
