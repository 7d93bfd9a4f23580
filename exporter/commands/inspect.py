"""`inspect BATCH`: everything the view knows about a batch, plus its outbox events.

BATCH is a cj_batch_id or a bos_batch_id (which may have several CJ runs: all are shown). Besides
the view's facts and problems it shows what the CJ service's own diagnostics script
(`inspect_batch_state.py`) prints of the state row (partial scoring, completion threshold,
iteration, LLM batching mode, config overrides, comparison budget), and the outbox events per
type with the run each names (`cj_assessment_job_id`, `processing_id`), so a charge of another
run of the BOS batch is told from a second charge of this one.

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
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from exporter import PROG, db
from exporter.config import Settings
from exporter.errors import OperatorError
from exporter.service import connect
from exporter.upstream import events as ev
from exporter.vocabulary import (
    ANCHOR_GRADE_TIERS,
    PROBLEM_COLUMNS,
    PROBLEMS,
    UNREADABLE_DOCUMENT_COLUMNS,
    UNRESOLVED,
)

_BATCHES = text(
    "SELECT * FROM cj_batch_health WHERE bos_batch_id = :key"
    " OR (:key ~ '^[0-9]{1,9}$' AND cj_batch_id = CAST(:num AS integer))"
    " ORDER BY cj_batch_id"
)
# The run's completion and result events and every charge of its BOS batch. Documents are read
# through cj_health_json (sql/views/cj_health_json.sql): one that ->/->> cannot read is listed
# as unreadable instead of failing the command.
# What _EVENTS reads of event_outbox (sql/roles.sql grants these columns to cj_health_operator).
EVENT_COLUMNS = ("event_type", "aggregate_id", "event_data", "created_at", "published_at",
                 "retry_count", "last_error")
_EVENTS = text(
    "SELECT d.event_type, d.aggregate_id, d.created_at, d.published_at, d.retry_count,"
    " d.last_error, d.doc -> 'data' ->> 'cj_assessment_job_id' AS cj_assessment_job_id,"
    " d.doc -> 'data' ->> 'processing_id' AS processing_id,"
    " d.doc -> 'data' ->> 'quantity' AS quantity, d.doc -> 'data' ->> 'user_id' AS user_id,"
    " d.doc IS NULL AS unreadable"
    " FROM (SELECT o.event_type, o.aggregate_id, o.created_at, o.published_at, o.retry_count,"
    "  o.last_error, cj_health_json(o.event_data) AS doc FROM event_outbox AS o"
    "  WHERE (o.event_type IN (:completed, :resource) AND o.aggregate_id = :bos)"
    "   OR (o.event_type = :result AND o.aggregate_id = :id) OFFSET 0) AS d"
    " WHERE d.event_type <> :completed OR d.doc IS NULL"
    "  OR d.doc -> 'data' ->> 'cj_assessment_job_id' = :id"
    " ORDER BY d.created_at LIMIT 200"
)
EVENT_KINDS = ((ev.COMPLETED_EVENT, "completed"), (ev.RESULT_EVENT, "result"),
               (ev.RESOURCE_EVENT, "resource"))


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
            batch["outbox_events"] = _events(conn, batch)
            batch["problems"] = [p for p, column in PROBLEM_COLUMNS.items() if batch[column]]
    return batches


def _events(conn: Connection, batch: dict[str, Any]) -> list[dict[str, Any]]:
    params = {"id": str(batch["cj_batch_id"]), "bos": batch["bos_batch_id"],
              "completed": ev.COMPLETED_EVENT, "result": ev.RESULT_EVENT,
              "resource": ev.RESOURCE_EVENT}
    return [dict(r) for r in conn.execute(_EVENTS, params).mappings()]
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


def _row(label: str, value: Any) -> str:
    return f"  {label:<22} {'-' if value is None else _plain(value)}"


def _block(b: dict[str, Any]) -> str:
    lines = [
        f"CJ batch {b['cj_batch_id']}  (BOS batch {b['bos_batch_id']})",
        _row("state / status", f"{b['cj_state']} / {b['upload_status']}"),
        _row("created / completed", f"{_plain(b['created_at'])} / {_plain(b['completed_at'])}"),
        _row("last activity", f"{_plain(b['last_activity_at'])} "
                              f"({_age(b['state_age_seconds'])} ago)"),
        _row("budget", b["total_budget"]),
        _row("submitted", b["submitted_comparisons"]),
        _row("completed / failed", f"{b['completed_comparisons']} / {b['failed_comparisons']}"),
        _row("pending callbacks", b["pending_callbacks"]),
        _row("pairs with a winner", b["pairs_with_winner"]),
        _row("students", b["student_essays"]),
        _row("anchors column/meta/id",
             f"{b['anchors_flagged']} / {b['anchors_in_metadata']} / {b['anchors_by_id']}"),
        _row("anchor grades", b["anchor_grades"]),
        _row("grade projections", f"{b['grade_projections']}"
                                  f"{' (projectable)' if b['projectable'] else ''}"),
        _row("completion events", f"completed {b['completion_events']}, result "
                                  f"{b['result_events']}, charges {b['charge_events']} of "
                                  f"{b['resource_events']} for the BOS batch "
                                  f"(burst {b['completion_event_burst']}/60s)"),
        *_diagnostics(b),
        *_results_and_charges(b),
        *_invariants(b),
    ]
    unreadable = [f"{doc} {b[column]}" for doc, column in UNREADABLE_DOCUMENT_COLUMNS.items()
                  if b.get(column)]
    if unreadable:  # their facts are unknown: the lines above count without them
        lines.append(_row("unreadable JSON", ", ".join(unreadable) + " (see docs/metrics.md)"))
    lines.append("  problems:" if b["problems"] else "  problems:              none")
    lines += [f"    - {p}: {PROBLEMS[p].explanation}" for p in b["problems"]]
    lines += _event_lines(b)
    return "\n".join(lines)


def _diagnostics(b: dict[str, Any]) -> list[str]:
    """The lines upstream's inspect_batch_state.py prints of the state row."""
    def yes(flag: Any) -> str:
        return "-" if flag is None else "yes" if flag else "no"

    budget = ("- (none stored: upstream uses its default, MAX_PAIRWISE_COMPARISONS)"
              if b["budget_max_pairs"] is None and b["budget_source"] is None
              else f"{b['budget_max_pairs'] if b['budget_max_pairs'] is not None else '?'}"
                   f" ({b['budget_source'] or 'no source'})")
    progress = ("-" if b["budget_progress"] is None
                else f"{b['budget_progress']:.0%} of total_budget completed")
    return [
        _row("total / submitted", f"{b['total_comparisons']} / {b['submitted_comparisons']}"),
        _row("completion threshold",
             None if b["completion_threshold_pct"] is None
             else f"{b['completion_threshold_pct']} %"),
        _row("partial scoring", f"flag {yes(b['partial_scoring_triggered'])}, counters "
                                f"{yes(b['partial_scoring_threshold_reached'])}"),
        _row("budget progress", progress),
        _row("iteration", b["current_iteration"]),
        _row("LLM batching mode", b["llm_batching_mode"]),
        _row("config overrides", yes(b["has_config_overrides"])),
        _row("comparison budget", budget),
    ]


