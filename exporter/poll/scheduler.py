"""The poll loop: a job on the monotonic clock (exporter.poll.ticker) that polls and publishes.

The job blocks until its query is done, and a slow poll makes the ticker skip ticks (counted in
cj_health_polls_skipped_total) instead of piling up queries. A failed poll keeps the previous
snapshot and sets cj_health_up to 0; once no poll has succeeded for `stale_after` intervals the
per-batch series are withdrawn, so nothing stale is served as fresh. The next good poll recovers
without a restart.

Polls are incremental between full ones (exporter.poll.incremental). Each published page
renders a variant when a scrape first asks for it (exporter.handoff.Rendered); the variants
scrapers fetched from the previous page are rendered right after publishing, in the poll thread,
so a scrape still only copies bytes and the variants nobody asks for are never rendered.

Staleness is measured on the monotonic clock from the last good poll, and a watchdog republishes
the page the moment it turns stale: a poll that hangs publishes nothing, and a step of the wall
clock (either way) must neither hide staleness nor invent it.

After a failed poll the next attempt comes sooner than the interval, with exponential backoff
(RETRY_FIRST_SECONDS, doubling, with jitter so replicas do not retry in step, never more often
than the interval would once it is reached): a database that comes back a second after a failed
start is polled a second later, and a long outage costs one attempt per interval.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime

from prometheus_client.core import Metric
from sqlalchemy import Engine

from exporter.collector import SelfStats, SnapshotCollector, idle_remediation_families, render
from exporter.config import Settings
from exporter.db import InFlight, error_reason, explain
from exporter.handoff import Page, Store
from exporter.poll.incremental import IncrementalPoll
from exporter.poll.snapshot import Snapshot
from exporter.poll.ticker import Ticker
from exporter.poll.warnings import FaultLog
from exporter.vocabulary import POLL_ERROR_REASONS

log = logging.getLogger(__name__)
RETRY_FIRST_SECONDS = 1.0


class Poller:
    def __init__(self, settings: Settings, engine: Engine,
                 extra_metrics: Callable[[], Iterable[Metric]] = idle_remediation_families,
                 remediation_enabled: bool = False) -> None:
        self.settings = settings
        self.engine = engine
        self.extra_metrics = extra_metrics
        self.remediation_enabled = remediation_enabled
        self.snapshot: Snapshot | None = None
        self.last_good_at: float | None = None  # time.monotonic() of the last good poll
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._publish_lock = threading.Lock()  # a skip and a poll must not publish out of order
        self._failures_in_a_row = 0
        self._up = False
        self._last_duration: float | None = None
        self._polls = 0
        self._errors = dict.fromkeys(POLL_ERROR_REASONS, 0)
        self._skipped = 0
        self._reader = IncrementalPoll(settings)
        self._in_flight = InFlight(engine)
        self._malformed_log = FaultLog("skipping malformed cj_batch_health",
                                       "malformed cj_batch_health rows skipped")
        self._unreadable_log = FaultLog(
            "JSON documents PostgreSQL cannot read (their facts are unknown, see"
            " cj_batch_unreadable_documents) in", "batches with unreadable JSON documents")
        self._idle = threading.Event()
        self._idle.set()
        self._stopping = threading.Event()
        self.store = Store(self._page())

    def poll_once(self) -> None:
        """One poll (the scheduler's job); does nothing once cancel() was called."""
        if self._stopping.is_set():
            return
        self._idle.clear()
        try:
            self._poll()
        finally:
            self._idle.set()

    def request_full_poll(self) -> None:
        """Make the next poll a full one: it then also sees changes no column signals."""
        self._reader.request_full()

    def cancel(self) -> None:
        """Shutdown: no new polls, and the running poll's query is cancelled server-side."""
        self._stopping.set()
        self._in_flight.cancel_all()

    def wait_idle(self, timeout: float) -> bool:
        return self._idle.wait(timeout)

    def _poll(self) -> None:
        started = time.monotonic()
        try:
            snap = self._reader.poll(self.engine)
        except Exception as exc:  # a poll must never kill the loop; every failure is counted
            reason = error_reason(exc)
            with self._lock:
                self._polls += 1
                self._errors[reason] += 1
                self._up = False
                self._last_duration = time.monotonic() - started
                error = f"{reason}: {explain(exc)}"
                changed, self.last_error = error != self.last_error, error
                self._failures_in_a_row += 1
                failures = self._failures_in_a_row
            # One warning when an outage starts or its cause changes (the server went away,
            # then the password was rotated), then a reminder every 20 polls: a long outage
            # must not bury the log, and cj_health_poll_errors_total has the exact count.
            if failures == 1 or changed or failures % 20 == 0:
                log.warning("poll failed (%s), %d in a row", self.last_error, failures)
        else:
            with self._lock:
                self._polls += 1
                self._up = True
                self._last_duration = snap.duration_seconds
                self.snapshot = snap
                self.last_good_at = time.monotonic()
                self.last_error = None
                recovered, self._failures_in_a_row = self._failures_in_a_row, 0
            if recovered:
                log.info("poll recovered after %d failed polls", recovered)
            self._malformed_log.observe(snap.malformed)
            self._unreadable_log.observe(_unreadable(snap))
            log.debug("poll ok (%s): %d watched, %d read, %d exported in %.3fs",
                      "full" if snap.full_poll else "incremental", snap.watched,
                      snap.batches_read, len(snap.batches), snap.duration_seconds)
        self.publish()

    def count_skip(self) -> None:
        with self._lock:
            self._skipped += 1
        log.warning("poll skipped: the previous poll is still running")
        self.publish()

    def retry_delay(self) -> float | None:
        """Seconds until the next attempt after a failed poll (None after a good one)."""
        with self._lock:
            failures = self._failures_in_a_row
        if not failures:
            return None
        delay: float = RETRY_FIRST_SECONDS * 2.0 ** min(failures - 1, 30)
        return min(delay * random.uniform(1.0, 1.2), self.settings.poll_interval_seconds)

    def is_stale(self) -> bool:
        """Monotonic seconds since the last good poll beyond stale_after (never the wall clock:
        its steps would hide staleness, or invent it)."""
        last = self.last_good_at
        return last is not None and time.monotonic() - last > self.settings.stale_after_seconds

    def check_stale(self) -> None:
        """The watchdog: publish again when staleness changed since the last page, so a poll
        that hangs (and so publishes nothing) cannot keep a stale snapshot looking fresh."""
        if bool(self.store.page.status.get("stale")) != self.is_stale():
            self.publish()

    def stats(self) -> SelfStats:
        with self._lock:
            snap = self.snapshot
            return SelfStats(
                up=self._up, stale=self.is_stale(),
                last_success=snap.taken_at if snap else None,
                last_duration=self._last_duration, polls=self._polls,
                errors=dict(self._errors), skipped=self._skipped,
                remediation_enabled=self.remediation_enabled,
                full_polls=self._reader.full_polls, last_full_poll=self._reader.last_full_at,
                unsignalled_bound=self.settings.unsignalled_bound_seconds
                if self._reader.incremental else self.settings.poll_interval_seconds,
            )

    def publish(self) -> None:
        with self._publish_lock:
            previous = self.store.page.metrics
            page = self._page()
            self.store.publish(page)
        # Scrapers keep asking for what they asked for before: render that now, here, rather
        # than in their request (a scrape arriving meanwhile waits for this render, no second).
        for variant in previous.served():
            page.metrics.body(variant)

    def _page(self) -> Page:
        stats = self.stats()
        rendered = render(SnapshotCollector(self.snapshot, stats, self.extra_metrics))
        status = {
            "up": stats.up,
            "stale": stats.stale,
            "last_success": _iso(stats.last_success),
            "last_error": self.last_error,
            # what /metrics has: nothing per batch while stale
            "exported_batches": len(self.snapshot.batches) if self.snapshot and not stats.stale
            else 0,
            "poll_interval_seconds": self.settings.poll_interval_seconds,
        }
        return Page(rendered, status)


def _unreadable(snap: Snapshot) -> dict[str, str]:
    """batch -> what of it cannot be read, for the rate-limited warning."""
    return {
        f"batch {b.cj_batch_id}": ", ".join(f"{doc} {n}" for doc, n in sorted(b.unreadable.items()))
        for b in snap.batches if b.unreadable
    }


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts).astimezone().isoformat()


