"""The incremental poll against the full poll, today's exporter and query-exporter, in one run.

    .venv/bin/python -m bench.incremental            # 1k / 3k / 10k in flight, 100k batches
    .venv/bin/python -m bench.incremental --in-flight 1000 --changes 100 --no-qe   # quick look

For each in-flight count it seeds (or reuses) a 100,000-batch database with bench/seed.py in its
own embedded cluster (default /tmp/cjh-bench-incremental/pg, so restarting it for the cold-cache
measurement disturbs nobody else's bench), installs the views and indexes, and measures:

1. Polls in this process, full and incremental, after each round of N service-like changes
   (N = 10 / 100 / 1,000; callbacks on in-flight batches, a tenth of them also rewriting their
   essays' scores as scoring does): wall time, database CPU (the backend's on-CPU time from
   /proc/<pid>/schedstat, nanoseconds), buffers (pg_stat_database blks_hit + blks_read, flushed
   with pg_stat_force_next_flush; the cluster is the bench's alone), the bench process's own CPU
   (parsing, merging, assembling), and whether the incremental snapshot equals a full poll's.
2. The cold-cache first poll: PostgreSQL stopped, the database's files evicted from the OS cache
   (posix_fadvise DONTNEED on each file), started again, one poll.
3. The exporter processes at ~10k series, each polling every 5 s while 100 changes per interval
   are applied and one scrape per interval is made: this code (incremental), this code with
   every poll full (--full-poll-interval 0), today's exporter (BASELINE, from a git worktree)
   and query-exporter: scrape latency, CPU per interval, RSS and VmHWM.
4. EXPLAIN (ANALYZE, BUFFERS) of the finalizer's candidate query (exporter/finalizer/
   candidates.py, sharing exporter/poll/watched.py with the poll) and of the change query: no
   sequential scan of cj_batch_uploads or of the big tables.

The changes are undone at the end (counters restored), so a cached database keeps matching its
seed manifest. It prints one table per in-flight count and a summary with PASS/FAIL against the
targets of issue 15, and saves Markdown and JSON under bench/out/.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import Connection, Engine, text

from bench import poll as bp
from bench.seed import BenchServer, SeedParams, connect, ensure_seeded
from exporter import db
from exporter.config import Settings, parse_dsn
from exporter.db import read_only_snapshot
from exporter.finalizer.candidates import _SQL as CANDIDATES_SQL
from exporter.poll import changes, query
from exporter.poll.incremental import IncrementalPoll
from exporter.poll.snapshot import Snapshot, build_snapshot

DATA_DIR = Path("/tmp/cjh-bench-incremental/pg")
IN_FLIGHT = (1000, 3000, 10000)
CHANGES = (10, 100, 1000)
STEADY_CHANGES = 100  # per poll interval while the exporter processes are measured
# Today's exporter, the reference of the CPU and scrape targets: main before the incremental
# poll (issue 15 measured it).
BASELINE = "e149dc6"
BASELINE_DIR = Path("/tmp/cjh-bench-incremental/baseline")
TARGET_DB_RATIO = 10.0  # full / incremental database time at 1k in flight, 100 changed
TARGET_WALL_S = 0.15  # incremental poll at 10k in flight, 1,000 changed
TARGET_CPU_RATIO = 2.0  # today's exporter CPU per poll / ours, ~10k series
TARGET_HWM_MB = 80.0  # VmHWM at 11,200 watched and 10k series (MB = 10^6 bytes)
SCRAPE_TOLERANCE = 1.25  # "no worse than today": within the run's noise of today's figure
BIG = ("cj_batch_uploads", "cj_processed_essays", "cj_comparison_pairs", "event_outbox",
       "grade_projections")


def log(message: str) -> None:
    bp.log(message)


# --- database-side counters ---------------------------------------------------------------------

def backend_ns(pid: int) -> int:
    """On-CPU nanoseconds of a PostgreSQL backend so far (first field of schedstat); 0 when
    the server runs elsewhere (a container: its pids are not ours to read)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def blocks(conn: Connection) -> int:
    """Buffers this database has touched so far (hit + read), everything this session did
    before the call included; the session's next transaction is flushed when it ends."""
    force_flush(conn)  # going idle after this flushes what the session did before
    row = conn.execute(text("SELECT blks_hit + blks_read FROM pg_stat_database"
                            " WHERE datname = current_database()")).scalar_one()
    conn.commit()
    force_flush(conn)  # ... and the next transaction's stats at its end
    return int(row)


