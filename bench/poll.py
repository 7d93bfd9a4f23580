"""Time the exporter's poll, its /metrics scrape and its memory, next to query-exporter's.

    .venv/bin/python -m bench.poll                        # default scale: 100,000 batches
    .venv/bin/python -m bench.poll --scales 10000,100000  # history x10, same watched set

For each scale it seeds (or reuses) a database with bench/seed.py in the embedded pgserver
cluster under /tmp/cjh-bench, installs the views and the recommended indexes, and then measures
on that database, in this order:

1. EXPLAIN (ANALYZE, BUFFERS) of the poll query, saved to bench/out/; the bench lists any
   sequential scan of the essays, pairs or outbox tables (there must be none).
2. The poll: `exporter.poll.query.poll` called back to back (warm cache), median and p95; the
   snapshot is checked against the seed's manifest (watched batches, problem counts).
3. The real exporter (`python -m exporter serve`) with --max-batches chosen so that /metrics
   holds ~1,000 and ~10,000 series: scrape latency (median, p95) with Prometheus' own Accept
   headers over a kept-alive connection, and the process's RSS after the scrapes.
4. query-exporter (PyPI, in its own venv bench/.venv-qe made on first use) with an equivalent
   configuration on the same database: the same watched set, exported filter, ordering and cap
   in one SQL query over the same view, one gauge per view column. Its poll time is read from
   its own query_latency histogram (fine buckets): that covers executing the query, not turning
   rows into metrics, so it flatters query-exporter slightly.

Targets are printed with PASS/FAIL next to the measured values; nothing here is a timed test.
With several scales the seed keeps the in-flight, recent and faulty counts constant (default
1000/1000/300, those of the default scale), so only history grows, and a side-by-side table shows
whether the poll stays flat. `1000000:0.1` seeds a million batches whose old finished ones hold a
tenth of the essays and pairs (a full-size million needs ~150 GB).
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import psycopg
import yaml
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from bench.seed import (
    DEFAULT_DATA_DIR,
    BenchServer,
    SeedParams,
    connect,
    conninfo_of,
    ensure_seeded,
    read_manifest,
)
from exporter import db, sqlfiles
from exporter.collector import SelfStats, SnapshotCollector, render
from exporter.config import Settings, parse_dsn
from exporter.poll import query, snapshot
from exporter.vocabulary import PROBLEM_COLUMNS

BENCH_DIR = Path(__file__).resolve().parent
OUT_DIR = BENCH_DIR / "out"
QE_VENV = BENCH_DIR / ".venv-qe"
QE_PACKAGES = ("query-exporter", "psycopg[binary]")
# What Prometheus 2.x sends: OpenMetrics preferred, gzip accepted.
PROMETHEUS_HEADERS = {
    "Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
              "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "Accept-Encoding": "gzip",
    "User-Agent": "Prometheus/2.42.0",
}
BIG_TABLES = ("cj_processed_essays", "cj_comparison_pairs", "event_outbox")
DEFAULTS = Settings()
TARGET_POLL_S = 0.5
TARGET_SCRAPE_MS = 5.0
TARGET_RSS_MB = 80.0
FLAT_RATIO = 1.5  # "flat": the poll at 10x the history costs at most this much more
SERIES_TARGETS = (1_000, 10_000)
QE_OVERHEAD = 45  # query-exporter's own series with default buckets and two queries
BENCH_POLL_INTERVAL = 5.0  # both exporters, so a few polls happen while the bench waits


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --- measurements -----------------------------------------------------------------------------

@dataclass
class Stats:
    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p95(self) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


@dataclass
class Explain:
    path: Path
    execution_ms: float
    buffers: int  # shared hit + read of the whole execution
    seq_scans: list[str]  # sequential scans of BIG_TABLES


@dataclass
class ScrapeResult:
    target: int
    series: int
    latency: Stats
    body_bytes: int
    rss_mb: float
    peak_rss_mb: float
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScaleResult:
    params: SeedParams
    database: str
    manifest: dict[str, Any]
    explain: Explain
    outbox_explain: Explain
    first_poll: float
    poll: Stats
    watched: int
    check: str
    ours: list[ScrapeResult]
    qe: list[ScrapeResult]
    qe_poll: dict[str, float]
    notes: list[str] = field(default_factory=list)


def install(engine: Engine) -> None:
    """What an operator runs once (`install-view`), plus ANALYZE so the planner knows the new
    expression index (autovacuum would do that on a live database)."""
    try:
        with engine.begin() as conn:
            sqlfiles.install_views(conn)
    except (DBAPIError, psycopg.Error) as exc:
        # CREATE OR REPLACE VIEW cannot change a column's type: a database measured with an
        # older view gets the current one from scratch (a bench database has no grants to keep).
        # sqlfiles runs scripts on the raw driver cursor, so the error may come unwrapped.
        orig = exc.orig if isinstance(exc, DBAPIError) else exc
        if not isinstance(orig, psycopg.errors.InvalidTableDefinition):
            raise
        log(f"recreating the views: {str(orig).splitlines()[0]}")
        with engine.begin() as conn:
            conn.execute(text("DROP VIEW IF EXISTS cj_batch_health, cj_outbox_health"))
            sqlfiles.install_views(conn)
    sqlfiles.install_indexes(engine)
    with engine.begin() as conn:
        conn.execute(text("ANALYZE cj_batch_uploads"))
        conn.execute(text("ANALYZE cj_batch_states"))
        conn.execute(text("ANALYZE event_outbox"))


def explain(engine: Engine, sql: str, params: dict[str, Any], path: Path) -> Explain:
    with engine.begin() as conn:
        lines = [r[0] for r in conn.execute(
            text("EXPLAIN (ANALYZE, BUFFERS, SETTINGS) " + sql), params)]
    body = "\n".join(lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"-- {datetime.now(UTC).isoformat()}\n-- {sql}\n-- params {params}\n\n"
                    f"{body}\n", encoding="utf-8")
    execution = re.search(r"Execution Time: ([\d.]+) ms", body)
    # The first Buffers line belongs to the top plan node: the whole execution's buffers.
    top = re.search(r"Buffers: shared((?: \w+=\d+)+)", body)
    counts = dict(re.findall(r"(\w+)=(\d+)", top.group(1))) if top else {}
    seq = sorted({m.group(1) for m in re.finditer(r"Seq Scan on (\w+)", body)
                  if m.group(1) in BIG_TABLES})
    return Explain(path, float(execution.group(1)) if execution else float("nan"),
                   int(counts.get("hit", 0)) + int(counts.get("read", 0)), seq)


def time_polls(engine: Engine, count: int) -> tuple[float, Stats, snapshot.Snapshot]:
    """Back-to-back polls with the exporter's default settings; the first one is reported
    apart (new connection, colder cache)."""
    def one() -> tuple[float, snapshot.Snapshot]:
        started = time.perf_counter()
        snap = query.poll(engine, DEFAULTS)
        return time.perf_counter() - started, snap

    first, snap = one()
    one()  # warm-up
    samples = []
    for _ in range(count):
        seconds, snap = one()
        samples.append(seconds)
    return first, Stats(samples), snap


def check_snapshot(snap: snapshot.Snapshot, manifest: dict[str, Any]) -> str:
    """The poll must find exactly what the seed planted (else the timing means little)."""
    problems = {k: int(v) for k, v in snap.problem_counts.items()}
    expected = {k: int(v) for k, v in manifest["problems"].items()}
    issues = []
    if snap.watched != manifest["watched"]:
        issues.append(f"watched {snap.watched} != planted {manifest['watched']}")
    if problems != expected:
        issues.append(f"problems {problems} != planted {expected}")
    return "OK" if not issues else "MISMATCH: " + "; ".join(issues)


def count_series(body: bytes) -> int:
    return sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))


def cap_for_series(snap: snapshot.Snapshot, target: int) -> tuple[int, int]:
    """Smallest max_batches whose rendered snapshot has >= target series, and that count
    (or all batches and their count when the target is out of reach)."""
    stats = SelfStats(up=True, stale=False, last_success=snap.taken_at, last_duration=0.1,
                      polls=1, errors={}, skipped=0)

    def series(k: int) -> int:
        capped = replace(snap, batches=snap.batches[:k])
        return count_series(render(SnapshotCollector(capped, stats)).text)

    lo, hi = 0, len(snap.batches)
    if series(hi) < target:
        return hi, series(hi)
    while lo < hi:
        mid = (lo + hi) // 2
        if series(mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    return lo, series(lo)


class Scraper:
    """GETs /metrics over one kept-alive connection, as Prometheus does."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def get(self) -> tuple[float, bytes, dict[str, str]]:
        started = time.perf_counter()
        self.conn.request("GET", "/metrics", headers=PROMETHEUS_HEADERS)
        response = self.conn.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - started  # request sent .. last byte received
        headers = {k.lower(): v for k, v in response.getheaders()}
        if response.status != 200:
            raise RuntimeError(f"/metrics answered {response.status}")
        if headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        return elapsed, body, headers

    def close(self) -> None:
        self.conn.close()


