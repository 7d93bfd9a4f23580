"""Who may remediate, and which candidate actions a cycle may run: pure decisions, no I/O.

Authorization (all three, or nothing happens): remediation.enabled, a write DSN, a non-empty
list of allowed actions. Then the safety valves, in this order, each holding back the
candidates it catches (counted per reason in cj_health_remediation_blocked):
- paused: the maintenance switch (remediation.paused, or the pause row) stops everything;
- too_many_wedged: more than max_wedged_for_auto batches wedged at once looks systemic (a
  broken deploy, a dead LLM provider): a person's call, so nothing runs;
- min_wedged_seconds: the batch has not been quiet that long (the service may still act);
- max_attempts: the action already tried this batch that often (applied/failed/needs_person);
- cooldown: the same action on the same batch ran less than cooldown_seconds ago;
- cycle_limit: more than max_actions_per_cycle actions are due; the rest wait a cycle.

Every time here is the database's: `now` is its now() read with the audit history
(audit.history), quiet_seconds comes from the view in the same transaction. The exporter
host's clock would let a step of it end a cooldown early or hold one for ever.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy.engine import URL

from exporter.config import FinalizerSettings, RemediationSettings, resolve_dsn
from exporter.errors import OperatorError
from exporter.finalizer.model import History
from exporter.vocabulary import BLOCK_REASONS


@dataclass(frozen=True)
class Authorization:
    allowed: bool
    reason: str  # why not, or what is allowed
    write_url: URL | None = None
    actions: tuple[str, ...] = ()

    def allows(self, action: str) -> bool:
        return self.allowed and action in self.actions


def authorize(settings: FinalizerSettings) -> Authorization:
    r = settings.remediation
    if not r.enabled:
        return Authorization(False, "remediation.enabled is false")
    if not (r.write_dsn or r.write_dsn_file):
        return Authorization(False, "no write DSN: set remediation.write_dsn or "
                                    "remediation.write_dsn_file (a role that may write the "
                                    "CJ tables); the read DSN is never used to write")
    if not r.actions:
        return Authorization(False, "remediation.actions is empty: list the allowed actions "
                                    "(backfill_anchors, refinalize)")
    try:
        url = resolve_dsn(r.write_dsn, r.write_dsn_file, "write_dsn")
    except OperatorError as exc:
        return Authorization(False, str(exc))
    mode = "dry run" if r.dry_run else "acting"
    return Authorization(True, f"{mode}: {', '.join(r.actions)}", url, r.actions)


@dataclass(frozen=True)
class Candidate:
    cj_batch_id: int
    action: str
    quiet_seconds: float  # now() - last_activity_at, by the database's clock (the view)


@dataclass(frozen=True)
class Decision:
    run: tuple[Candidate, ...]
    blocked: Mapping[str, int]  # reason -> candidates held back


def decide(candidates: Sequence[Candidate], *, wedged: int, paused: bool,
           settings: RemediationSettings, history: Mapping[tuple[int, str], History],
           now: float) -> Decision:
    blocked: Counter[str] = Counter(dict.fromkeys(BLOCK_REASONS, 0))
    if paused:
        blocked["paused"] = len(candidates)
        return Decision((), blocked)
    if wedged > settings.max_wedged_for_auto:
        blocked["too_many_wedged"] = len(candidates)
        return Decision((), blocked)
    run: list[Candidate] = []
    for c in candidates:
        past = history.get((c.cj_batch_id, c.action), History(0, None))
        if c.quiet_seconds < settings.min_wedged_seconds:
            blocked["min_wedged_seconds"] += 1
        elif past.attempts >= settings.max_attempts:
            blocked["max_attempts"] += 1
        elif past.last_at is not None and now - past.last_at < settings.cooldown_seconds:
            blocked["cooldown"] += 1
        elif len(run) >= settings.max_actions_per_cycle:
            blocked["cycle_limit"] += 1
        else:
            run.append(c)
    return Decision(tuple(run), blocked)
