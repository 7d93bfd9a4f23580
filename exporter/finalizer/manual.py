"""`cj-health-exporter remediate`: one action on one batch, by hand; and the pause switch.

Without --yes it is a dry run: the plan is computed on a read-only snapshot and printed, and
nothing is written (not even an audit row), so the read DSN is enough. With --yes it needs the
same authorization as the service (remediation.enabled, a write DSN, the action listed in
remediation.actions), honours the maintenance switch, and runs the same transaction with the
same guards (row locks, already-finalized, unusable anchors). The automatic valves
(min_wedged_seconds, max_attempts, cooldown, max_wedged_for_auto) do not apply: they exist to
hand a batch to a person, and this is that person. --yes also overrides remediation.dry_run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from exporter import config, db
from exporter.config import FinalizerSettings
from exporter.errors import OperatorError
from exporter.finalizer import audit, valves
from exporter.finalizer.model import Result
from exporter.finalizer.service import event_defaults, limits, replica_id, run_action
from exporter.vocabulary import APPLIED, CLOSED, DRY_RUN, SKIPPED

OK_OUTCOMES = (APPLIED, CLOSED, DRY_RUN, SKIPPED)


def _write_engine(settings: FinalizerSettings) -> Engine:
    r = settings.remediation
    url = config.resolve_dsn(r.write_dsn, r.write_dsn_file, "write_dsn")
    return db.make_engine(url, settings.connect_timeout_seconds,
                          application_name="cj-health-exporter-remediate")


def _require_installed(engine: Engine) -> None:
    with engine.connect() as conn:
        if not audit.installed(conn):
            raise OperatorError("the audit table cj_health_remediations is missing: run "
                              "`cj-health-exporter install-view --remediation` first")


def set_pause(settings: FinalizerSettings, reason: str | None,
              out: Callable[[str], None] = print) -> int:
    """reason: pause with it; None: resume."""
    engine = _write_engine(settings)
    try:
        _require_installed(engine)
        if reason is not None:
            audit.pause(engine, replica_id(settings), reason)
            out(f"remediation paused for every replica: {reason}")
        elif audit.resume(engine):
            out("remediation resumed")
        else:
            out("remediation was not paused")
    finally:
        engine.dispose()
    return 0


def remediate(settings: FinalizerSettings, batch_id: int, action: str, yes: bool,
              out: Callable[[str], None] = print) -> int:
    if not yes:
        return _preview(settings, batch_id, action, out)
    auth = valves.authorize(settings)
    if not auth.allowed:
        raise OperatorError(f"refusing to remediate: {auth.reason}")
    if action not in auth.actions:
        raise OperatorError(f"refusing to remediate: action {action} is not in "
                          f"remediation.actions ({', '.join(auth.actions)})")
    engine = _write_engine(settings)
    try:
        _require_installed(engine)
        with engine.connect() as conn:
            pause = audit.pause_state(conn)
        if settings.remediation.paused or pause is not None:
            out("refusing to remediate: remediation is paused ("
                + (pause.describe() if pause else "remediation.paused is true") + ")")
            return 1
        replica = replica_id(settings)
        result = run_action(engine, action, batch_id, replica=replica, dry_run=False,
                            limits=limits(settings), defaults=event_defaults(settings))
        audit.record(engine, result, replica, dry_run=False)
    finally:
        engine.dispose()
    _print(result, out)
    return 0 if result.outcome in OK_OUTCOMES else 1


def _preview(settings: FinalizerSettings, batch_id: int, action: str,
             out: Callable[[str], None]) -> int:
    r = settings.remediation
    if r.write_dsn or r.write_dsn_file:
        engine = _write_engine(settings)
    else:
        url = config.resolve_dsn(settings.dsn, settings.dsn_file)
        engine = db.make_engine(url, settings.connect_timeout_seconds)
    try:
        result = run_action(engine, action, batch_id, replica=replica_id(settings),
                            dry_run=True, limits=limits(settings),
                            defaults=event_defaults(settings))
    finally:
        engine.dispose()
    out("DRY RUN: nothing is changed; add --yes to apply.")
    _print(result, out)
    return 0 if result.outcome in OK_OUTCOMES else 1


def _print(result: Result, out: Callable[[str], None]) -> None:
    head = f"{result.action} batch {result.cj_batch_id}: {result.outcome}"
    out(f"{head} ({result.reason})" if result.reason else head)
    detail: dict[str, Any] = {k: v for k, v in result.detail.items() if k != "reason"}
    for step in detail.pop("plan", []):
        out(f"  - {step}")
    for key, value in detail.items():
        shown = ", ".join(map(str, value)) if isinstance(value, list) else value
        out(f"  {key}: {shown}")
