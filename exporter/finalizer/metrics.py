"""The finalizer's metric families, yielded by the exporter's collector (extra_metrics).

Counters live here (a thread lock guards them: the remediation job and the poll job render
from different threads); the gauges describe the last cycle. cj_health_remediation_enabled
is not here: the core collector emits it from SelfStats.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from exporter.finalizer.model import ACTIONS, OUTCOMES, Result
from exporter.finalizer.valves import REASONS

CYCLE_RESULTS = ("ok", "follower", "error")


class RemediationMetrics:
    def __init__(self, dry_run: bool) -> None:
        self._lock = threading.Lock()
        self._dry_run = dry_run
        self._actions = {(a, o): 0 for a in ACTIONS for o in OUTCOMES}
        self._cycles = dict.fromkeys(CYCLE_RESULTS, 0)
        self._blocked = dict.fromkeys(REASONS, 0)
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
                self._blocked = dict.fromkeys(REASONS, 0)
            if blocked is not None:
                self._blocked = {r: int(blocked.get(r, 0)) for r in REASONS}
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
        family = CounterMetricFamily(
            "cj_health_remediations", "Finalizer actions by outcome (applied, dry_run, skipped,"
            " needs_person, failed); every one has a row in cj_health_remediations.",
            labels=["action", "outcome"])
        for (action, outcome), value in sorted(actions.items()):
            family.add_metric([action, outcome], value)
        yield family
        runs = CounterMetricFamily("cj_health_remediation_cycles",
                                   "Remediation cycles by result (follower: another replica"
                                   " leads).", labels=["result"])
        for result, value in cycles.items():
            runs.add_metric([result], value)
        yield runs
        held = GaugeMetricFamily("cj_health_remediation_blocked",
                                 "Candidate actions the safety valves held back in the last"
                                 " cycle, by reason.", labels=["reason"])
        for reason, value in blocked.items():
            held.add_metric([reason], value)
        yield held
        yield GaugeMetricFamily("cj_health_remediation_leader",
                                "1 when this replica holds the remediation leader lock.",
                                value=int(leader))
        yield GaugeMetricFamily("cj_health_remediation_paused",
                                "1 when remediation is paused (remediation.paused or the"
                                " cj_health_remediation_pause row).", value=int(paused))
        yield GaugeMetricFamily("cj_health_remediation_dry_run",
                                "1 when the finalizer only plans (remediation.dry_run).",
                                value=int(self._dry_run))
        yield GaugeMetricFamily("cj_health_remediation_wedged_batches",
                                "Batches wedged or stuck in SCORING seen by the last cycle.",
                                value=wedged)
        if last is not None:
            yield GaugeMetricFamily("cj_health_remediation_last_cycle_timestamp_seconds",
                                    "Unix time of the last remediation cycle.", value=last)
