"""A job run every N seconds on the monotonic clock, in a thread of its own.

The poll and the remediation cycle used to be APScheduler interval jobs. APScheduler sleeps until
a deadline on the wall clock (`datetime.now()`), so a backward step of the host's clock (an NTP
step, a VM restored from a snapshot) stopped polling for the length of the step: -1 h, no poll
for an hour, while the last snapshot was served as fresh. Here every deadline is a
`time.monotonic()` reading, and the wait is `threading.Event.wait`, whose timeout CPython 3.11
measures on CLOCK_MONOTONIC too (sem_clockwait, glibc >= 2.30). The wall clock is only used for
the timestamps the exporter reports.

Ticks are at a fixed rate from the start (start + k * interval), not "interval after the last
run ended", so a poll's own duration does not drift the schedule. The job runs in a worker
thread of its own; a tick that comes while it still runs is missed, not queued (as APScheduler's
`max_instances=1, coalesce=True` did), and `on_missed` is told at that tick, so a poll that
hangs shows up in cj_health_polls_skipped_total while it hangs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Ticker:
    def __init__(self, name: str, seconds: float, job: Callable[[], None], *,
                 first_delay: float = 0.0,
                 on_missed: Callable[[], None] | None = None) -> None:
        self.name = name
        self.seconds = seconds
        self.job = job
        self.first_delay = first_delay
        self.on_missed = on_missed
        self._stop = threading.Event()
        self._wake = threading.Event()  # stop() or sooner(): look at the deadline again
        self._lock = threading.Lock()
        self._due = 0.0  # time.monotonic() of the next tick
        self._go = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        # Daemons: a job stuck in a system call must not keep the process alive after shutdown
        # (exporter.service waits for the poll itself, bounded).
        self._clock = threading.Thread(target=self._tick, name=name, daemon=True)
        self._worker = threading.Thread(target=self._work, name=f"{name}-job", daemon=True)

    def start(self) -> None:
        self._worker.start()
        self._clock.start()

    def stop(self) -> None:
        """No run starts after this; a run in progress goes on (the caller cancels it)."""
        self._stop.set()
        self._wake.set()
        self._go.set()  # wakes an idle worker, which then ends

    def sooner(self, delay: float) -> None:
        """Bring the next tick forward to `delay` seconds from now, if that is earlier (a retry
        after a failure); the fixed rate goes on from there."""
        with self._lock:
            at = time.monotonic() + delay
            if at < self._due:
                self._due = at
                self._wake.set()

    def _tick(self) -> None:
        with self._lock:
            self._due = time.monotonic() + self.first_delay
        while not self._stop.is_set():
            with self._lock:
                wait = self._due - time.monotonic()
            if wait > 0:
                self._wake.wait(wait)
                self._wake.clear()
                continue  # stopped, brought forward, or simply due: look again
            if self._idle.is_set():
                self._idle.clear()
                self._go.set()
            elif self.on_missed is not None:
                self.on_missed()
            with self._lock:
                self._due += self.seconds
                behind = time.monotonic() - self._due
                if behind > self.seconds:  # this thread itself was held up: no burst
                    self._due += (behind // self.seconds) * self.seconds

    def _work(self) -> None:
        while True:
            self._go.wait()
            self._go.clear()
            if self._stop.is_set():
                return
            try:
                self.job()
            except Exception:  # the job's own errors are its business; the schedule goes on
                log.exception("%s failed", self.name)
            finally:
                self._idle.set()
