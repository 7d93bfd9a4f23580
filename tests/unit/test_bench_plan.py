"""bench/seed.py's plan, without a database (the seed itself: tests/db/test_bench_seed.py)."""

from __future__ import annotations

import pytest

from bench import seed as bench_seed


def test_plan_rejects_layouts_that_cannot_hold_the_faults() -> None:
    with pytest.raises(ValueError, match="recent"):
        bench_seed.SeedParams(batches=100, in_flight=1, recent=1, faulty=60).validate()
