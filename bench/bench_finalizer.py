"""Time one re-finalization of a large wedged batch: 100 essays, 1,000 comparisons.

    .venv/bin/python -m bench.bench_finalizer              # 100 essays, 1,000 comparisons
    .venv/bin/python -m bench.bench_finalizer --essays 300 --comparisons 5000 --runs 5

The batch is a Batch-20 wedge at scale (status COMPLETE_STABLE, state WAITING_CALLBACKS, anchors
only in the metadata): 90 students and 10 anchors over the swedish_8_anchor grades, written by
exporter.demo.scenarios in a throwaway embedded PostgreSQL (pgserver). Each run finalizes a fresh
copy of that database (CREATE DATABASE ... TEMPLATE), so every run does the full work.

Printed, median and max over the runs:
- BT fit: choix.ilsr_pairwise(alpha=0.01) + centring + Fisher-information SEs (bt.fit), alone;
- projection: calibration + the students' grades (projection.project), alone;
- dry run: the whole plan on a read-only snapshot (reads + BT + projection, no write);
- transaction: the whole refinalize action (row locks, guard, backfill, BT, projection, score
  updates, projection inserts, the three outbox rows, state change, audit row, COMMIT).
Nothing here is a timed test; the numbers go into docs/finalizer.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import Engine, create_engine, text

from exporter import sqlfiles
from exporter.demo import scenarios
from exporter.demo.embedded import EmbeddedPostgres, runtime_dir_env
from exporter.finalizer import audit, bt, projection, scales, store
from exporter.finalizer.refinalize import refinalize
from exporter.vocabulary import APPLIED, DRY_RUN

TEMPLATE = "bench_finalizer_template"
ANCHOR_GRADES = ("F", "E", "D", "D+", "C", "C+", "B", "A", "C", "B")


def seed_template(pg: EmbeddedPostgres, essays: int, comparisons: int) -> int:
    admin = create_engine(pg.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {TEMPLATE}"))
        conn.execute(text(f"CREATE DATABASE {TEMPLATE}"))
    admin.dispose()
    engine = create_engine(pg.url(TEMPLATE))
    anchors = ANCHOR_GRADES[: min(len(ANCHOR_GRADES), essays // 2)]
    spec = scenarios.BatchSpec(
        status="COMPLETE_STABLE", state="WAITING_CALLBACKS", students=essays - len(anchors),
        anchor_grades=anchors, anchors_flagged=False, budget=comparisons,
        submitted=comparisons, completed=comparisons, idle=timedelta(hours=2))
    with engine.begin() as conn:
        sqlfiles.load_reference_schema(conn)
        sqlfiles.install_views(conn)
        audit.install(conn)
        batch_id = scenarios.Seeder(conn).insert_batch(spec)
    engine.dispose()
    return batch_id


def fresh_copy(pg: EmbeddedPostgres, n: int) -> Engine:
    name = f"bench_finalizer_{n}"
    admin = create_engine(pg.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        conn.execute(text(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}"))
    admin.dispose()
    return create_engine(pg.url(name))


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    fn()  # warm-up: imports, caches and the connection pool are not what is measured
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def line(label: str, seconds: list[float]) -> str:
    return (f"  {label:<13} median {statistics.median(seconds) * 1000:8.1f} ms"
            f"   max {max(seconds) * 1000:8.1f} ms   ({len(seconds)} runs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--essays", type=int, default=100)
    parser.add_argument("--comparisons", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    runtime_dir_env()
    pg = EmbeddedPostgres()
    try:
        batch_id = seed_template(pg, args.essays, args.comparisons)
        engine = create_engine(pg.url(TEMPLATE))
        with engine.connect() as conn:
            batch = store.read_batch(conn, batch_id, lock=False)
            assert not isinstance(batch, str)
            essays = store.load_essays(conn, batch_id)
            outcomes = store.load_outcomes(conn, batch_id)
            context = store.load_context(conn, batch)
        essays = [projection.Essay(e.els_essay_id, store.metadata_says_anchor(e.metadata),
                                   e.metadata, e.text_storage_id) for e in essays]
        anchors = [e.els_essay_id for e in essays if e.is_anchor]  # in row order
        ids = [e.els_essay_id for e in essays]
        fit = bt.fit(ids, anchors, outcomes)
        scale = scales.resolve(context.scale_id)
        result = projection.project(scale, essays, context.refs, fit.scores, fit.ses)
        print(f"batch: {len(essays)} essays ({len(anchors)} anchors), {len(outcomes)} "
              f"comparisons; {len(result.students)} students projected; "
              f"max SE {max(fit.ses.values()):.3f}")
        fit_times = timed(lambda: bt.fit(ids, anchors, outcomes), args.runs)
        projection_times = timed(
            lambda: projection.project(scale, essays, context.refs, fit.scores, fit.ses),
            args.runs)
        dry = refinalize(engine, batch_id, replica="bench", dry_run=True)
        assert dry.outcome == DRY_RUN, dry.line()
        dry_times = timed(lambda: refinalize(engine, batch_id, replica="bench", dry_run=True),
                          args.runs)
        engine.dispose()  # a template must have no session to be copied
        for warm_up in (1000, 1001):  # the first transactions pay for imports and caches
            copy = fresh_copy(pg, warm_up)
            refinalize(copy, batch_id, replica="bench", dry_run=False)
            copy.dispose()
        tx_times = []
        for n in range(args.runs):
            copy = fresh_copy(pg, n)
            copy.connect().close()  # connection set-up is not part of the action
            started = time.perf_counter()
            applied = refinalize(copy, batch_id, replica="bench", dry_run=False)
            tx_times.append(time.perf_counter() - started)
            assert applied.outcome == APPLIED, applied.line()
            copy.dispose()
        print(line("BT fit", fit_times))
        print(line("projection", projection_times))
        print(line("dry run", dry_times))
        print(line("transaction", tx_times))
    finally:
        pg.close()


if __name__ == "__main__":
    main()