def force_flush(conn: Connection) -> None:
    conn.execute(text("SELECT pg_stat_force_next_flush()"))
    conn.commit()


def blocks_read(conn: Connection) -> int:
    force_flush(conn)
    row = conn.execute(text("SELECT blks_read FROM pg_stat_database"
                            " WHERE datname = current_database()")).scalar_one()
    conn.commit()
    force_flush(conn)
    return int(row)


# --- service-like changes -------------------------------------------------------------------------

class Changer:
    """Callbacks on in-flight batches (completed + 1, submitted + 1, last_activity_at = now()),
    every tenth batch also rescored (its essays' scores rewritten, updated_at = now()); every
    counter change is undone by restore()."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        with engine.connect() as conn:
            self.pool = list(conn.execute(text(
                "SELECT batch_id FROM cj_batch_states WHERE state = 'WAITING_CALLBACKS'"
                " AND submitted_comparisons - completed_comparisons - failed_comparisons > 0"
                " AND total_budget IS NOT NULL ORDER BY batch_id")).scalars())
        self.next = 0
        self.net: dict[int, int] = {}
        self.lock = threading.Lock()

    def apply(self, n: int) -> None:
        with self.lock:
            # Distinct batches: with fewer in flight than n, each is changed once this round.
            ids = list(dict.fromkeys(self.pool[(self.next + i) % len(self.pool)]
                                     for i in range(n)))
            self.next += n
            for bid in ids:
                self.net[bid] = self.net.get(bid, 0) + 1
            with self.engine.begin() as conn:
                conn.execute(text("SET LOCAL synchronous_commit = off"))
                conn.execute(text(
                    "UPDATE cj_batch_states SET completed_comparisons = completed_comparisons"
                    " + 1, submitted_comparisons = submitted_comparisons + 1,"
                    " total_comparisons = total_comparisons + 1, last_activity_at = now()"
                    " WHERE batch_id = ANY (:ids)"), {"ids": ids})
                conn.execute(text(
                    "UPDATE cj_processed_essays SET current_bt_score = random(),"
                    " updated_at = now() AT TIME ZONE 'UTC' WHERE cj_batch_id = ANY (:ids)"),
                    {"ids": ids[::10]})

    def restore(self) -> None:
        with self.lock, self.engine.begin() as conn:
            for bid, k in self.net.items():
                conn.execute(text(
                    "UPDATE cj_batch_states SET completed_comparisons = completed_comparisons"
                    " - :k, submitted_comparisons = submitted_comparisons - :k,"
                    " total_comparisons = total_comparisons - :k WHERE batch_id = :b"),
                    {"k": k, "b": bid})
            self.net.clear()


# --- polls in this process ----------------------------------------------------------------------

@dataclass
class PollSample:
    wall: float
    db_cpu: float
    buffers: int
    client_cpu: float
    read: int
    full: bool


@dataclass
class PollSeries:
    mode: str  # "full" or "incremental"
    changes: int
    samples: list[PollSample]
    check: str = ""

    def median(self, attr: str) -> float:
        return float(statistics.median(getattr(s, attr) for s in self.samples))


def reference(engine: Engine, cfg: Settings, now: float) -> Snapshot:
    """A full poll (exporter.poll.query), assembled at the incremental poll's `now`: a finished
    batch crossing the recent window between the two polls is no difference."""
    started = time.monotonic()
    with read_only_snapshot(engine, cfg.statement_timeout_seconds,
                            cfg.lock_timeout_seconds) as conn:
        rows = list(query.watched_rows(conn, cfg.lookback_seconds))
        outbox = query.outbox_facts(conn)
    return build_snapshot(rows, outbox, now=now, duration=time.monotonic() - started,
                          recent_window=cfg.recent_window_seconds, max_batches=cfg.max_batches)


def differing(a: Snapshot, b: Snapshot) -> list[str]:
    return [f.name for f in fields(Snapshot) if getattr(facts(a), f.name) != getattr(facts(b),
                                                                                   f.name)]


def facts(s: Snapshot) -> Snapshot:
    return replace(s, taken_at=0.0, duration_seconds=0.0, full_poll=True, batches_read=0,
                   outbox=replace(s.outbox, oldest_unpublished_age_seconds=0.0))


class Meter:
    """Runs one poll and reads what it cost the database and this process."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine  # a pool of one: the poll runs on the backend measured here
        with engine.connect() as conn:
            self.pid = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())

    def run(self, poll: Callable[[], Snapshot]) -> tuple[Snapshot, PollSample]:
        with self.engine.connect() as conn:
            before = blocks(conn)  # after the changes: their buffers are not the poll's
        ns = backend_ns(self.pid)
        cpu = time.process_time()
        started = time.perf_counter()
        snap = poll()
        wall = time.perf_counter() - started
        client = time.process_time() - cpu
        db_cpu = (backend_ns(self.pid) - ns) / 1e9
        with self.engine.connect() as conn:
            used = blocks(conn) - before
        return snap, PollSample(wall, db_cpu, used, client, snap.batches_read, snap.full_poll)