def scrape_many(port: int, count: int, budget_s: float) -> tuple[Stats, bytes]:
    """`count` scrapes after 3 warm-ups, or as many as fit in `budget_s` (at least 10)."""
    scraper = Scraper(port)
    try:
        for _ in range(3):
            _, body, _ = scraper.get()
        samples: list[float] = []
        deadline = time.monotonic() + budget_s
        while len(samples) < count and (len(samples) < 10 or time.monotonic() < deadline):
            seconds, body, _ = scraper.get()
            samples.append(seconds)
        return Stats(samples), body
    finally:
        scraper.close()


def rss_mb(pid: int) -> tuple[float, float]:
    """Current and peak (VmHWM) resident set size of a process, in MiB."""
    proc = psutil.Process(pid)
    current = proc.memory_info().rss / 2**20
    peak = current
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    except OSError:
        pass
    return current, peak


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Process:
    """A server subprocess with its output in a log file; always terminated."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     cwd=cwd)

    def wait_for(self, port: int, ready: Callable[[bytes], bool], timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}); see {self.log_path}")
            try:
                scraper = Scraper(port)
                try:
                    _, body, _ = scraper.get()
                finally:
                    scraper.close()
                if ready(body):
                    return body
            except (OSError, RuntimeError, http.client.HTTPException):
                pass
            time.sleep(0.25)
        raise RuntimeError(f"server not ready after {timeout:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def metric_value(body: bytes, name: str, labels: str = "") -> float | None:
    pattern = re.escape(name) + (r"\{[^}]*" + re.escape(labels) + r"[^}]*\}" if labels
                                 else r"(?:\{[^}]*\})?")
    match = re.search(rb"^" + pattern.encode() + rb" ([-+\deE.naNIf]+)", body, re.M)
    return float(match.group(1)) if match else None


def steady_cpu(proc: Process, port: int, seconds: float) -> float:
    """CPU seconds the process uses per poll interval while one Prometheus scrapes it once per
    interval: its whole cost of polling, rendering and serving, as a fraction of one core."""
    cpu = psutil.Process(proc.proc.pid)
    before = sum(cpu.cpu_times()[:2])
    started = time.monotonic()
    scraper = Scraper(port)
    try:
        while time.monotonic() - started < seconds:
            scraper.get()
            time.sleep(BENCH_POLL_INTERVAL)
    finally:
        scraper.close()
    elapsed = time.monotonic() - started
    return float(sum(cpu.cpu_times()[:2]) - before) / (elapsed / BENCH_POLL_INTERVAL)


def run_ours(url: str, max_batches: int, target: int, scrapes: int, tag: str,
             steady_s: float = 0) -> ScrapeResult:
    port = free_port()
    args = [sys.executable, "-m", "exporter", "serve", "--dsn", url,
            "--web.listen-address", f"127.0.0.1:{port}",
            "--poll-interval", str(BENCH_POLL_INTERVAL), "--max-batches", str(max_batches),
            "--log-level", "warning"]
    proc = Process(args, OUT_DIR / f"exporter-{tag}-{target}.log")
    try:
        # Three polls done: the RSS includes the poll and render work, not just the imports.
        proc.wait_for(port, lambda b: (metric_value(b, "cj_health_polls_total") or 0) >= 3,
                      timeout=120)
        latency, body = scrape_many(port, scrapes, budget_s=30)
        current, peak = rss_mb(proc.proc.pid)
        extra = {"poll_duration_s": metric_value(body, "cj_health_poll_duration_seconds"),
                 "exported_batches": metric_value(body, "cj_health_exported_batches")}
        if steady_s:
            extra["cpu_per_interval_s"] = steady_cpu(proc, port, steady_s)
        return ScrapeResult(target, count_series(body), latency, len(body), current, peak, extra)
    finally:
        proc.stop()


# --- query-exporter -----------------------------------------------------------------------------

def ensure_qe() -> Path:
    """query-exporter in its own venv (never a project dependency); made once, reused."""
    exe = QE_VENV / "bin" / "query-exporter"
    if exe.exists():
        return exe
    log(f"installing {', '.join(QE_PACKAGES)} into {QE_VENV}")
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(QE_VENV)], check=True)
    subprocess.run([str(QE_VENV / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                    *QE_PACKAGES], check=True)
    log(f"query-exporter installed in {time.monotonic() - started:.0f} s")
    return exe


def qe_version(exe: Path) -> str:
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip().split()[-1] if out.stdout.strip() else "unknown"


# One gauge per view column: query-exporter maps a column to a metric, and cannot turn one row
# into several labelled series (kind=..., source=...) without one query per family.
QE_METRICS: dict[str, tuple[str, list[str]]] = {
    "cj_batch_last_activity_timestamp_seconds": (
        "extract(epoch FROM last_activity_at)",
        ["cj_batch_id", "bos_batch_id", "cj_state", "upload_status"]),
    "cj_batch_comparisons_budget": ("total_budget", ["cj_batch_id"]),
    "cj_batch_comparisons_total": ("total_comparisons", ["cj_batch_id"]),
    "cj_batch_comparisons_submitted": ("submitted_comparisons", ["cj_batch_id"]),
    "cj_batch_comparisons_completed": ("completed_comparisons", ["cj_batch_id"]),
    "cj_batch_comparisons_failed": ("failed_comparisons", ["cj_batch_id"]),
    "cj_batch_comparisons_pending": ("pending_callbacks", ["cj_batch_id"]),
    "cj_batch_progress_ratio": ("progress_ratio", ["cj_batch_id"]),
    "cj_batch_grade_projections": ("grade_projections", ["cj_batch_id"]),
    "cj_batch_anchors_column": ("anchors_flagged", ["cj_batch_id"]),
    "cj_batch_anchors_metadata": ("anchors_in_metadata", ["cj_batch_id"]),
    "cj_batch_anchors_id": ("anchors_by_id", ["cj_batch_id"]),
    "cj_batch_anchor_mismatches": ("anchor_mismatches", ["cj_batch_id"]),
    "cj_batch_completion_events_completed": ("completion_events",
                                             ["cj_batch_id", "bos_batch_id"]),
    "cj_batch_completion_events_result": ("result_events", ["cj_batch_id", "bos_batch_id"]),
    "cj_batch_completion_events_resource": ("resource_events", ["cj_batch_id", "bos_batch_id"]),
    "cj_batch_completion_event_burst": ("completion_event_burst", ["cj_batch_id"]),
    **{f"cj_batch_problem_{p}": (f"{column}::int", ["cj_batch_id", "bos_batch_id"])
       for p, column in PROBLEM_COLUMNS.items()},
}
QE_OUTBOX = {
    "cj_outbox_unpublished_events": "unpublished_events",
    "cj_outbox_failed_events": "failed_events",
    "cj_outbox_oldest_unpublished_age_seconds": "oldest_unpublished_age_seconds",
}


def qe_batch_sql(rows: int) -> str:
    """The exporter's poll as one query: the same watched set (POLL_SQL's CTE), the same
    exported filter, order and cap as exporter.poll.snapshot.build_snapshot."""
    # POLL_SQL is "WITH watched AS (...) SELECT <columns> FROM cj_batch_health AS h WHERE
    # h.cj_batch_id IN (SELECT id FROM watched)": keep its CTE, so both tools watch the same set.
    watched = str(query.POLL_SQL.text).rsplit(" SELECT ", 1)[0]
    if not watched.startswith("WITH watched AS (") or ":lookback" not in watched:
        raise RuntimeError("exporter.poll.query.POLL_SQL changed shape: update bench/poll.py")
    watched = watched.replace(":lookback", repr(DEFAULTS.lookback_seconds))
    where = str(query.POLL_SQL.text).rsplit(" FROM cj_batch_health AS h ", 1)[-1]
    problem = " OR ".join(PROBLEM_COLUMNS.values())
    columns = ", ".join(f"{expr} AS {name}" for name, (expr, _) in QE_METRICS.items())
    return (
        f"{watched}, rows AS (SELECT h.* FROM cj_batch_health AS h {where})"
        " SELECT cj_batch_id::text AS cj_batch_id, bos_batch_id,"
        f" COALESCE(cj_state, '{snapshot.NO_STATE}') AS cj_state, upload_status, {columns}"
        f" FROM rows WHERE NOT is_terminal OR {problem}"
        f" OR last_activity_at > now() - make_interval(secs => {DEFAULTS.recent_window_seconds})"
        f" ORDER BY ({problem}) DESC, is_terminal, last_activity_at DESC, cj_batch_id"
        f" LIMIT {rows}"
    )


def qe_config(url: str, rows: int, interval: int, fine_buckets: bool) -> dict[str, Any]:
    """An operator's config; `fine_buckets` adds ~120 query_latency buckets (1 ms .. 90 s) so
    the bench can read a median and p95 of the query time (only in the timing run: they are
    series too and would inflate the scrape)."""
    metrics: dict[str, Any] = {
        name: {"type": "gauge", "description": f"column {expr}", "labels": labels}
        for name, (expr, labels) in QE_METRICS.items()
    }
    metrics.update({name: {"type": "gauge", "description": f"cj_outbox_health.{column}"}
                    for name, column in QE_OUTBOX.items()})
    # The exporter's server-side statement_timeout, set on each new connection.
    timeout = f"SET statement_timeout = '{int(DEFAULTS.statement_timeout_seconds * 1000)}ms'"
    config: dict[str, Any] = {
        "databases": {"cj": {"dsn": url, "connect-sql": [timeout]}},
        "metrics": metrics,
        "queries": {
            "cj_batch_health": {"databases": ["cj"], "interval": interval,
                                "metrics": list(QE_METRICS), "sql": qe_batch_sql(rows)},
            "cj_outbox_health": {
                "databases": ["cj"], "interval": interval, "metrics": list(QE_OUTBOX),
                "sql": "SELECT " + ", ".join(f"{c} AS {n}" for n, c in QE_OUTBOX.items())
                       + " FROM cj_outbox_health"},
        },
    }
    if fine_buckets:
        buckets = sorted({round(0.001 * 1.1 ** i, 6) for i in range(120)})
        config = {"builtin-metrics": {"query_latency": {"buckets": buckets}}, **config}
    return config


def histogram_quantile(body: bytes, name: str, labels: str, q: float) -> float:
    """Prometheus' histogram_quantile on one scrape (linear inside the bucket)."""
    buckets = []
    for match in re.finditer(
            rb"^" + name.encode() + rb"_bucket\{([^}]*)\} ([\d.eE+-]+)", body, re.M):
        label_text = match.group(1).decode()
        if labels not in label_text:
            continue
        bound = re.search(r'le="([^"]+)"', label_text)
        if bound:
            buckets.append((float(bound.group(1)), float(match.group(2))))
    buckets.sort()
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    rank = q * buckets[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_count) / max(count - prev_count, 1e-9)
        prev_le, prev_count = le, count
    return float("nan")


