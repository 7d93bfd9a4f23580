"""The audit trail (cj_health_remediations) and the maintenance switch (one row pauses all).

An applied action writes its audit row inside its own transaction, so "changed" and "audited"
commit or vanish together; every other outcome is recorded afterwards in a short transaction.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, text

from exporter import sqlfiles
from exporter.finalizer.model import History, Result
from exporter.vocabulary import APPLIED, CLOSED, FAILED, NEEDS_PERSON

DDL = "remediation/cj_health_remediations.sql"
TABLE = "cj_health_remediations"
PAUSE_TABLE = "cj_health_remediation_pause"
ATTEMPT_OUTCOMES = (APPLIED, CLOSED, FAILED, NEEDS_PERSON)  # what max_attempts counts


def install(conn: Connection) -> None:
    """Create the audit and pause tables (idempotent); `install-view --remediation`."""
    sqlfiles.run_script(conn, sqlfiles.read(DDL))


def installed(conn: Connection) -> bool:
    row = conn.execute(text("SELECT to_regclass(:a) IS NOT NULL AND to_regclass(:p) IS NOT NULL"),
                       {"a": TABLE, "p": PAUSE_TABLE}).scalar_one()
    return bool(row)


def _plain(value: Any) -> Any:
    """JSON without NaN/Infinity (jsonb rejects them) and with datetimes as ISO strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


_INSERT = text(
    f"INSERT INTO {TABLE} (replica, cj_batch_id, action, dry_run, outcome, detail)"
    " VALUES (:replica, :batch, :action, :dry_run, :outcome, CAST(:detail AS jsonb))"
)


def insert(conn: Connection, result: Result, replica: str, dry_run: bool) -> None:
    """Write the audit row inside the caller's transaction."""
    conn.execute(_INSERT, {
        "replica": replica, "batch": result.cj_batch_id, "action": result.action,
        "dry_run": dry_run, "outcome": result.outcome,
        "detail": json.dumps(_plain(result.detail), allow_nan=False, default=str),
    })


def record(engine: Engine, result: Result, replica: str, dry_run: bool) -> None:
    """Write the audit row of an action whose own transaction did not (or rolled back)."""
    if result.audited:
        return
    with engine.begin() as conn:
        insert(conn, result, replica, dry_run)


@dataclass(frozen=True)
class Past:
    """The batches' audit history and the database's clock, from one read."""

    now: float  # the database's now() (Unix time), the instant `history` compares with
    by_action: dict[tuple[int, str], History]  # (cj_batch_id, action) -> History


# now(), not clock_timestamp(): the cycle reads the view (its state_age_seconds, which the
# min_wedged_seconds valve compares, is `now() - last_activity_at`) and this history in ONE
# transaction, and now() is that transaction's start: every valve then measures at one instant
# of one clock, the database's, which also wrote every `at` (DEFAULT now()). The exporter
# host's clock never enters a decision: stepped a day ahead it would end every cooldown, a day
# behind it would block every retry (tests/process/test_remediation_clock.py).
_HISTORY = text(
    f"SELECT EXTRACT(EPOCH FROM now()) AS now, h.cj_batch_id, h.action, h.attempts,"
    f" EXTRACT(EPOCH FROM h.last_at) AS last_at"
    f" FROM (SELECT 1) AS one LEFT JOIN ("
    f"  SELECT cj_batch_id, action,"
    f"  count(*) FILTER (WHERE NOT dry_run AND outcome = ANY(CAST(:tried AS text[])))"
    f"   AS attempts,"
    f"  max(at) FILTER (WHERE dry_run = :dry_run) AS last_at"
    f"  FROM {TABLE} WHERE cj_batch_id = ANY(CAST(:ids AS integer[]))"
    f"  GROUP BY cj_batch_id, action) AS h ON true"
)


def history(conn: Connection, batch_ids: Sequence[int], dry_run: bool) -> Past:
    """(cj_batch_id, action) -> History for the valves (max_attempts, cooldown), and the
    database's now() of the same statement to compare the times with."""
    rows = conn.execute(_HISTORY, {"ids": list(batch_ids), "dry_run": dry_run,
                                   "tried": list(ATTEMPT_OUTCOMES)}).mappings().all()
    by_action = {(int(r["cj_batch_id"]), str(r["action"])):
                 History(int(r["attempts"]), None if r["last_at"] is None
                         else float(r["last_at"]))
                 for r in rows if r["cj_batch_id"] is not None}
    return Past(float(rows[0]["now"]), by_action)


@dataclass(frozen=True)
class Pause:
    paused_by: str
    reason: str
    paused_at: datetime

    def describe(self) -> str:
        return f"paused by {self.paused_by} at {self.paused_at.isoformat()}: {self.reason}"


def pause_state(conn: Connection) -> Pause | None:
    row = conn.execute(text(f"SELECT paused_by, reason, paused_at FROM {PAUSE_TABLE}")).first()
    return Pause(str(row[0]), str(row[1]), row[2]) if row else None


def pause(engine: Engine, paused_by: str, reason: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(f"INSERT INTO {PAUSE_TABLE} (paused_by, reason) VALUES (:by, :reason)"
                 " ON CONFLICT (singleton) DO UPDATE SET paused_by = EXCLUDED.paused_by,"
                 " reason = EXCLUDED.reason, paused_at = now()"),
            {"by": paused_by, "reason": reason},
        )


def resume(engine: Engine) -> bool:
    """Remove the pause row; False when remediation was not paused."""
    with engine.begin() as conn:
        return conn.execute(text(f"DELETE FROM {PAUSE_TABLE}")).rowcount > 0

