"""The vocabulary shared by the finalizer's modules: actions, outcomes and an action's result."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

BACKFILL_ANCHORS = "backfill_anchors"
REFINALIZE = "refinalize"
ACTIONS = (BACKFILL_ANCHORS, REFINALIZE)  # the order a cycle runs them in for one batch

APPLIED = "applied"  # the database was changed
DRY_RUN = "dry_run"  # planned and printed, nothing changed
SKIPPED = "skipped"  # nothing to do: already finalized, locked by someone else, not wedged
NEEDS_PERSON = "needs_person"  # refused on purpose (e.g. unusable anchors): a person decides
FAILED = "failed"  # an error rolled the action back; retried after the cooldown
OUTCOMES = (APPLIED, DRY_RUN, SKIPPED, NEEDS_PERSON, FAILED)


@dataclass(frozen=True)
class History:
    """A batch's audit history for one action, as the valves see it."""

    attempts: int  # non-dry-run runs that tried: applied, failed, needs_person
    last_at: float | None  # Unix time of the last run in the same mode (dry-run or not)


@dataclass(frozen=True)
class Limits:
    """Server-side timeouts of an action's transaction (set with SET LOCAL semantics)."""

    statement_timeout: float = 30.0
    lock_timeout: float = 2.0


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Result:
    """What one action did to one batch; `detail` is JSON-serialisable (audit + logs)."""

    action: str
    cj_batch_id: int
    outcome: str
    detail: dict[str, Any] = field(default_factory=dict)
    audited: bool = False  # True when the audit row was written in the action's transaction

    @property
    def reason(self) -> str:
        return str(self.detail.get("reason", ""))

    def line(self) -> str:
        """One line for logs and the CLI."""
        extra = {k: v for k, v in self.detail.items() if k != "reason"}
        text = f"{self.action} batch {self.cj_batch_id}: {self.outcome}"
        if self.reason:
            text += f" ({self.reason})"
        if extra:
            text += " " + json.dumps(extra, sort_keys=True, default=str)
        return text
