"""The CJ service's own batches (../shared/upstream/fixtures) in a fresh test database.

MANIFEST.md's loading order: a schema (upstream's migrated `cj_schema_alembic_head.sql`, or the
project's reference schema), then `upstream_incidents.sql`, then `shift_clock.sql` in a new
session. Both dumps set an empty search_path for their session, so each file runs on its own
connection and the views (which name their tables unqualified) on yet another one.

`shift_clock.sql` leaves `cj_processed_essays` untouched on purpose: upstream's SE reference is
the last anchor in the physical row order of an un-ordered select, i.e. the INSERT order of the
dump, and an UPDATE would move the rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine

from exporter import sqlfiles
from tests.support.database import Server, database
from tests.support.paths import ALEMBIC_SCHEMA, UPSTREAM

FIXTURES = UPSTREAM / "fixtures"
CONTRACTS = UPSTREAM / "contracts"
INCIDENTS = FIXTURES / "upstream_incidents.sql"
SHIFT_CLOCK = FIXTURES / "shift_clock.sql"
EXPECTED = FIXTURES / "upstream_refinalize_expected.json"
EXPECTED_MESSAGES = FIXTURES / "upstream_refinalize_messages.jsonl"
RELAYED = FIXTURES / "relayed_messages.jsonl"

# The fixture's batches by what MANIFEST.md says they are (cj_batch_id).
BATCH20_WEDGE = 1
SUPERSEDED = 2
RERUN = 3
HEALTHY = 4
ENG5_NATIONAL = 5
NO_USER = 6
NEVER_SCORED = 7
IN_FLIGHT = 8
ALL_BATCHES = (BATCH20_WEDGE, SUPERSEDED, RERUN, HEALTHY, ENG5_NATIONAL, NO_USER,
               NEVER_SCORED, IN_FLIGHT)

SCHEMAS = ("alembic_head", "reference")


def _run_file(engine: Engine, path: Path) -> None:
    """One file on its own connection, in one transaction (psql -1 -v ON_ERROR_STOP=1)."""
    with engine.connect() as conn:
        with conn.begin():
            sqlfiles.run_script(conn, path.read_text(encoding="utf-8"))
        conn.invalidate()  # the dump's empty search_path must not go back to the pool


def _schema_sql(schema: str) -> str:
    if schema == "alembic_head":
        assert ALEMBIC_SCHEMA.is_file(), f"the upstream schema dump is missing: {ALEMBIC_SCHEMA}"
        return ALEMBIC_SCHEMA.read_text(encoding="utf-8")
    if schema == "reference":
        return sqlfiles.read("schema/cj_reference.sql")
    raise ValueError(f"unknown schema {schema!r}: one of {SCHEMAS}")


def load(engine: Engine, schema: str = "alembic_head", views: bool = True) -> None:
    """Schema, fixture data, clock shift (and the project's views) into an empty database."""
    with engine.connect() as conn:
        with conn.begin():
            sqlfiles.run_script(conn, _schema_sql(schema))
        conn.invalidate()
    _run_file(engine, INCIDENTS)
    _run_file(engine, SHIFT_CLOCK)
    if views:
        with engine.begin() as conn:
            sqlfiles.install_views(conn)


@dataclass(frozen=True)
class UpstreamDb:
    url: str
    engine: Engine


@contextmanager
def upstream_database(server: Server, schema: str = "alembic_head") -> Iterator[UpstreamDb]:
    """A fresh database on the session's server holding the upstream fixture; dropped after.
    (An empty one from the shared factory: the fixture brings its own schema, loaded in
    MANIFEST.md's order by load().)"""
    with database(server, schema="none") as empty:
        engine = create_engine(empty.url)
        try:
            load(engine, schema)
            yield UpstreamDb(empty.url, engine)
        finally:
            engine.dispose()


@cache
def expected() -> dict[str, Any]:
    """upstream_refinalize_expected.json: what upstream HEAD writes on a second finalize."""
    data: dict[str, Any] = json.loads(EXPECTED.read_text(encoding="utf-8"))
    return data


def expected_outbox(batch_id: int) -> list[dict[str, Any]]:
    """The batch's outbox rows after upstream's re-finalization, event_data parsed, in order."""
    rows = expected()["batches"][str(batch_id)]["outbox"]
    return [{**r, "event_data": json.loads(r["event_data"])} for r in rows]


def relayed_messages() -> list[dict[str, Any]]:
    """relayed_messages.jsonl: what upstream's relay sent for the fixture, `value` parsed."""
    out = []
    for line in RELAYED.read_text(encoding="utf-8").splitlines():
        if line.strip():
            msg = json.loads(line)
            out.append({**msg, "value": json.loads(msg["value"])})
    return out