def poll_series(engine: Engine, changer: Changer, n: int, rounds: int,
                cfg: Settings) -> tuple[PollSeries, PollSeries]:
    """`rounds` rounds of n changes, each followed by an incremental and a full poll."""
    meter = Meter(engine)
    inc = IncrementalPoll(cfg)
    meter.run(lambda: inc.poll(engine))  # the first poll is full
    incremental = PollSeries("incremental", n, [])
    full = PollSeries("full", n, [])
    issues = []
    for r in range(rounds):
        changer.apply(n)
        snap, sample = meter.run(lambda: inc.poll(engine))
        incremental.samples.append(sample)
        at = snap.taken_at
        ref, ref_sample = meter.run(lambda: reference(engine, cfg, at))  # noqa: B023
        full.samples.append(ref_sample)
        if facts(snap) != facts(ref):
            issues.append(f"round {r} ({', '.join(differing(snap, ref))})")
    incremental.check = "OK" if not issues else "DIFFERS: " + ", ".join(issues)
    return full, incremental


# --- cold cache ---------------------------------------------------------------------------------

def evict(path: Path) -> int:
    """Drop a directory's files from the OS page cache (clean pages only: the server is
    stopped, so they are all clean); returns the bytes advised."""
    total = 0
    for f in path.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                total += f.stat().st_size
            finally:
                os.close(fd)
    return total


def cold_first_poll(server: BenchServer, name: str, cfg: Settings) -> dict[str, float]:
    with connect(server.conninfo(name)) as conn:
        oid = conn.execute("SELECT oid FROM pg_database WHERE datname = current_database()"
                           ).fetchone()
    assert oid is not None
    server.pg.stop_server()
    evicted = evict(server.pg.data_dir / "base" / str(oid[0]))
    server.pg.start_server()
    engine = db.make_engine(parse_dsn(server.url(name)), 30)
    try:
        with engine.connect() as conn:
            before = blocks_read(conn)
        started = time.perf_counter()
        snap = IncrementalPoll(cfg).poll(engine)
        wall = time.perf_counter() - started
        with engine.connect() as conn:
            read = blocks_read(conn) - before
        started = time.perf_counter()
        IncrementalPoll(cfg).poll(engine)
        warm = time.perf_counter() - started
    finally:
        engine.dispose()
    return {"wall_s": wall, "read_mb": read * 8192 / 1e6, "evicted_gb": evicted / 1e9,
            "second_s": warm, "watched": snap.watched}


