"""Every connection the exporter opens gets its options from exporter/db.py.

Behind PgBouncer in transaction mode, psycopg's automatic prepared statements collide between
clients sharing a server connection (14 of 103 polls failed before the fix: docs/security.md,
"Behind PgBouncer"). `db.driver_options` turns them off; this test fails when code anywhere
else in the package opens a connection, so a new connection path cannot forget it.
tests/process/test_pgbouncer.py proves the options work through a real PgBouncer.
"""

from __future__ import annotations

import ast
from pathlib import Path

from exporter import db
from tests.support.paths import ROOT as REPO

PACKAGE = REPO / "exporter"
ALLOWED = PACKAGE / "db.py"
PSYCOPG_CONNECTS = {"connect", "Connection", "AsyncConnection"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def connection_openers(path: Path, root: Path = REPO) -> list[str]:
    """`file:line call` for each call that opens a database connection or engine."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = {alias.asname or alias.name for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("psycopg")
                for alias in node.names if alias.name in PSYCOPG_CONNECTS}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        last = name.rsplit(".", 1)[-1]
        opens = (last == "create_engine" or last == "create_async_engine"
                 or (name.startswith("psycopg.") and last == "connect")
                 or name in imported or name.split(".", 1)[0] in imported)
        if opens:
            found.append(f"{path.relative_to(root)}:{node.lineno} {name}()")
    return found


def test_connections_are_opened_only_in_db_py() -> None:
    outside = [hit for path in sorted(PACKAGE.rglob("*.py")) if path != ALLOWED
               for hit in connection_openers(path)]
    assert outside == [], (
        "open connections with exporter.db.make_engine / exporter.db.connect, which set"
        f" prepare_threshold=None and the keepalives: {outside}")


def test_db_py_opens_them_with_the_shared_options() -> None:
    hits = connection_openers(ALLOWED)
    assert [h.split()[-1] for h in hits] == ["psycopg.connect()", "create_engine()"], hits
    source = ALLOWED.read_text(encoding="utf-8")
    assert source.count("driver_options(connect_timeout, application_name)") == 2


def test_the_shared_options_turn_automatic_prepared_statements_off() -> None:
    options = db.driver_options(5, "x")
    assert "prepare_threshold" in options and options["prepare_threshold"] is None


def test_the_guard_sees_every_spelling(tmp_path: Path) -> None:
    """The check itself can fail: each way of opening a connection is caught."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import psycopg\nfrom psycopg import Connection as C\nimport sqlalchemy as sa\n"
        "from sqlalchemy import create_engine\n"
        "a = psycopg.connect('')\nb = C.connect('')\nc = sa.create_engine('x')\n"
        "d = create_engine('x')\ne = psycopg.Connection.connect('')\n", encoding="utf-8")
    hits = connection_openers(sample, tmp_path)
    assert [h.split()[-1] for h in hits] == [
        "psycopg.connect()", "C.connect()", "sa.create_engine()", "create_engine()",
        "psycopg.Connection.connect()"], hits