def start_qe(exe: Path, config: dict[str, Any], name: str) -> tuple[Process, int]:
    port = free_port()
    config_path = OUT_DIR / f"{name}.yaml"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(yaml.safe_dump(config, sort_keys=False, width=100), encoding="utf-8")
    args = [str(exe), "--config", str(config_path), "-H", "127.0.0.1", "-p", str(port),
            "-L", "warning"]
    return Process(args, OUT_DIR / f"{name}.log"), port


def qe_polls_done(body: bytes) -> float:
    return metric_value(body, "query_latency_count", 'query="cj_batch_health"') or 0.0


def run_qe(exe: Path, url: str, rows: int, target: int, scrapes: int,
           tag: str, steady_s: float = 0) -> ScrapeResult:
    """Scrape latency and RSS of query-exporter holding ~target series."""
    config = qe_config(url, rows, int(BENCH_POLL_INTERVAL), fine_buckets=False)
    proc, port = start_qe(exe, config, f"query-exporter-{tag}-{target}")
    try:
        proc.wait_for(port, lambda b: qe_polls_done(b) >= 3, timeout=120)
        latency, body = scrape_many(port, scrapes, budget_s=30)
        current, peak = rss_mb(proc.proc.pid)
        extra = {"database_errors": metric_value(body, "database_errors_total") or 0.0,
                 "query_failures": metric_value(body, "queries_total", 'status="error"') or 0.0}
        if steady_s:
            extra["cpu_per_interval_s"] = steady_cpu(proc, port, steady_s)
        return ScrapeResult(target, count_series(body), latency, len(body), current, peak,
                            extra)
    finally:
        proc.stop()