def _results_and_charges(b: dict[str, Any]) -> list[str]:
    lines = []
    if b["result_events"]:
        lines.append(_row("last result", f"assignment_id {b['result_assignment_id'] or '-'}"
                                         f" (upload: {b['assignment_id'] or '-'}), "
                                         f"{b['result_students']} students, "
                                         f"{b['result_students_graded']} graded other than U"
                                         f" ({b['result_grades'] or '-'}; projections:"
                                         f" {b['projected_grades'] or '-'})"))
    lines.append(_row("charged", f"{_number(b['charged_quantity'])} (published), over-charged"
                                 f" {_number(b['overcharged_quantity'])}"))
    if b["superseded_by"] is not None:
        lines.append(_row("superseded by", f"CJ batch {b['superseded_by']} (owns its essays)"))
    if b["unpublishable_projections"]:
        lines.append(_row("unpublishable", f"{b['unpublishable_projections']} projections fail"
                                           " the letter_grade pattern"))
    return lines


def _invariants(b: dict[str, Any]) -> list[str]:
    tiers = {t: b[f"anchors_by_{t}"] for t in ANCHOR_GRADE_TIERS}
    tiers[UNRESOLVED] = b["anchors_unresolved"]
    lines = []
    if any(tiers.values()):
        lines.append(_row("anchor grade tiers", ", ".join(f"{t} {n}" for t, n in tiers.items())))
    if b["rehydration_mismatched_fields"]:
        lines.append(_row("request mismatch", "upload and state original_request differ on "
                                              + b["rehydration_mismatched_fields"]))
    if b["budget_source_violation"]:
        lines.append(_row("budget invariant", b["budget_source_violation"]))
    return lines


def _event_lines(b: dict[str, Any]) -> list[str]:
    events = b["outbox_events"]
    if not events:
        return []
    lines = ["  outbox events:"]
    for event_type, kind in EVENT_KINDS:
        mine = [e for e in events if e["event_type"] == event_type]
        for e in mine[:20]:
            lines.append(f"    {kind:<9} {_plain(e['created_at'])}  {_names(e, b)}  "
                         f"{_state(e)}")
        if len(mine) > 20:
            lines.append(f"    {kind:<9} ... and {len(mine) - 20} more")
    return lines


def _names(e: dict[str, Any], b: dict[str, Any]) -> str:
    if e["unreadable"]:
        return "(document unreadable)"
    if e["event_type"] == ev.RESOURCE_EVENT:
        this = " (this run)" if e["processing_id"] == str(b["cj_batch_id"]) else ""
        return (f"processing_id {e['processing_id']}{this}, quantity {e['quantity']}, "
                f"user {e['user_id']}")
    return f"cj_assessment_job_id {e['cj_assessment_job_id']}"


def _state(e: dict[str, Any]) -> str:
    return "published" if e["published_at"] else f"UNPUBLISHED (retries {e['retry_count']})"


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:g}"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{sec:02d}s"
