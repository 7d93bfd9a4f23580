"""The project's SQL files: the reference CJ schema (demo/tests) and the views and indexes.

The files live in `sql/` at the repository root and are shipped inside the wheel as
`exporter/sql/`, so both a checkout and a plain `pip install` find them.
"""

from __future__ import annotations

import re
from pathlib import Path

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
    """CREATE OR REPLACE both views; idempotent and keeps grants made on them."""
    for name in VIEW_FILES:
        run_script(conn, read(f"views/{name}"))


def install_indexes(engine: Engine) -> list[str]:
    """Create the recommended indexes CONCURRENTLY, each in its own autocommit statement."""
    done = []
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for statement in statements(read("views/indexes.sql")):
            conn.execute(text(statement))
            done.append(statement.split("IF NOT EXISTS", 1)[-1].split()[0])
    return done