# --- EXPLAIN ----------------------------------------------------------------------------------

def seq_scans(path: Path) -> list[str]:
    body = path.read_text(encoding="utf-8")
    return sorted({t for t in BIG if f"Seq Scan on {t}" in body})


def explains(engine: Engine, changer: Changer, tag: str, cfg: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {}
    lookback = {"lookback": cfg.lookback_seconds}
    path = bp.OUT_DIR / f"explain-candidates-{tag}.txt"
    plan = bp.explain(engine, str(CANDIDATES_SQL.text), lookback, path)
    out["candidates"] = {"path": str(path), "ms": plan.execution_ms, "buffers": plan.buffers,
                         "seq_scans": seq_scans(path)}
    with engine.connect() as conn:
        previous = changes.mark(conn)
    changer.apply(100)
    with engine.connect() as conn:
        current = changes.mark(conn)
    params = {"since": previous.at - timedelta(seconds=cfg.commit_lag_seconds),
              "prev": previous.xmin, "xhi": current.xmax - current.xmax % changes.XID_SPAN,
              "xmax": current.xmax}
    path = bp.OUT_DIR / f"explain-changes-{tag}.txt"
    plan = bp.explain(engine, str(changes.TOUCHED_SQL.text), params, path)
    out["changes"] = {"path": str(path), "ms": plan.execution_ms, "buffers": plan.buffers,
                      "seq_scans": seq_scans(path)}
    return out


# --- exporter processes ---------------------------------------------------------------------------

def baseline_tree(ref: str) -> Path:
    """Today's exporter as a detached git worktree (made once, reused)."""
    if not (BASELINE_DIR / "exporter").is_dir():
        BASELINE_DIR.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "worktree", "add", "--detach", "--force", str(BASELINE_DIR), ref],
                       cwd=bp.BENCH_DIR.parent, check=True, capture_output=True)
    return BASELINE_DIR


@dataclass
class ProcessResult:
    label: str
    series: int
    scrape_median_ms: float
    scrape_p95_ms: float
    cpu_per_interval_ms: float
    rss_mb: float
    hwm_mb: float
    extra: dict[str, Any] = field(default_factory=dict)


def steady(proc: bp.Process, port: int, seconds: float, changer: Changer | None) -> float:
    """CPU ms per poll interval under one scrape and STEADY_CHANGES changes per interval."""
    cpu = psutil.Process(proc.proc.pid)
    before = sum(cpu.cpu_times()[:2])
    started = time.monotonic()
    scraper = bp.Scraper(port)
    try:
        while time.monotonic() - started < seconds:
            if changer is not None:
                changer.apply(STEADY_CHANGES)
            scraper.get()
            time.sleep(bp.BENCH_POLL_INTERVAL)
    finally:
        scraper.close()
    intervals = (time.monotonic() - started) / bp.BENCH_POLL_INTERVAL
    return float(sum(cpu.cpu_times()[:2]) - before) * 1000 / intervals


def run_exporter(label: str, args: list[str], env: dict[str, str] | None, cwd: Path | None,
                 scrapes: int, steady_s: float, changer: Changer, tag: str) -> ProcessResult:
    port = bp.free_port()
    proc = bp.Process([*args, "--web.listen-address", f"127.0.0.1:{port}"],
                      bp.OUT_DIR / f"{label}-{tag}.log", env, cwd)
    try:
        proc.wait_for(port, lambda b: (bp.metric_value(b, "cj_health_polls_total") or 0) >= 3,
                      timeout=240)
        latency, body = bp.scrape_many(port, scrapes, budget_s=30)
        cpu = steady(proc, port, steady_s, changer)
        current, peak = bp.rss_mb(proc.proc.pid)
        return ProcessResult(label, bp.count_series(body), latency.median * 1000,
                             latency.p95 * 1000, cpu, current * 2**20 / 1e6, peak * 2**20 / 1e6,
                             {"poll_s": bp.metric_value(body, "cj_health_poll_duration_seconds"),
                              "read": bp.metric_value(body, "cj_health_poll_batches_read")})
    finally:
        proc.stop()


