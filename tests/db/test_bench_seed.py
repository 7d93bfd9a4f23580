"""Smoke test of bench/seed.py at a tiny scale, so the benchmark code runs in CI.

The benchmarks themselves (python -m bench.poll) are too slow for CI; this checks that the seed
loads the reference schema with every NOT NULL column supplied, restores its constraints and
indexes, is deterministic by --seed, writes the row counts it planned, and plants exactly the
problems the exporter's poll then reports.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import replace

import pytest
from sqlalchemy import create_engine

from bench import seed as bench_seed
from exporter import sqlfiles
from exporter.config import Settings
from exporter.poll import query
from tests.support.database import Server, database
from tests.support.paths import ROOT

TINY = bench_seed.SeedParams(batches=60, in_flight=5, recent=10, faulty=12, seed=7)


@pytest.fixture(scope="module")
def empty_dbs(pg_server: Server) -> Iterator[dict[str, str]]:
    """Three empty databases: bench/seed.py loads the schema itself."""
    with ExitStack() as stack:
        yield {k: stack.enter_context(database(pg_server, schema="none")).url
               for k in ("cli", "same", "other")}


def test_seed_is_deterministic_counts_rows_and_plants_the_faults(
        empty_dbs: dict[str, str]) -> None:
    now = bench_seed.now_utc()
    args = ["--batches", str(TINY.batches), "--in-flight", str(TINY.in_flight),
            "--recent", str(TINY.recent), "--faulty", str(TINY.faulty), "--seed",
            str(TINY.seed), "--now", now.isoformat(), "--quiet"]
    # The command line, as docs/performance.md runs it (against an existing database).
    done = subprocess.run([sys.executable, "-m", "bench.seed", "--dsn", empty_dbs["cli"], *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "seeded" in done.stdout

    cli = bench_seed.conninfo_of(empty_dbs["cli"])
    same = bench_seed.conninfo_of(empty_dbs["same"])
    other = bench_seed.conninfo_of(empty_dbs["other"])
    manifest = bench_seed.seed(same, TINY, now, jobs=2, show_progress=False)
    bench_seed.seed(other, replace(TINY, seed=8), now, show_progress=False)

    # Row counts: what the plan says, and the fixed parts of the layout.
    rows = manifest["rows"]
    assert rows == manifest["expected_rows"]
    assert rows["cj_batch_uploads"] == rows["cj_batch_states"] == TINY.batches
    # At least outbox_per_batch rows per batch (more when the runaway faults alone exceed it).
    assert rows["event_outbox"] >= round(TINY.outbox_per_batch * TINY.batches)
    assert rows["anchor_essay_references"] == bench_seed.ASSIGNMENTS * bench_seed.ANCHORS
    most = bench_seed.STUDENTS[1] + bench_seed.ANCHORS
    assert TINY.batches <= rows["cj_processed_essays"] <= TINY.batches * most
    assert rows["cj_comparison_pairs"] > TINY.batches * 100
    assert manifest["categories"]["in_flight"] == TINY.in_flight

    # Deterministic by seed (and independent of --jobs): same content, another seed differs.
    with bench_seed.connect(cli) as a, bench_seed.connect(same) as b, \
            bench_seed.connect(other) as c:
        digest_cli, digest_same = bench_seed.table_digests(a), bench_seed.table_digests(b)
        digest_other = bench_seed.table_digests(c)
        assert bench_seed.read_manifest(cli) is not None
    assert digest_cli == digest_same
    assert digest_other["cj_processed_essays"] != digest_same["cj_processed_essays"]
    assert digest_other["cj_comparison_pairs"] != digest_same["cj_comparison_pairs"]

    # The view finds exactly the watched batches and problems the seed planted.
    engine = create_engine(empty_dbs["same"])
    with engine.begin() as conn:
        sqlfiles.install_views(conn)
    snap = query.poll(engine, Settings(statement_timeout_seconds=30, lock_timeout_seconds=5))
    engine.dispose()
    assert snap.watched == manifest["watched"]
    assert dict(snap.problem_counts) == manifest["problems"]
