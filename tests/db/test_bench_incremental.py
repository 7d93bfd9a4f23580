"""Smoke test of bench/incremental.py at a tiny scale, so its measuring code runs in CI.

The benchmark itself (python -m bench.incremental, 100,000 batches) is far too slow for CI; this
seeds 60 batches, applies the bench's service-like changes, and checks that the in-process
measurement polls both ways, finds the snapshots equal, reads only the changed batches
incrementally, counts buffers, renders its report with verdicts, and undoes its changes.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

from bench import incremental as bi
from bench import poll as bench_poll
from bench import seed as bench_seed
from exporter import db
from exporter.config import Settings, parse_dsn
from tests.support.database import Server, database

TINY = bench_seed.SeedParams(batches=60, in_flight=8, recent=10, faulty=12, seed=11)


@pytest.fixture(scope="module")
def tiny(pg_server: Server) -> Iterator[str]:
    with database(pg_server, schema="none") as db:
        bench_seed.seed(bench_seed.conninfo_of(db.url), TINY, bench_seed.now_utc(),
                        show_progress=False)
        yield db.url


def counters(url: str) -> list[tuple[int, int, int]]:
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT batch_id, completed_comparisons, submitted_comparisons"
                                 " FROM cj_batch_states ORDER BY batch_id")).all()
    engine.dispose()
    return [tuple(r) for r in rows]


def test_polls_both_ways_reads_only_the_changes_and_undoes_them(tiny: str) -> None:
    before = counters(tiny)
    engine = db.make_engine(parse_dsn(tiny), 5)
    changer = bi.Changer(engine)
    try:
        bench_poll.install(engine)
        assert changer.pool, "the tiny seed has batches waiting for callbacks"
        full, inc = bi.poll_series(engine, changer, 2, 2, Settings())
    finally:
        changer.restore()
        engine.dispose()
    assert inc.check == "OK"
    assert all(s.full for s in full.samples) and not any(s.full for s in inc.samples)
    watched = full.samples[0].read
    assert all(s.read == 2 for s in inc.samples) and watched > 2
    assert all(s.buffers > 0 for s in full.samples + inc.samples)
    assert counters(tiny) == before
    run = bi.ScaleRun(1000, "tiny", watched, "OK", [full, inc], {}, {}, [])
    table = bi.report([run], "python -m bench.incremental (smoke)", (0.0, 0.0))
    assert "incremental snapshot == full poll's after every round" in table
    assert "| PASS" in table