def run_qe(exe: Path, url: str, rows: int, scrapes: int, steady_s: float, changer: Changer,
           tag: str) -> ProcessResult:
    config = bp.qe_config(url, rows, int(bp.BENCH_POLL_INTERVAL), fine_buckets=False)
    proc, port = bp.start_qe(exe, config, f"query-exporter-{tag}")
    try:
        proc.wait_for(port, lambda b: bp.qe_polls_done(b) >= 3, timeout=240)
        latency, body = bp.scrape_many(port, scrapes, budget_s=30)
        cpu = steady(proc, port, steady_s, changer)
        current, peak = bp.rss_mb(proc.proc.pid)
        return ProcessResult("query-exporter", bp.count_series(body), latency.median * 1000,
                             latency.p95 * 1000, cpu, current * 2**20 / 1e6, peak * 2**20 / 1e6)
    finally:
        proc.stop()


def processes(url: str, cap: int, expected: int, args: argparse.Namespace, changer: Changer,
              tag: str) -> list[ProcessResult]:
    common = ["--dsn", url, "--poll-interval", str(bp.BENCH_POLL_INTERVAL), "--max-batches",
              str(cap), "--log-level", "warning"]
    ours = [sys.executable, "-m", "exporter", "serve", *common]
    tree = baseline_tree(args.baseline) if not args.no_baseline else None
    env = {**os.environ, "PYTHONPATH": str(tree)} if tree else None
    out = [run_exporter("incremental", ours, None, None, args.scrapes, args.steady, changer,
                        tag),
           run_exporter("full", [*ours, "--full-poll-interval", "0"], None, None,
                        args.scrapes, args.steady, changer, tag)]
    if tree is not None:
        out.append(run_exporter("today", [sys.executable, "-m", "exporter", "serve", *common],
                                env, tree, args.scrapes, args.steady, changer, tag))
    if not args.no_qe:
        rows = max(1, round((expected - bp.QE_OVERHEAD) / len(bp.QE_METRICS)))
        out.append(run_qe(bp.ensure_qe(), url, rows, args.scrapes, args.steady, changer, tag))
    if tree is not None:
        paired = paired_scrapes({"incremental": (ours, None, None),
                                 "today": ([sys.executable, "-m", "exporter", "serve", *common],
                                           env, tree)}, args.scrapes, tag)
        for p in out:
            if p.label in paired:
                p.extra["paired_median_ms"], p.extra["paired_p95_ms"] = paired[p.label]
    return out


def paired_scrapes(runs: dict[str, tuple[list[str], dict[str, str] | None, Path | None]],
                   count: int, tag: str) -> dict[str, tuple[float, float]]:
    """Both exporters up at once and scraped in turn, request by request: on a machine whose
    load moves from minute to minute, the two medians then see the same load."""
    procs: dict[str, tuple[bp.Process, int]] = {}
    try:
        for label, (argv, env, cwd) in runs.items():
            port = bp.free_port()
            procs[label] = (bp.Process([*argv, "--web.listen-address", f"127.0.0.1:{port}"],
                                       bp.OUT_DIR / f"paired-{label}-{tag}.log", env, cwd), port)
        for proc, port in procs.values():
            proc.wait_for(port, lambda b: (bp.metric_value(b, "cj_health_polls_total")
                                           or 0) >= 3, timeout=240)
        scrapers = {label: bp.Scraper(port) for label, (_, port) in procs.items()}
        samples: dict[str, list[float]] = {label: [] for label in procs}
        try:
            for _ in range(3):
                for scraper in scrapers.values():
                    scraper.get()
            for _ in range(count):
                for label, scraper in scrapers.items():
                    samples[label].append(scraper.get()[0])
        finally:
            for scraper in scrapers.values():
                scraper.close()
        return {label: (bp.Stats(v).median * 1000, bp.Stats(v).p95 * 1000)
                for label, v in samples.items()}
    finally:
        for proc, _ in procs.values():
            proc.stop()


