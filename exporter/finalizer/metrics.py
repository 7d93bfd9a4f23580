"""The finalizer's metric families, yielded by the exporter's collector (extra_metrics).

Counters live here (a thread lock guards them: the remediation job and the poll job render
from different threads); the gauges describe the last cycle. cj_health_remediation_enabled
is not here: the core collector emits it from SelfStats.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping

from prometheus_client.core import Metric

from exporter.families import new
from exporter.finalizer.model import Result
from exporter.vocabulary import ACTIONS, BLOCK_REASONS, CYCLE_RESULTS, OUTCOMES


class RemediationMetrics:
    def __init__(self, dry_run: bool) -> None:
        self._lock = threading.Lock()
        self._dry_run = dry_run
        self._actions = {(a, o): 0 for a in ACTIONS for o in OUTCOMES}
        self._cycles = dict.fromkeys(CYCLE_RESULTS, 0)
        self._blocked = dict.fromkeys(BLOCK_REASONS, 0)
        self._leader = False
        self._paused = False
        self._wedged = 0
        self._last_cycle: float | None = None

    def count(self, result: Result) -> None:
        with self._lock:
            self._actions[(result.action, result.outcome)] += 1

    def cycle(self, outcome: str, *, leader: bool, blocked: Mapping[str, int] | None = None,
              paused: bool | None = None, wedged: int | None = None) -> None:
        """Record one cycle; gauges keep their last known value when a cycle could not tell."""
        with self._lock:
            self._cycles[outcome] += 1
            self._leader = leader
            self._last_cycle = time.time()
            if not leader:
                # A follower holds nothing back: it does not decide anything.
                self._blocked = dict.fromkeys(BLOCK_REASONS, 0)
            if blocked is not None:
                self._blocked = {r: int(blocked.get(r, 0)) for r in BLOCK_REASONS}
            if paused is not None:
                self._paused = paused
            if wedged is not None:
                self._wedged = wedged

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            actions = dict(self._actions)
            cycles = dict(self._cycles)
            blocked = dict(self._blocked)
            leader, paused, wedged, last = self._leader, self._paused, self._wedged, \
                self._last_cycle
        family = new("cj_health_remediations")
        for (action, outcome), value in sorted(actions.items()):
            family.add_metric([action, outcome], value)
        yield family
        runs = new("cj_health_remediation_cycles")
        for result, value in cycles.items():
            runs.add_metric([result], value)
        yield runs
        held = new("cj_health_remediation_blocked")
        for reason, value in blocked.items():
            held.add_metric([reason], value)
        yield held
        yield new("cj_health_remediation_leader", int(leader))
        yield new("cj_health_remediation_paused", int(paused))
        yield new("cj_health_remediation_dry_run", int(self._dry_run))
        yield new("cj_health_remediation_wedged_batches", wedged)
        if last is not None:
            yield new("cj_health_remediation_last_cycle_timestamp_seconds", last)