class PollScheduler:
    """Runs the poll job (and, if given, other jobs) and the staleness watchdog, each on a
    monotonic ticker of its own."""

    def __init__(self, poller: Poller) -> None:
        self.poller = poller
        interval = poller.settings.poll_interval_seconds
        self.tickers = [
            Ticker("poll", interval, self._poll_job, on_missed=poller.count_skip),
            # Often enough that withdrawal comes within a second (or a quarter of stale_after).
            Ticker("stale-watchdog", min(1.0, poller.settings.stale_after_seconds / 4),
                   poller.check_stale),
        ]

    def _poll_job(self) -> None:
        self.poller.poll_once()
        delay = self.poller.retry_delay()
        if delay is not None:
            self.tickers[0].sooner(delay)  # the fixed rate goes on from the retry

    def add_interval_job(self, func: Callable[[], None], seconds: float, job_id: str) -> None:
        self.tickers.append(Ticker(job_id, seconds, func, first_delay=1.0))

    def start(self) -> None:
        for ticker in self.tickers:
            ticker.start()

    def stop(self, timeout: float = 3.0) -> bool:
        """Stop scheduling, cancel a running poll server-side and wait for it up to `timeout`.

        Waiting for the poll's statement_timeout instead (10 s by default) would break the
        promise that SIGTERM ends the process within 5 s. Returns whether the poll finished.
        """
        for ticker in self.tickers:
            ticker.stop()
        self.poller.cancel()
        return self.poller.wait_idle(timeout)