# --- one in-flight count ------------------------------------------------------------------------

@dataclass
class ScaleRun:
    in_flight: int
    database: str
    watched: int
    check_seed: str
    polls: list[PollSeries]
    cold: dict[str, float]
    explain: dict[str, Any]
    procs: list[ProcessResult]
    series_target: int = 10_000


def measure(server: BenchServer, in_flight: int, args: argparse.Namespace) -> ScaleRun:
    params = SeedParams(batches=args.batches, in_flight=in_flight, seed=args.seed)
    name, manifest = ensure_seeded(server, params, jobs=args.jobs, log=log)
    url = server.url(name)
    cfg = Settings(statement_timeout_seconds=60)
    engine = db.make_engine(parse_dsn(url), 30)
    changer = Changer(engine)
    try:
        log(f"{name}: views and indexes")
        bp.install(engine)
        with engine.begin() as conn:
            for t in BIG:
                conn.execute(text(f"ANALYZE {t}"))
        snap = query.poll(engine, cfg)
        check = bp.check_snapshot(snap, manifest)
        log(f"{name}: {snap.watched} watched, seed check {check}")
        series: list[PollSeries] = []
        for n in args.changes:
            log(f"{name}: {args.rounds} rounds of {n} changes, incremental and full polls")
            series += poll_series(engine, changer, n, args.rounds, cfg)
        plans = explains(engine, changer, name, cfg)
        uncapped = query.poll(engine, replace(cfg, max_batches=10**9))
        cap, expected = bp.cap_for_series(uncapped, 10_000)
        procs = processes(url, cap, expected, args, changer, name) if not args.no_processes \
            else []
    finally:
        changer.restore()
        engine.dispose()
    cold = {} if args.no_cold else cold_first_poll(server, name, cfg)
    return ScaleRun(in_flight, name, snap.watched, check, series, cold, plans, procs)


# --- report ---------------------------------------------------------------------------------------

def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def find(run: ScaleRun, mode: str, n: int) -> PollSeries | None:
    return next((p for p in run.polls if p.mode == mode and p.changes == n), None)


def poll_table(run: ScaleRun) -> list[list[str]]:
    rows = [["changes per poll", "mode", "wall (median)", "DB CPU", "buffers", "exporter CPU",
             "rows read", "full / incremental DB CPU", "check vs full"]]
    for n in sorted({p.changes for p in run.polls}):
        full, inc = find(run, "full", n), find(run, "incremental", n)
        for p in (full, inc):
            if p is None:
                continue
            ratio = ""
            if p is inc and full is not None and inc.median("db_cpu"):
                ratio = f"{full.median('db_cpu') / inc.median('db_cpu'):.1f}x"
            rows.append([str(n), p.mode, f"{p.median('wall') * 1000:.1f} ms",
                         f"{p.median('db_cpu') * 1000:.1f} ms", f"{p.median('buffers'):.0f}",
                         f"{p.median('client_cpu') * 1000:.1f} ms", f"{p.median('read'):.0f}",
                         ratio, p.check or "(reference)"])
    return rows


def process_table(run: ScaleRun) -> list[list[str]]:
    rows = [["exporter", "series", "scrape median", "scrape p95", "paired scrape median / p95",
             "CPU per 5 s interval", "RSS", "VmHWM"]]
    for p in run.procs:
        paired = (f"{p.extra['paired_median_ms']:.2f} / {p.extra['paired_p95_ms']:.2f} ms"
                  if "paired_median_ms" in p.extra else "")
        rows.append([p.label, str(p.series), f"{p.scrape_median_ms:.2f} ms",
                     f"{p.scrape_p95_ms:.2f} ms", paired, f"{p.cpu_per_interval_ms:.1f} ms",
                     f"{p.rss_mb:.1f} MB", f"{p.hwm_mb:.1f} MB"])
    return rows