def time_qe_polls(exe: Path, url: str, rows: int, polls: int, interval: int,
                  tag: str) -> dict[str, float]:
    """query-exporter's own query_latency histogram over `polls` executions of each query.

    It times cursor.execute() (the server's work and the transfer), not turning rows into
    metrics, so it is a lower bound of its poll. One poll = both queries of an interval.
    """
    config = qe_config(url, rows, interval, fine_buckets=True)
    proc, port = start_qe(exe, config, f"query-exporter-{tag}-polls")
    try:
        # Sleep rather than scrape meanwhile: each scrape renders, on the same event loop and
        # GIL as the queries being timed.
        time.sleep(polls * interval + 2)
        body = proc.wait_for(port, lambda b: qe_polls_done(b) >= polls,
                             timeout=polls * (interval + 10) + 60)
    finally:
        proc.stop()
    poll: dict[str, float] = {"count": qe_polls_done(body), "interval": interval}
    for view in ("cj_batch_health", "cj_outbox_health"):
        label = f'query="{view}"'
        total = metric_value(body, "query_latency_sum", label) or float("nan")
        count = metric_value(body, "query_latency_count", label) or float("nan")
        poll[f"{view}_mean"] = total / count
        poll[f"{view}_median"] = histogram_quantile(body, "query_latency", label, 0.5)
        poll[f"{view}_p95"] = histogram_quantile(body, "query_latency", label, 0.95)
    poll["median"] = poll["cj_batch_health_median"] + poll["cj_outbox_health_median"]
    poll["p95"] = poll["cj_batch_health_p95"] + poll["cj_outbox_health_p95"]
    poll["mean"] = poll["cj_batch_health_mean"] + poll["cj_outbox_health_mean"]
    poll["errors"] = metric_value(body, "queries_total", 'status="error"') or 0.0
    return poll


