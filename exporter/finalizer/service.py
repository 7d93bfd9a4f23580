"""The remediation cycle (a ticker job beside the poll) and the one-off manual action.

Each cycle: lead (advisory lock) or do nothing; read the candidates from the view, the pause
switch and the batches' audit history; let the valves pick the actions; run each one in its
own transaction; audit and count every outcome. A failing cycle is logged and counted, never
fatal: the exporter keeps exporting.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client.core import Metric
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from exporter import db
from exporter.config import FinalizerSettings
from exporter.finalizer import audit, candidates, valves
from exporter.finalizer.anchors import backfill_anchors
from exporter.finalizer.events import DEFAULTS, Defaults
from exporter.finalizer.leader import LeaderLock
from exporter.finalizer.metrics import RemediationMetrics
from exporter.finalizer.model import Limits, Result
from exporter.finalizer.refinalize import refinalize
from exporter.vocabulary import BACKFILL_ANCHORS, REFINALIZE

log = logging.getLogger(__name__)


def replica_id(settings: FinalizerSettings) -> str:
    return settings.remediation.replica_id or f"{socket.gethostname()}:{os.getpid()}"


def limits(settings: FinalizerSettings) -> Limits:
    # A finalization reads and writes a whole batch: give it more room than a poll query.
    return Limits(statement_timeout=max(settings.statement_timeout_seconds, 30.0),
                  lock_timeout=settings.lock_timeout_seconds)


def event_defaults(settings: FinalizerSettings) -> Defaults:
    """The CJ service's overridable defaults the result event carries (config.py)."""
    r = settings.remediation
    return Defaults(model=r.default_llm_model, provider=r.default_llm_provider,
                    temperature=r.llm_temperature)


def run_action(engine: Engine, action: str, batch_id: int, *, replica: str, dry_run: bool,
               limits: Limits, defaults: Defaults = DEFAULTS) -> Result:
    if action == REFINALIZE:
        return refinalize(engine, batch_id, replica=replica, dry_run=dry_run, limits=limits,
                          defaults=defaults)
    if action == BACKFILL_ANCHORS:
        return backfill_anchors(engine, batch_id, replica=replica, dry_run=dry_run,
                                limits=limits)
    raise ValueError(f"unknown action {action!r}")


@dataclass(frozen=True)
class CycleReport:
    leader: bool
    results: tuple[Result, ...] = ()
    decision: valves.Decision | None = None
    error: str | None = None


class Remediator:
    """Owns the write engine and the leader connection; one instance per exporter process."""

    def __init__(self, settings: FinalizerSettings, write_url: URL, *,
                 leader: LeaderLock | None = None, engine: Engine | None = None) -> None:
        self.settings = settings
        r = settings.remediation
        self.dry_run = r.dry_run
        self.actions = r.actions
        self.replica = replica_id(settings)
        self.limits = limits(settings)
        self.defaults = event_defaults(settings)
        self.engine = engine or db.make_engine(write_url, settings.connect_timeout_seconds,
                                               application_name="cj-health-exporter-finalizer",
                                               pool_size=2)
        self.leader = leader if leader is not None else LeaderLock(
            write_url, settings.connect_timeout_seconds, election=r.leader_election,
            cycle_seconds=r.interval_seconds)
        self.metrics = RemediationMetrics(dry_run=r.dry_run)
        self.on_cycle_done: Callable[[], None] = lambda: None

    @property
    def acting(self) -> bool:
        """Authorized to change the database (not only to plan)."""
        return not self.dry_run

    def tick(self) -> None:
        """The scheduler's job."""
        self.run_cycle()

    def run_cycle(self) -> CycleReport:
        try:
            report = self._cycle()
        except Exception as exc:  # the scheduler must keep running; the next cycle retries
            reason = db.describe_error(exc)
            log.error("remediation cycle failed: %s", reason)
            self.metrics.cycle("error", leader=self.leader.held)
            report = CycleReport(self.leader.held, error=reason)
        self.on_cycle_done()
        return report

    def _cycle(self) -> CycleReport:
        if not self.leader.ensure():
            self.metrics.cycle("follower", leader=False)
            return CycleReport(False)
        r = self.settings.remediation
        with self.engine.connect() as conn, conn.begin():
            if not audit.installed(conn):
                raise RuntimeError("the audit table cj_health_remediations is missing: run "
                                   "`cj-health-exporter install-view --remediation`")
            pause = audit.pause_state(conn)
            found = candidates.find(conn, self.settings.lookback_seconds, self.actions)
            ids = sorted({c.cj_batch_id for c in found.candidates})
            # The valves compare times the database wrote with the database's clock of this
            # same read (audit.history), never with the exporter host's.
            past = audit.history(conn, ids, self.dry_run)
        paused = r.paused or pause is not None
        if paused and found.candidates:
            log.info("remediation paused (%s): %d candidate action(s) held back",
                     pause.describe() if pause else "remediation.paused",
                     len(found.candidates))
        decision = valves.decide(found.candidates, wedged=found.wedged, paused=paused,
                                 settings=r, history=past.by_action, now=past.now)
        if decision.blocked.get("too_many_wedged"):
            log.error("%d batches are wedged at once (max_wedged_for_auto=%d): no automatic "
                      "remediation, this looks systemic", found.wedged, r.max_wedged_for_auto)
        results = tuple(self._act(c) for c in decision.run)
        self.metrics.cycle("ok", leader=True, blocked=decision.blocked, paused=paused,
                           wedged=found.wedged)
        return CycleReport(True, results, decision)

    def _act(self, candidate: valves.Candidate) -> Result:
        result = run_action(self.engine, candidate.action, candidate.cj_batch_id,
                            replica=self.replica, dry_run=self.dry_run, limits=self.limits,
                            defaults=self.defaults)
        try:
            audit.record(self.engine, result, self.replica, self.dry_run)
        except Exception as exc:  # the action's outcome stands; the missing row is logged
            log.error("could not audit %s: %s", result.line(), db.describe_error(exc))
        self.metrics.count(result)
        level = logging.WARNING if result.outcome in ("failed", "needs_person") else logging.INFO
        log.log(level, "%s%s", "[dry run] " if self.dry_run else "", result.line())
        return result

    def collect(self) -> Iterator[Metric]:
        """The finalizer's families for the exporter's collector (extra_metrics)."""
        yield from self.metrics.collect()
        yield from self.leader.collect()

    def close(self) -> None:
        self.leader.close()
        self.engine.dispose()


def start(settings: FinalizerSettings) -> tuple[Remediator | None, str]:
    """A Remediator when the settings authorize one, else None and the reason (logged)."""
    auth = valves.authorize(settings)
    if not auth.allowed or auth.write_url is None:
        log.error("remediation refused: %s", auth.reason)
        return None, auth.reason
    log.info("remediation authorized (%s), every %ss", auth.reason,
             settings.remediation.interval_seconds)
    return Remediator(settings, auth.write_url), auth.reason