def targets(runs: Sequence[ScaleRun]) -> list[list[str]]:
    rows = [["target", "measured", "verdict"]]
    by = {r.in_flight: r for r in runs}
    if 1000 in by and (f := find(by[1000], "full", 100)) and (i := find(by[1000],
                                                                         "incremental", 100)):
        ratio = f.median("db_cpu") / max(i.median("db_cpu"), 1e-9)
        measured = (f"{ratio:.1f}x ({f.median('db_cpu') * 1000:.1f} /"
                    f" {i.median('db_cpu') * 1000:.1f} ms CPU)")
        rows.append(["DB time, 1k in flight, 100 changed: full / incremental >= "
                     f"{TARGET_DB_RATIO:g}x", measured, verdict(ratio >= TARGET_DB_RATIO)])
    if 10000 in by and (i := find(by[10000], "incremental", 1000)):
        wall = i.median("wall")
        rows.append([f"incremental poll wall, 10k in flight, 1,000 changed < {TARGET_WALL_S} s",
                     f"{wall:.3f} s", verdict(wall < TARGET_WALL_S)])
    for r in runs:
        procs = {p.label: p for p in r.procs}
        inc, today, qe = procs.get("incremental"), procs.get("today"), procs.get("query-exporter")
        k = f"{r.in_flight // 1000}k in flight"
        if inc and today:
            ratio = today.cpu_per_interval_ms / max(inc.cpu_per_interval_ms, 1e-9)
            measured = (f"{ratio:.1f}x ({today.cpu_per_interval_ms:.0f}"
                        f" / {inc.cpu_per_interval_ms:.0f} ms)")
            rows.append([f"exporter CPU per poll, ~10k series, {k}: today / ours >= "
                         f"{TARGET_CPU_RATIO:g}x", measured, verdict(ratio >= TARGET_CPU_RATIO)])
            # The paired figures (both scraped in turn, same load) when there are some.
            mine = inc.extra.get("paired_median_ms", inc.scrape_median_ms)
            theirs = today.extra.get("paired_median_ms", today.scrape_median_ms)
            ok = mine <= theirs * SCRAPE_TOLERANCE
            rows.append([f"scrape median, {k}: no worse than today (x{SCRAPE_TOLERANCE:g},"
                         " paired)", f"{mine:.2f} ms vs {theirs:.2f} ms", verdict(ok)])
            if qe:
                ours_q = qe.scrape_median_ms / mine
                today_q = qe.scrape_median_ms / theirs
                rows.append([f"query-exporter scrape ratio, {k}: no worse than today",
                             f"{ours_q:.0f}x vs {today_q:.0f}x",
                             verdict(ours_q >= today_q / SCRAPE_TOLERANCE)])
        if inc and r.in_flight == 10000:
            rows.append([f"VmHWM at {r.watched:,} watched, {inc.series:,} series < "
                         f"{TARGET_HWM_MB:g} MB", f"{inc.hwm_mb:.1f} MB",
                         verdict(inc.hwm_mb < TARGET_HWM_MB)])
        cand = r.explain.get("candidates", {})
        if cand:
            scans = cand["seq_scans"]
            rows.append([f"EXPLAIN finalizer candidates, {k}: no seq scan of cj_batch_uploads",
                         ", ".join(scans) or "none", verdict("cj_batch_uploads" not in scans)])
        ch = r.explain.get("changes", {})
        if ch:
            rows.append([f"EXPLAIN change query, {k}: no seq scan of a big table",
                         ", ".join(ch["seq_scans"]) or "none", verdict(not ch["seq_scans"])])
        checks = [p.check for p in r.polls if p.mode == "incremental"]
        rows.append([f"incremental snapshot == full poll's after every round, {k}",
                     "OK" if all(c == "OK" for c in checks) else "; ".join(checks),
                     verdict(all(c == "OK" for c in checks))])
    return rows