# --- one scale ----------------------------------------------------------------------------------

def measure_scale(server: BenchServer | None, dsn: str | None, params: SeedParams,
                  args: argparse.Namespace) -> ScaleResult:
    if dsn is not None:
        url, name = dsn, dsn.rsplit("/", 1)[-1].split("?")[0]
        manifest = read_manifest(conninfo_of(url)) or {}
    else:
        assert server is not None
        name, manifest = ensure_seeded(server, params, jobs=args.jobs, log=log)
        url = server.url(name)
    tag = name
    engine = db.make_engine(parse_dsn(url), DEFAULTS.connect_timeout_seconds)
    try:
        log(f"{name}: installing views and indexes")
        install(engine)
        log(f"{name}: EXPLAIN (ANALYZE, BUFFERS) of the poll")
        # Twice: the saved plan is the warm one, as the repeated polls below are.
        lookback = {"lookback": DEFAULTS.lookback_seconds}
        explain(engine, str(query.POLL_SQL.text), lookback, OUT_DIR / f"explain-{tag}.txt")
        plan = explain(engine, str(query.POLL_SQL.text), lookback,
                       OUT_DIR / f"explain-{tag}.txt")
        outbox_plan = explain(engine, str(query.OUTBOX_SQL.text), {},
                              OUT_DIR / f"explain-outbox-{tag}.txt")
        log(f"{name}: {args.polls} polls")
        first, polls, snap = time_polls(engine, args.polls)
        check = check_snapshot(snap, manifest) if manifest else "no manifest (--dsn)"
        # Uncapped, to find the max_batches that gives ~1k and ~10k series.
        all_snap = query.poll(engine, replace(DEFAULTS, max_batches=10**9))
    finally:
        engine.dispose()

    ours: list[ScrapeResult] = []
    qe: list[ScrapeResult] = []
    qe_poll: dict[str, float] = {}
    notes: list[str] = []
    exe = None if args.no_qe else ensure_qe()
    rows = 0
    for target in SERIES_TARGETS:
        cap, expected = cap_for_series(all_snap, target)
        if expected < target:
            notes.append(f"only {expected} series possible for the {target} target "
                         f"({len(all_snap.batches)} exportable batches)")
        log(f"{name}: cj-health-exporter at ~{target} series (max_batches {cap})")
        steady = args.steady if target == SERIES_TARGETS[-1] else 0
        ours.append(run_ours(url, cap, target, args.scrapes, tag, steady))
        if exe is not None:
            # Its own metrics (queries, latency histogram, outbox gauges) are ~QE_OVERHEAD
            # series; the rest are per-batch rows of len(QE_METRICS) gauges each.
            rows = max(1, round((expected - QE_OVERHEAD) / len(QE_METRICS)))
            log(f"{name}: query-exporter at ~{target} series (LIMIT {rows})")
            qe.append(run_qe(exe, url, rows, target, args.scrapes, tag, steady))
    if exe is not None:
        # Never faster than its query: an interval shorter than that would pile queries up.
        interval = max(2, math.ceil(3 * polls.median))
        log(f"{name}: query-exporter, {args.qe_polls} polls every {interval} s")
        qe_poll = time_qe_polls(exe, url, rows, args.qe_polls, interval, tag)
    return ScaleResult(params, name, manifest, plan, outbox_plan, first, polls, snap.watched,
                       check, ours, qe, qe_poll, notes)


