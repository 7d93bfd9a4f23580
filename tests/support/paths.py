"""Where things are: the repository root, and ../shared beside the checkout (the CJ service's
migrated schema, its message contracts and the upstream fixtures; README says the test command
needs it there)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
UPSTREAM = SHARED / "upstream"
ALEMBIC_SCHEMA = UPSTREAM / "cj_schema_alembic_head.sql"
