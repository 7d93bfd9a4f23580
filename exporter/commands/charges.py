"""`charges [--since DATE] [--format table|json|csv]`: every CJ run charged more than once.

The "query production for user impact" of a duplicate-completion investigation: each run whose
resource-consumption events number more than one (rule R1: at most one per
`data.processing_id`, the CJ batch id), with its BOS batch, the user and org each event charged,
each event's quantity and time, and the excess to refund by hand (Entitlements cannot refund:
a quantity is never negative). It reads the view cj_charge_events
(sql/views/cj_charge_events.sql), so it runs under the read-only polling role.

Only a published row has reached Entitlements: the refund is the quantity of the run's
published charges beyond its first one. An unpublished duplicate is listed (it will charge
when the relay sends it) but is not yet owed.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, text

from exporter.config import Settings
from exporter.db import read_only_snapshot
from exporter.errors import OperatorError

# Runs charged more than once, each with all its charges; --since keeps the runs that have a
# charge at or after the given UTC day.
_QUERY = text(
    "SELECT processing_id, cj_batch_id, bos_batch_id, user_id, org_id, quantity, created_at,"
    " published_at, charge_number, run_charges, outbox_id::text AS outbox_id"
    " FROM cj_charge_events AS c WHERE c.run_charges > 1 AND NOT c.unreadable"
    " AND (CAST(:since AS timestamptz) IS NULL OR EXISTS (SELECT 1 FROM cj_charge_events AS s"
    "      WHERE s.processing_id = c.processing_id AND s.created_at >= :since))"
    " ORDER BY c.cj_batch_id NULLS LAST, c.processing_id, c.charge_number"
)
_UNREADABLE = text("SELECT count(*) FROM cj_charge_events WHERE unreadable")


@dataclass(frozen=True)
class Charge:
    charge_number: int
    outbox_id: str
    user_id: str | None
    org_id: str | None
    quantity: Decimal | None
    created_at: datetime
    published_at: datetime | None


@dataclass
class Run:
    processing_id: str
    cj_batch_id: int | None
    bos_batch_id: str | None
    charges: list[Charge] = field(default_factory=list)

    @property
    def refund(self) -> Decimal:
        """Published charges beyond the first published one (unknown quantities count 0)."""
        published = [c.quantity or Decimal(0) for c in self.charges if c.published_at]
        return sum(published[1:], Decimal(0))


def parse_since(value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise OperatorError(f"--since must be a date like 2026-11-21, not {value!r}") from None


def run(settings: Settings, since: str | None, fmt: str) -> int:
    """The `charges` command: 0 whether or not a run was charged twice (the output says)."""
    from exporter.service import connect  # light to import for the --help of the others

    day = parse_since(since)
    engine = connect(settings)
    try:
        runs, unreadable = find(engine, settings, day)
    finally:
        engine.dispose()
    print(render(runs, fmt), end="")
    if unreadable:
        print(f"warning: {unreadable} resource-consumption event(s) could not be read and are"
              " not attributed to any run", file=sys.stderr)
    return 0


def find(engine: Engine, settings: Settings, since: date | None) -> tuple[list[Run], int]:
    start = None if since is None else datetime.combine(since, time(), UTC)
    with read_only_snapshot(engine, settings.statement_timeout_seconds,
                            settings.lock_timeout_seconds) as conn:
        rows = conn.execute(_QUERY, {"since": start}).mappings().all()
        unreadable = int(conn.execute(_UNREADABLE).scalar_one())
    return group(rows), unreadable


def group(rows: Sequence[Any]) -> list[Run]:
    runs: dict[str, Run] = {}
    for r in rows:
        entry = runs.setdefault(r["processing_id"], Run(r["processing_id"], r["cj_batch_id"],
                                                        r["bos_batch_id"]))
        entry.charges.append(Charge(int(r["charge_number"]), r["outbox_id"], r["user_id"],
                                    r["org_id"], r["quantity"], r["created_at"],
                                    r["published_at"]))
    return list(runs.values())


def render(runs: list[Run], fmt: str) -> str:
    if fmt == "json":
        return as_json(runs) + "\n"
    if fmt == "csv":
        return as_csv(runs)
    return as_table(runs)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def as_json(runs: list[Run]) -> str:
    out = [{"processing_id": r.processing_id, "cj_batch_id": r.cj_batch_id,
            "bos_batch_id": r.bos_batch_id, "charges": len(r.charges),
            "refund_quantity": _plain(r.refund),
            "events": [{k: _plain(v) for k, v in asdict(c).items()} for c in r.charges]}
           for r in runs]
    return json.dumps(out, indent=2)


CSV_COLUMNS = ("processing_id", "cj_batch_id", "bos_batch_id", "charge_number", "user_id",
               "org_id", "quantity", "created_at", "published_at", "refund_quantity",
               "outbox_id")


def as_csv(runs: list[Run]) -> str:
    """One line per charge; refund_quantity is what to give back for that line."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in runs:
        refunded = _refunded_lines(r)
        for c in r.charges:
            writer.writerow([r.processing_id, r.cj_batch_id, r.bos_batch_id, c.charge_number,
                             c.user_id, c.org_id, _plain(c.quantity), _plain(c.created_at),
                             _plain(c.published_at),
                             _plain(c.quantity or Decimal(0)) if c.outbox_id in refunded else 0,
                             c.outbox_id])
    return buf.getvalue()


def _refunded_lines(r: Run) -> set[str]:
    return set(_published_ids(r)[1:])


def _published_ids(r: Run) -> list[str]:
    """The run's published charges in order: the first is kept, the others are refunded."""
    return [c.outbox_id for c in r.charges if c.published_at]


def as_table(runs: list[Run]) -> str:
    if not runs:
        return "no CJ run was charged more than once\n"
    lines = []
    for r in runs:
        lines.append(f"CJ run {r.cj_batch_id if r.cj_batch_id is not None else '?'}"
                     f"  (processing_id {r.processing_id}, BOS batch {r.bos_batch_id}):"
                     f" charged {len(r.charges)} times, refund {_plain(r.refund)}")
        published = _published_ids(r)
        for c in r.charges:
            state = "published" if c.published_at else "NOT YET DELIVERED"
            mark = ("kept" if published[:1] == [c.outbox_id]
                    else "refund" if c.outbox_id in published else "")
            lines.append(f"  #{c.charge_number:<3} {_plain(c.created_at)}  quantity "
                         f"{_plain(c.quantity)!s:<6} user {c.user_id}  org {c.org_id}  {state}"
                         f"  {mark}".rstrip())
    total = sum((r.refund for r in runs), Decimal(0))
    lines.append(f"{len(runs)} run(s) charged more than once; total to refund: {_plain(total)}")
    return "\n".join(lines) + "\n"
