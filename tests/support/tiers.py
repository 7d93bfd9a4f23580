"""What the unit tier (tests/unit/) may not do: start PostgreSQL or any other process.

tests/unit/conftest.py applies both rules: a unit test that needs a PostgreSQL fixture stops the
run at collection, and one that starts a process fails when it does (the fix for either is to
move the test to tests/db/ or tests/process/). `pytest tests/unit` so stays fast and runs
anywhere, without a database or the tools the other tiers need.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.support.paths import ROOT

UNIT = ROOT / "tests" / "unit"
# Every fixture that starts a PostgreSQL server (cj_db, seeded_db, remediation_db and the
# tiers' own fixtures all depend on pg_server, so a test's fixture closure shows it).
POSTGRES_FIXTURES = frozenset({"pg_server", "own_postgres"})
# Unit-tier files that still start processes, and why: a debt to pay by moving the tests.
MAY_START_PROCESSES: Mapping[str, str] = {
    "test_dashboards.py": "runs dashboards/generate.py, dashboards/lint.py and grafanalib's"
                          " generate-dashboard as commands (the alerts/dashboards owner's file)",
}


def in_unit_tier(path: Path) -> bool:
    return path.resolve().is_relative_to(UNIT)


def postgres_in_unit_tier(items: Iterable[Any]) -> list[str]:
    """Node ids of unit-tier tests whose fixtures start PostgreSQL."""
    return [item.nodeid for item in items
            if in_unit_tier(Path(item.path))
            and POSTGRES_FIXTURES & set(getattr(item, "fixturenames", ()))]


def refuse_processes(monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """Make every way of starting a process fail loudly for the rest of the test."""
    def refuse(*args: Any, **kwargs: Any) -> NoReturn:
        raise AssertionError(f"{where}: a unit test starts no process (move it to "
                             "tests/process/); see tests/support/tiers.py")

    # Popen's own fork/exec step: Popen stays a consistent object (no child, nothing to reap).
    monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse)
    for name in ("system", "fork", "posix_spawn", "posix_spawnp", "execv", "execve"):
        monkeypatch.setattr(os, name, refuse)
