"""The unit tier's rules hold and can fail (tests/support/tiers.py, tests/unit/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.paths import ROOT
from tests.support.tiers import UNIT, postgres_in_unit_tier


@dataclass
class FakeItem:
    nodeid: str
    path: Path
    fixturenames: list[str] = field(default_factory=list)


def test_a_unit_test_needing_postgres_is_found_and_others_are_not() -> None:
    items = [
        FakeItem("tests/unit/test_x.py::test_db", UNIT / "test_x.py", ["tmp_path", "pg_server"]),
        FakeItem("tests/unit/test_x.py::test_own", UNIT / "test_x.py", ["own_postgres"]),
        FakeItem("tests/unit/test_x.py::test_pure", UNIT / "test_x.py", ["tmp_path"]),
        FakeItem("tests/db/test_y.py::test_db", ROOT / "tests" / "db" / "test_y.py",
                 ["pg_server"]),
    ]
    assert postgres_in_unit_tier(items) == ["tests/unit/test_x.py::test_db",
                                            "tests/unit/test_x.py::test_own"]


def test_no_collected_unit_test_needs_postgres(request: pytest.FixtureRequest) -> None:
    assert postgres_in_unit_tier(request.session.items) == []


def test_a_unit_test_cannot_start_a_process() -> None:
    with pytest.raises(AssertionError, match="a unit test starts no process"):
        subprocess.run([sys.executable, "-c", "pass"], check=False)
    with pytest.raises(AssertionError, match="a unit test starts no process"):
        os.system("true")
