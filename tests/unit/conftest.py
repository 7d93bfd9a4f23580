"""The unit tier's rules (tests/support/tiers.py): no PostgreSQL, no processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.tiers import MAY_START_PROCESSES, postgres_in_unit_tier, refuse_processes


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    offenders = postgres_in_unit_tier(items)
    if offenders:
        raise pytest.UsageError("tests/unit/ must not start PostgreSQL (move these to "
                                "tests/db/): " + ", ".join(offenders))


@pytest.fixture(autouse=True)
def _no_processes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    path = Path(request.node.path)
    if path.name not in MAY_START_PROCESSES:
        refuse_processes(monkeypatch, request.node.nodeid)
