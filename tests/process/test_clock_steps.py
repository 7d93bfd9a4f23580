"""Steps of the wall clock under a real `serve` (issue 12, item 6).

The child's wall clock is stepped by tests/support/clockshim (time.time and datetime.now move,
the monotonic clock does not, as when NTP steps the clock or a VM is restored). Before the fix
a -1 h step stopped polling for an hour (APScheduler slept towards a wall-clock deadline) while
the old snapshot was served as fresh: 0 polls in 65 s, up 1, stale 0. Now polls go on at their
interval across -1 h and +1 day, and staleness, measured on the monotonic clock, is reported
within stale_after of the last good poll whatever the wall clock says (a poll is made to hang
on a table lock the test holds), and is never invented by a forward step.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.support.clock import Clock
from tests.support.database import SeededDb
from tests.support.exposition import sample_value
from tests.support.process import ExporterProcess

INTERVAL = 0.5
STALE_AFTER = 3  # intervals: stale 1.5 s after the last good poll
OBSERVE = 3.0  # seconds per phase


@pytest.fixture
def stepped(seeded_db: SeededDb, tmp_path: Path) -> Iterator[tuple[ExporterProcess, Clock]]:
    clock = Clock(tmp_path / "offset")
    env = {
        **clock.env(),
        # A poll blocked by the test's table lock hangs (rather than failing after 2 s).
        "CJ_HEALTH_LOCK_TIMEOUT_SECONDS": "20",
        "CJ_HEALTH_STATEMENT_TIMEOUT_SECONDS": "20",
    }
    with ExporterProcess(seeded_db.url, poll_interval=INTERVAL, env=env,
                         extra_args=["--stale-after", str(STALE_AFTER)]) as exp:
        yield exp, clock


def sample(exp: ExporterProcess) -> dict[str, float]:
    """What /metrics says, checked against what /healthz says about staleness."""
    # A page may be published between two requests (never within one): /metrics must agree
    # with /healthz just before or just after it.
    before = exp.get("/healthz")
    body = exp.metrics()
    after = exp.get("/healthz")
    assert before[0] == after[0] == 200
    stale = sample_value(body, "cj_health_snapshot_stale")
    told = {bool(json.loads(h[2])["stale"]) for h in (before, after)}
    assert bool(stale) in told, (before[2], after[2], stale)
    return {"polls": sample_value(body, "cj_health_polls_total") or 0.0,
            "up": sample_value(body, "cj_health_up") or 0.0,
            "stale": sample_value(body, "cj_health_snapshot_stale") or 0.0,
            "last_success": sample_value(body, "cj_health_last_success_timestamp_seconds") or 0.0,
            # the child's wall clock as its HTTP Date header tells it (1 s resolution)
            "wall": parsedate_to_datetime(_header(after[1], "date")).timestamp(),
            "batch_series": float(body.count("cj_batch_problem{"))}


def _header(headers: dict[str, str], name: str) -> str:
    return next(v for k, v in headers.items() if k.lower() == name)


def observe(exp: ExporterProcess, seconds: float) -> list[dict[str, float]]:
    seen = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        seen.append(sample(exp))
        time.sleep(0.2)
    return seen


def fresh_phase(exp: ExporterProcess, clock: Clock, offset: float) -> str:
    """Step the clock, then: polls continue, every scrape fresh, the stepped clock in use."""
    clock.set(offset)
    before = sample(exp)["polls"]
    seen = observe(exp, OBSERVE)
    polls = seen[-1]["polls"] - before
    assert polls >= OBSERVE / INTERVAL / 2, f"{polls} polls in {OBSERVE}s after {offset:+}s"
    assert all(s["up"] == 1 and s["stale"] == 0 and s["batch_series"] > 0 for s in seen), seen
    drift = seen[-1]["wall"] - time.time() - offset
    assert abs(drift) < 5, f"the shim did not step the child's clock ({drift:+.0f}s)"
    # A poll's time is the database's now(), which no step of the exporter host's clock moves.
    skew = seen[-1]["last_success"] - time.time()
    assert abs(skew) < 5, f"the last poll's time moved with the host's clock ({skew:+.0f}s)"
    return f"{offset:+.0f}s: {polls:.0f} polls in {OBSERVE:.0f}s, {len(seen)} scrapes up 1 stale 0"


def hang_phase(exp: ExporterProcess, url: str) -> str:
    """A poll hangs on a table lock: stale within stale_after of the last good poll (the poll
    publishes nothing meanwhile), fresh again once the lock goes."""
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text("LOCK TABLE cj_batch_states IN ACCESS EXCLUSIVE MODE"))
            locked.set()
            release.wait(20)
        engine.dispose()

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert locked.wait(10)
    held_at = time.monotonic()
    try:
        seen: list[dict[str, float]] = []
        while not seen or seen[-1]["stale"] != 1:
            assert time.monotonic() - held_at < 10, f"never stale: {seen[-3:]}"
            seen.append(sample(exp))
            time.sleep(0.1)
        to_stale = time.monotonic() - held_at
        assert seen[-1]["batch_series"] == 0, "stale: per-batch series are withdrawn"
    finally:
        release.set()
        holder.join(10)
    released = time.monotonic()
    while (s := sample(exp))["stale"] != 0 or s["up"] != 1:
        assert time.monotonic() - released < 10, s
        time.sleep(0.1)
    # The lock came at most one interval after the last good poll started, plus the sampling.
    bound = STALE_AFTER * INTERVAL + INTERVAL + 1.0
    assert to_stale < bound, (to_stale, bound)
    return (f"poll hung: stale {to_stale:.2f}s after the lock (stale_after"
            f" {STALE_AFTER * INTERVAL}s), fresh {time.monotonic() - released:.2f}s after release")


def test_polls_go_on_and_staleness_is_told_across_wall_clock_steps(
        stepped: tuple[ExporterProcess, Clock], seeded_db: SeededDb) -> None:
    exp, clock = stepped
    report = [fresh_phase(exp, clock, 0)]
    report.append(fresh_phase(exp, clock, -3600))
    report.append(hang_phase(exp, seeded_db.url))
    report.append(fresh_phase(exp, clock, 86400))
    report.append(hang_phase(exp, seeded_db.url))
    report.append(fresh_phase(exp, clock, 0))
    print("\nwall-clock steps (poll every 0.5 s):\n  " + "\n  ".join(report))
    assert "Traceback" not in exp.output()
