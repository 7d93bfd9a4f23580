"""README's first command: `cj-health-exporter demo` brings up a seeded embedded Postgres, its
/metrics flags each planted problem on exactly the planted batches, and Ctrl-C removes it all."""

from __future__ import annotations

import re
import time
import urllib.parse
from pathlib import Path

from exporter.vocabulary import FAMILIES
from tests.support.exposition import parse
from tests.support.process import DemoProcess

# The families only a running finalizer exports (exporter/finalizer/metrics.py, leader.py).
FINALIZER_ONLY = {"cj_health_remediation_cycles", "cj_health_remediation_blocked",
                  "cj_health_remediation_leader", "cj_health_remediation_paused",
                  "cj_health_remediation_dry_run", "cj_health_remediation_wedged_batches",
                  "cj_health_remediation_last_cycle_timestamp_seconds",
                  "cj_health_remediation_leader_election"}


def planted_from(summary: str) -> dict[int, set[str]]:
    planted = {}
    for batch_id, problems in re.findall(r"^\s+(\d+): (.+)$", summary, re.MULTILINE):
        planted[int(batch_id)] = set() if problems == "healthy" else set(problems.split(", "))
    return planted


def test_demo_flags_exactly_the_planted_problems_and_cleans_up() -> None:
    with DemoProcess() as demo:
        out = demo.summary
        assert f"metrics at {demo.url}/metrics" in out
        planted = planted_from(out)
        assert len(planted) >= 10
        body = parse("")
        deadline = time.monotonic() + 20
        while not body.samples("cj_batch_problem") and time.monotonic() < deadline:
            body = parse(demo.metrics())
            time.sleep(0.2)
        flagged: dict[int, set[str]] = {}
        for s in body.samples("cj_batch_problem"):
            flagged.setdefault(int(s.labels["cj_batch_id"]), set()).add(s.labels["problem"])
        assert flagged == {b: p for b, p in planted.items() if p}
        # every declared family but the finalizer's own, which only a running finalizer
        # exports (its actions counter is there, at 0; tests/stack/test_alerts_contract.py
        # sees all of them with the finalizer on)
        assert set(FAMILIES) >= FINALIZER_ONLY
        assert set(body.families) == set(FAMILIES) - FINALIZER_ONLY
        assert body.value("cj_health_remediations_total", action="refinalize",
                          outcome="applied") == 0
        match = re.search(r"host=([^'&]+)", out)
        assert match, out
        data_dir = Path(urllib.parse.unquote(match.group(1)))
        assert data_dir.exists()
    assert demo.returncode == 0, demo.stderr
    assert not data_dir.exists() and not data_dir.parent.exists()