def report(runs: Sequence[ScaleRun], command: str, load: tuple[float, float]) -> str:
    out = [f"# cj-health-exporter incremental poll benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M}"
           " UTC", "", f"command: `{command}`", "",
           f"machine: {bp.environment()}; load average at start {load[0]:.2f}, at end"
           f" {os.getloadavg()[0]:.2f} (2 cores shared with other engineers' test runs)", ""]
    for r in runs:
        out += [f"## {r.in_flight:,} in flight, 100,000 batches ({r.database})", "",
                f"watched {r.watched:,}; seed check {r.check_seed}", "",
                "Polls in the bench process (median of the rounds; DB CPU = the backend's"
                " on-CPU time; buffers = blks_hit + blks_read):", "", bp.markdown(poll_table(r)),
                ""]
        if r.procs:
            out += ["Exporter processes at ~10k series, polling every 5 s with "
                    f"{STEADY_CHANGES} changes and one scrape per interval:", "",
                    bp.markdown(process_table(r)), ""]
        if r.cold:
            c = r.cold
            out += [f"Cold cache (server restarted, {c['evicted_gb']:.1f} GB of its files"
                    f" evicted): first poll {c['wall_s']:.3f} s, {c['read_mb']:.1f} MB read from"
                    f" outside shared buffers; the poll after it {c['second_s']:.3f} s.", ""]
        for key, e in r.explain.items():
            out.append(f"EXPLAIN {key}: {e['ms']:.1f} ms, {e['buffers']} buffers, seq scans of"
                       f" big tables: {', '.join(e['seq_scans']) or 'none'} ({e['path']})")
        out.append("")
    out += ["## Targets (issue 15)", "", bp.markdown(targets(runs)), ""]
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.incremental",
                                 description=__doc__.splitlines()[0])
    ints = lambda s: tuple(int(x) for x in s.split(","))  # noqa: E731
    ap.add_argument("--in-flight", type=ints, default=IN_FLIGHT)
    ap.add_argument("--changes", type=ints, default=CHANGES)
    ap.add_argument("--batches", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=SeedParams().seed)
    ap.add_argument("--rounds", type=int, default=7, help="rounds per change count (median)")
    ap.add_argument("--scrapes", type=int, default=200)
    ap.add_argument("--steady", type=float, default=40.0,
                    help="seconds of the per-interval load for the CPU figures")
    ap.add_argument("--baseline", default=BASELINE, help="git ref of today's exporter")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--data-dir", type=Path, default=DATA_DIR)
    for flag in ("--no-qe", "--no-baseline", "--no-processes", "--no-cold"):
        ap.add_argument(flag, action="store_true")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM ends the run through the finally blocks: changes undone, processes stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    command = "python -m bench.incremental " + " ".join(sys.argv[1:] if argv is None else argv)
    load = os.getloadavg()[:2]
    server = BenchServer(args.data_dir)
    runs: list[ScaleRun] = []
    try:
        for n in args.in_flight:
            runs.append(measure(server, n, args))
            print(bp.markdown(poll_table(runs[-1])), file=sys.stderr)
    finally:
        server.close()
    text_report = report(runs, command, (load[0], load[1]))
    print(text_report)
    bp.OUT_DIR.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    (bp.OUT_DIR / f"incremental-{stamp}.md").write_text(text_report + "\n", encoding="utf-8")
    (bp.OUT_DIR / f"incremental-{stamp}.json").write_text(
        json.dumps([asdict(r) for r in runs], indent=1, default=str) + "\n", encoding="utf-8")
    log(f"saved {bp.OUT_DIR / f'incremental-{stamp}.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
