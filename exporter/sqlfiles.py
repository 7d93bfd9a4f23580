"""The project's SQL files: the reference CJ schema (demo/tests) and the views and indexes.

The files live in `sql/` at the repository root and are shipped inside the wheel as
`exporter/sql/`, so both a checkout and a plain `pip install` find them.
"""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
from sqlalchemy import Connection, Engine, text

VIEW_FILES = ("cj_batch_health.sql", "cj_outbox_health.sql")


def sql_dir() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "sql", here.parent / "sql"):
        if (candidate / "views" / VIEW_FILES[0]).is_file():
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
    """CREATE OR REPLACE both views; idempotent and keeps the grants made on them.

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
    """Create the recommended indexes CONCURRENTLY, each in its own autocommit statement."""
    done = []
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for statement in statements(read("views/indexes.sql")):
            conn.execute(text(statement))
            done.append(statement.split("IF NOT EXISTS", 1)[-1].split()[0])
    return done
