"""exporter/poll/ticker.py: fixed-rate ticks on the monotonic clock; a tick that comes while the
job still runs is missed (told at once), never queued. The wall-clock side is
tests/process/test_clock_steps.py."""

from __future__ import annotations

import threading
import time

from exporter.poll.ticker import Ticker


def test_runs_at_its_interval_and_stops() -> None:
    runs: list[float] = []
    ticker = Ticker("t", 0.05, lambda: runs.append(time.monotonic()))
    ticker.start()
    time.sleep(0.5)
    ticker.stop()
    stopped = len(runs)
    time.sleep(0.2)
    assert 4 <= stopped <= 11, stopped
    assert len(runs) == stopped, "no run after stop()"
    mean_gap = (runs[-1] - runs[0]) / (len(runs) - 1)
    assert 0.04 <= mean_gap <= 0.1, mean_gap  # fixed rate: no drift by the job's own time


def test_a_long_run_misses_ticks_and_says_so_while_it_runs() -> None:
    release = threading.Event()
    missed_while_running: list[int] = []
    runs = []

    def job() -> None:
        runs.append(1)
        if len(runs) == 1:
            release.wait(5)

    ticker = Ticker("t", 0.05, job, on_missed=lambda: missed_while_running.append(1))
    ticker.start()
    time.sleep(0.4)
    during = len(missed_while_running)
    release.set()
    time.sleep(0.2)
    ticker.stop()
    assert during >= 3, during  # counted at each tick, not when the long run ends
    assert len(runs) <= 1 + 6, runs  # the missed ticks were not queued up behind it


def test_a_failing_job_does_not_stop_the_schedule() -> None:
    runs = []

    def job() -> None:
        runs.append(1)
        raise RuntimeError("boom")

    ticker = Ticker("t", 0.05, job)
    ticker.start()
    time.sleep(0.3)
    ticker.stop()
    assert len(runs) >= 3


def test_sooner_brings_the_next_run_forward_and_the_rate_goes_on_from_there() -> None:
    runs: list[float] = []
    ticker = Ticker("t", 10.0, lambda: runs.append(time.monotonic()))
    ticker.start()
    time.sleep(0.1)
    assert len(runs) == 1  # the first tick is at once, the next 10 s later
    asked = time.monotonic()
    ticker.sooner(0.1)
    ticker.sooner(5.0)  # later than the next tick now: no change
    time.sleep(0.4)
    ticker.stop()
    assert len(runs) == 2 and 0.05 <= runs[1] - asked <= 0.3, (runs, asked)