# --- report ---------------------------------------------------------------------------------------

def label(p: SeedParams) -> str:
    thin = f", history at {p.history_scale:g}x size" if p.history_scale != 1 else ""
    return f"{p.batches:,} batches{thin}"


def fmt_s(seconds: float) -> str:
    return f"{seconds:.3f} s"


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def ratio(ours: float | None, theirs: float | None) -> str:
    if not ours or theirs is None or math.isnan(theirs) or math.isnan(ours):
        return "-"
    return f"{theirs / ours:.1f}x"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def millions(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def scale_table(r: ScaleResult) -> list[list[str]]:
    rows: list[list[str]] = [["measure", "cj-health-exporter", "query-exporter",
                              "ratio (qe / ours)", "target", "verdict"]]
    qe = {s.target: s for s in r.qe}
    p = r.qe_poll
    rows.append(["poll, median", fmt_s(r.poll.median),
                 fmt_s(p["median"]) if p else "-", ratio(r.poll.median, p.get("median")),
                 f"<= {TARGET_POLL_S} s", verdict(r.poll.median <= TARGET_POLL_S)])
    rows.append(["poll, p95", fmt_s(r.poll.p95), fmt_s(p["p95"]) if p else "-",
                 ratio(r.poll.p95, p.get("p95")), "", ""])
    rows.append(["first poll (new connection)", fmt_s(r.first_poll), "", "", "", ""])
    for s in r.ours:
        q = qe.get(s.target)
        rows.append([f"scrape ~{s.target // 1000}k series, median", fmt_ms(s.latency.median),
                     fmt_ms(q.latency.median) if q else "-",
                     ratio(s.latency.median, q.latency.median if q else None),
                     f"<= {TARGET_SCRAPE_MS:g} ms" if s.target == 10_000 else "",
                     verdict(s.latency.median * 1000 <= TARGET_SCRAPE_MS)
                     if s.target == 10_000 else ""])
        rows.append([f"scrape ~{s.target // 1000}k series, p95", fmt_ms(s.latency.p95),
                     fmt_ms(q.latency.p95) if q else "-",
                     ratio(s.latency.p95, q.latency.p95 if q else None), "", ""])
        rows.append(["  series served / body bytes", f"{s.series} / {s.body_bytes}",
                     f"{q.series} / {q.body_bytes}" if q else "-", "", "", ""])
    big = r.ours[-1]
    qbig = qe.get(big.target)
    rows.append([f"RSS after scrapes at ~{big.target // 1000}k series",
                 f"{big.rss_mb:.1f} MiB", f"{qbig.rss_mb:.1f} MiB" if qbig else "-",
                 ratio(big.rss_mb, qbig.rss_mb if qbig else None),
                 f"<= {TARGET_RSS_MB:g} MB ({TARGET_RSS_MB * 1e6 / 2**20:.1f} MiB)",
                 verdict(big.rss_mb * 2**20 <= TARGET_RSS_MB * 1e6)])
    cpu_ours = big.extra.get("cpu_per_interval_s")
    cpu_qe = qbig.extra.get("cpu_per_interval_s") if qbig else None
    if cpu_ours is not None:
        rows.append([f"CPU per {BENCH_POLL_INTERVAL:g} s interval (1 poll + 1 scrape)",
                     fmt_ms(cpu_ours), fmt_ms(cpu_qe) if cpu_qe is not None else "-",
                     ratio(cpu_ours, cpu_qe), "", ""])
    rows.append(["peak RSS (VmHWM)", f"{big.peak_rss_mb:.1f} MiB",
                 f"{qbig.peak_rss_mb:.1f} MiB" if qbig else "-",
                 ratio(big.peak_rss_mb, qbig.peak_rss_mb if qbig else None), "", ""])
    scans = sorted({*r.explain.seq_scans, *r.outbox_explain.seq_scans})
    rows.append(["EXPLAIN: seq scans of essays/pairs/outbox", ", ".join(scans) or "none",
                 "(same view)", "", "none", verdict(not scans)])
    rows.append(["EXPLAIN: poll execution / buffers",
                 f"{r.explain.execution_ms:.0f} ms / {r.explain.buffers}", "", "", "", ""])
    rows.append(["watched batches / check vs seed", f"{r.watched} / {r.check}", "", "", "", ""])
    return rows


def flat_table(results: Sequence[ScaleResult]) -> list[list[str]]:
    """One column per scale; the ratio column is the largest value over the first scale's."""
    names = [label(r.params) for r in results]
    rows: list[list[str]] = [["measure", *names, f"max ratio to {names[0]}", "target",
                              "verdict"]]

    def add(name: str, values: list[float], show: Callable[[float], str],
            flat_target: bool = False) -> None:
        worst = max(v / values[0] for v in values) if values[0] else float("nan")
        rows.append([name, *[show(v) for v in values], f"{worst:.2f}x",
                     f"<= {FLAT_RATIO}x" if flat_target else "",
                     verdict(worst <= FLAT_RATIO) if flat_target else ""])

    def table_rows(r: ScaleResult, table: str) -> float:
        return float(r.manifest.get("rows", {}).get(table, 0))

    for table, name in (("cj_batch_uploads", "batches"), ("cj_comparison_pairs", "pairs"),
                        ("cj_processed_essays", "essays"), ("event_outbox", "outbox rows")):
        add(f"history: {name}", [table_rows(r, table) for r in results], millions)
    add("watched batches", [float(r.watched) for r in results], lambda v: f"{v:.0f}")
    add("cj-health-exporter poll, median", [r.poll.median for r in results], fmt_s, True)
    add("cj-health-exporter poll, p95", [r.poll.p95 for r in results], fmt_s)
    add("poll buffers (EXPLAIN)", [float(r.explain.buffers) for r in results],
        lambda v: f"{v:.0f}", True)
    if all(r.qe_poll for r in results):
        add("query-exporter poll, median", [r.qe_poll["median"] for r in results], fmt_s)
    add("scrape ~10k series, median (ours)", [r.ours[-1].latency.median for r in results],
        fmt_ms)
    if all(r.qe for r in results):
        add("scrape ~10k series, median (qe)", [r.qe[-1].latency.median for r in results],
            fmt_ms)
    add("RSS at ~10k series (ours)", [r.ours[-1].rss_mb for r in results],
        lambda v: f"{v:.1f} MiB")
    if all(r.qe for r in results):
        add("RSS at ~10k series (qe)", [r.qe[-1].rss_mb for r in results],
            lambda v: f"{v:.1f} MiB")
    return rows


def markdown(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
             for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def environment() -> str:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    mem = psutil.virtual_memory().total / 2**30
    load = os.getloadavg()
    return (f"{os.cpu_count()} cores ({models[0] if models else 'unknown CPU'}), {mem:.0f} GiB"
            f" RAM, load average {load[0]:.2f}, Python {sys.version.split()[0]}")


def report(results: Sequence[ScaleResult], command: str, qe_ver: str | None) -> str:
    out = [f"# cj-health-exporter benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "",
           f"command: `{command}`", "", f"machine: {environment()}",
           f"PostgreSQL: {results[0].manifest.get('server_version', 'pgserver 16')}; "
           f"query-exporter {qe_ver or 'not run'}", ""]
    for r in results:
        m = r.manifest
        rows = m.get("rows", {})
        out += [f"## {label(r.params)} ({r.database})", "",
                f"seed: {rows.get('cj_processed_essays', 0):,} essays, "
                f"{rows.get('cj_comparison_pairs', 0):,} pairs, "
                f"{rows.get('event_outbox', 0):,} outbox rows, "
                f"{m.get('database_bytes', 0) / 2**30:.1f} GiB, seeded in "
                f"{m.get('seconds', {}).get('total', float('nan')):.0f} s "
                f"(jobs={m.get('jobs', '?')}); in flight {m.get('params', {}).get('in_flight')},"
                f" recent {m.get('params', {}).get('recent')}, faulty "
                f"{m.get('params', {}).get('faulty')}", "",
                markdown(scale_table(r)), "",
                f"plan: {r.explain.path.relative_to(BENCH_DIR.parent)}", ""]
        out += [f"note: {n}" for n in r.notes]
    if len(results) > 1:
        out += ["## History grows, the watched set does not", "", markdown(flat_table(results)),
                ""]
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.poll",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--scales", default="100000",
                    help="comma-separated batch counts, each optionally BATCHES:HISTORY_SCALE"
                         " (default %(default)s)")
    ap.add_argument("--in-flight", type=int,
                    help="in-flight batches (default: 1 %% with one scale, 1000 with several)")
    ap.add_argument("--recent", type=int, help="recently finished batches (same defaults)")
    ap.add_argument("--faulty", type=int, default=SeedParams().faulty)
    ap.add_argument("--seed", type=int, default=SeedParams().seed)
    ap.add_argument("--polls", type=int, default=20, help="timed polls (default %(default)s)")
    ap.add_argument("--qe-polls", type=int, default=12,
                    help="query-exporter executions to wait for (default %(default)s)")
    ap.add_argument("--scrapes", type=int, default=200,
                    help="scrapes per exporter and size, or 30 s worth (default %(default)s)")
    ap.add_argument("--steady", type=float, default=30.0,
                    help="seconds of one-scrape-per-interval load for the CPU figure (%(default)s)")
    ap.add_argument("--jobs", type=int, default=1, help="seed connections (default 1)")
    ap.add_argument("--no-qe", action="store_true", help="skip query-exporter")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    ap.add_argument("--dsn", help="measure an existing database instead of seeding one")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python -m bench.poll " + " ".join(sys.argv[1:] if argv is None else argv)
    # "1000000:0.1" = a million batches whose old, finished ones are a tenth of the size.
    scales = [(int(b), float(h or 1)) for b, _, h in
              (spec.strip().partition(":") for spec in args.scales.split(",") if spec.strip())]
    several = len(scales) > 1
    # Several scales: the same watched set everywhere (1 % of the default scale), so that only
    # history grows; the 100,000-batch database is then the default run's.
    default_count = 1000 if several else None
    results: list[ScaleResult] = []
    server = None if args.dsn else BenchServer(args.data_dir)
    try:
        for batches, history_scale in scales:
            params = SeedParams(
                batches=batches, history_scale=history_scale,
                in_flight=args.in_flight if args.in_flight is not None else default_count,
                recent=args.recent if args.recent is not None else default_count,
                faulty=args.faulty, seed=args.seed)
            result = measure_scale(server, args.dsn, params, args)
            with connect(conninfo_of(server.url(result.database) if server else args.dsn)) as c:
                version = c.execute("SHOW server_version").fetchone()
            result.manifest["server_version"] = f"PostgreSQL {version[0] if version else '?'}"
            results.append(result)
            print(markdown(scale_table(result)), file=sys.stderr)
    finally:
        if server is not None:
            server.close()
    qe_ver = None if args.no_qe else qe_version(ensure_qe())
    text_report = report(results, command, qe_ver)
    print(text_report)
    OUT_DIR.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    (OUT_DIR / f"results-{stamp}.md").write_text(text_report + "\n", encoding="utf-8")
    (OUT_DIR / f"results-{stamp}.json").write_text(json.dumps(
        [_as_json(r) for r in results], indent=1, default=str) + "\n", encoding="utf-8")
    log(f"saved {OUT_DIR / f'results-{stamp}.md'}")
    return 0


def _as_json(r: ScaleResult) -> dict[str, Any]:
    def scrape(s: ScrapeResult) -> dict[str, Any]:
        return {"target": s.target, "series": s.series, "median_s": s.latency.median,
                "p95_s": s.latency.p95, "samples": len(s.latency.samples),
                "body_bytes": s.body_bytes, "rss_mib": s.rss_mb, "peak_rss_mib": s.peak_rss_mb,
                **s.extra}
    return {"batches": r.params.batches, "database": r.database, "manifest": r.manifest,
            "poll": {"first_s": r.first_poll, "median_s": r.poll.median, "p95_s": r.poll.p95,
                     "samples": r.poll.samples},
            "explain": {"path": str(r.explain.path), "execution_ms": r.explain.execution_ms,
                        "buffers": r.explain.buffers, "seq_scans": r.explain.seq_scans},
            "watched": r.watched, "check": r.check,
            "ours": [scrape(s) for s in r.ours], "qe": [scrape(s) for s in r.qe],
            "qe_poll": r.qe_poll, "notes": r.notes}


if __name__ == "__main__":
    raise SystemExit(main())
