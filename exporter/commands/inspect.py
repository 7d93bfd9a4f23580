"""`inspect BATCH`: everything the view knows about a batch, plus its outbox events.

BATCH is a cj_batch_id or a bos_batch_id (which may have several CJ runs: all are shown).

It reads the view like the poller, and the batch's outbox rows, which the polling role
(cj_health_ro) may not read: people run it under a login granted cj_health_operator
(sql/roles.sql). A missing grant is one line naming the grant, never a traceback.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from exporter import PROG, db
from exporter.config import Settings
from exporter.errors import OperatorError
from exporter.service import connect
from exporter.upstream import events as ev
from exporter.vocabulary import PROBLEM_COLUMNS, PROBLEMS

_BATCHES = text(
    "SELECT * FROM cj_batch_health WHERE bos_batch_id = :key"
    " OR (:key ~ '^[0-9]{1,9}$' AND cj_batch_id = CAST(:num AS integer))"
    " ORDER BY cj_batch_id"
)
# What _EVENTS reads of event_outbox (sql/roles.sql grants these columns to cj_health_operator).
EVENT_COLUMNS = ("event_type", "aggregate_id", "event_data", "created_at", "published_at",
                 "retry_count", "last_error")
_EVENTS = text(
    "SELECT event_type, aggregate_id, created_at, published_at, retry_count, last_error"
    " FROM event_outbox WHERE (event_type = :completed"
    "  AND event_data -> 'data' ->> 'cj_assessment_job_id' = :id)"
    " OR (event_type = :result AND aggregate_id = :id)"
    " OR (event_type = :resource AND aggregate_id = :bos)"
    " ORDER BY created_at LIMIT 200"
)


def run(settings: Settings, key: str, as_json_output: bool) -> int:
    """The `inspect` command: exit 1 for an unknown batch."""
    engine = connect(settings)
    try:
        found = find(engine, key)
    except DBAPIError as exc:
        raise OperatorError(_refused(exc)) from None
    finally:
        engine.dispose()
    if not found:
        print(f"{PROG}: no CJ batch with cj_batch_id or bos_batch_id {key!r}", file=sys.stderr)
        return 1
    print(as_json(found) if as_json_output else as_text(found))
    return 0


def find(engine: Engine, key: str) -> list[dict[str, Any]]:
    num = key if key.isdigit() and len(key) <= 9 else "0"
    with engine.connect() as conn:
        batches = [dict(r) for r in conn.execute(_BATCHES, {"key": key, "num": num}).mappings()]
        for batch in batches:
            params = {"id": str(batch["cj_batch_id"]), "bos": batch["bos_batch_id"],
                      "completed": ev.COMPLETED_EVENT, "result": ev.RESULT_EVENT,
                      "resource": ev.RESOURCE_EVENT}
            batch["outbox_events"] = [dict(r) for r in conn.execute(_EVENTS, params).mappings()]
            batch["problems"] = [p for p, column in PROBLEM_COLUMNS.items() if batch[column]]
    return batches


def _refused(exc: DBAPIError) -> str:
    if isinstance(exc.orig, psycopg.errors.InsufficientPrivilege) and "event_outbox" in str(
            exc.orig):
        return (f"inspect lists the batch's outbox rows, which this role may not read "
                f"({db.describe_error(exc)}): it needs SELECT ({', '.join(EVENT_COLUMNS)}) ON "
                "event_outbox; cj_health_operator has it (sql/roles.sql): run inspect as a "
                "login granted cj_health_operator")
    return f"inspect failed: {db.explain(exc)}"


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def as_json(batches: list[dict[str, Any]]) -> str:
    return json.dumps(batches, default=_plain, indent=2)


def as_text(batches: list[dict[str, Any]]) -> str:
    return "\n\n".join(_block(b) for b in batches)


def _block(b: dict[str, Any]) -> str:
    def row(label: str, value: Any) -> str:
        return f"  {label:<22} {'-' if value is None else _plain(value)}"

    lines = [
        f"CJ batch {b['cj_batch_id']}  (BOS batch {b['bos_batch_id']})",
        row("state / status", f"{b['cj_state']} / {b['upload_status']}"),
        row("created / completed", f"{_plain(b['created_at'])} / {_plain(b['completed_at'])}"),
        row("last activity", f"{_plain(b['last_activity_at'])} "
                             f"({_age(b['state_age_seconds'])} ago)"),
        row("budget", b["total_budget"]),
        row("submitted", b["submitted_comparisons"]),
        row("completed / failed", f"{b['completed_comparisons']} / {b['failed_comparisons']}"),
        row("pending callbacks", b["pending_callbacks"]),
        row("pairs with a winner", b["pairs_with_winner"]),
        row("students", b["student_essays"]),
        row("anchors column/meta/id",
            f"{b['anchors_flagged']} / {b['anchors_in_metadata']} / {b['anchors_by_id']}"),
        row("anchor grades", b["anchor_grades"]),
        row("grade projections", f"{b['grade_projections']}"
                                 f"{' (projectable)' if b['projectable'] else ''}"),
        row("completion events", f"completed {b['completion_events']}, result "
                                 f"{b['result_events']}, resource {b['resource_events']} "
                                 f"(burst {b['completion_event_burst']}/60s)"),
    ]
    lines.append("  problems:" if b["problems"] else "  problems:              none")
    lines += [f"    - {p}: {PROBLEMS[p].explanation}" for p in b["problems"]]
    if b["outbox_events"]:
        lines.append("  outbox events:")
        for e in b["outbox_events"][:20]:
            state = ("published" if e["published_at"]
                     else f"UNPUBLISHED (retries {e['retry_count']})")
            lines.append(f"    {_plain(e['created_at'])}  {e['event_type']}  {state}")
        if len(b["outbox_events"]) > 20:
            lines.append(f"    ... and {len(b['outbox_events']) - 20} more")
    return "\n".join(lines)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{sec:02d}s"
