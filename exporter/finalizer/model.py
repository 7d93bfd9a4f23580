"""The finalizer's own types: an action's Result, a batch's History, transaction Limits."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class History:
    """A batch's audit history for one action, as the valves see it."""

    attempts: int  # non-dry-run runs that tried: applied, failed, needs_person
    last_at: float | None  # the last run in the same mode (dry-run or not), Unix time, as the
    # database wrote it (audit `at`): compared with the database's now() only (audit.history)


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
