"""Fill a PostgreSQL database with the reference CJ schema at benchmark scale.

    .venv/bin/python -m bench.seed                       # 100,000 batches into /tmp/cjh-bench/pg
    .venv/bin/python -m bench.seed --batches 10000 --in-flight 500 --recent 500 --faulty 300
    .venv/bin/python -m bench.seed --dsn postgresql://user@host/db --reset

What it writes (defaults, per 100,000 batches): ~5,000,000 essays (30-60 students, 60 % of the
batches with 8 anchors), ~20,000,000 comparison pairs (150-250 per batch), ~2,600,000 grade
projections, 500,000 outbox rows; 1 % of the batches in flight, 1 % finished within the exporter's
lookback window, the rest finished history spread over two years, and a few hundred faulty
batches of every kind the exporter flags. Unfinished faults (wedged, stuck in SCORING, FAILED
with a live status, in flight without a budget) sit at random places in the history, because
that is where a forgotten batch ends up; duplicate completions and missing projections are
placed among the recent batches (the watched set only holds finished batches that recent).

How it stays fast: one small per-batch plan is made in Python (random.Random(seed)) and copied
in with COPY; every large table is then generated inside PostgreSQL with INSERT ... SELECT over
generate_series, chunked by batch id (one statement per chunk, so a progress bar is possible and
--jobs connections can work at once). Per-row values come from hashint8extended/md5 of
(seed, batch, row), not from random(), so the content does not depend on chunk order or on
--jobs. Constraints and indexes are dropped before the load and recreated after it (much faster
than maintaining them row by row); the result has exactly the reference schema.

Deterministic: the same --seed, scale options and --now give the same rows (`--digest` prints a
content hash per table). Times are relative to --now (default: the current time), because the
watched set is defined relative to now().

Realism notes: essay texts, prompts and justifications are short (real ones are kilobytes and
mostly TOASTed out of the heap), so tables are smaller than production ones of the same row count;
JSON documents carry the keys upstream writes (docs/design.md §F6, §F8, §F10), not every optional
one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from exporter import sqlfiles
from exporter.config import Settings
from exporter.upstream import events as ev
from exporter.vocabulary import PROBLEM_COLUMNS, problem_set

DEFAULT_DATA_DIR = Path("/tmp/cjh-bench/pg")
CJ_TABLES = ("cj_batch_uploads", "cj_batch_states", "cj_processed_essays", "cj_comparison_pairs",
             "grade_projections", "anchor_essay_references", "assessment_instructions",
             "event_outbox")
BENCH_SCHEMA = "cjbench"
# Part of every database name: bump it when the generated content changes, so that a database
# seeded by older code is never reused as if this code had made it.
SEED_FORMAT = 3  # the plan and the manifest; never read by the exporter

# The exporter's own defaults decide which batches are "recent": the seed places batches
# relative to them so the watched set is known exactly.
LOOKBACK = timedelta(seconds=Settings().lookback_seconds)
STUDENTS = (30, 60)  # per batch, inclusive
PAIRS = (150, 250)  # comparisons per finished batch, inclusive
ANCHORS = 8  # one per grade of swedish_8_anchor
ANCHORED_SHARE = 0.6
ASSIGNMENTS = 200
SWEDISH_8 = ("F", "E", "D", "D+", "C", "C+", "B", "A")
FAILED_EVENT = "huleedu.cj_assessment.failed.v1"

# Fault kind -> the problems cj_batch_health must flag on such a batch.
FAULTS: dict[str, frozenset[str]] = {
    # planted without events (as the demo's Batch 20 once was): nobody was charged either
    "wedged": problem_set("wedged", "anchor_mismatch", "missing_projections", "unbilled"),
    "stuck_scoring": problem_set("stuck_scoring"),
    "inconsistent": problem_set("inconsistent_state"),
    "metadata_incomplete": problem_set("metadata_incomplete"),
    "duplicate_completion": problem_set("duplicate_completion", "duplicate_charge"),
    "missing_projections": problem_set("missing_projections"),
}
# Found by their state/status at any age, so they hide in the history...
UNFINISHED_FAULTS = ("wedged", "stuck_scoring", "inconsistent", "metadata_incomplete")
# ...while these are finished and only watched while recent.
RECENT_FAULTS = ("duplicate_completion", "missing_projections")
FAULT_ORDER = ("wedged", "stuck_scoring", "inconsistent", "metadata_incomplete",
               "duplicate_completion", "missing_projections")

ESSAY_TEXT = "Essay text for the benchmark. " * 3
PROMPT_TEXT = "Compare essay A with essay B against the rubric and name the stronger one."
JUSTIFICATION = "Essay A argues more clearly and its structure supports the thesis."


@dataclass(frozen=True)
class SeedParams:
    """Everything that decides the content. `key()` names the database built from it."""

    batches: int = 100_000
    in_flight: int | None = None  # default: 1 % of batches
    recent: int | None = None  # finished within the lookback window; default 1 %
    faulty: int = 300
    seed: int = 1
    history_days: float = 730.0
    outbox_per_batch: float = 5.0
    backlog: int = 25  # unpublished outbox rows, a fifth of them past the relay's 5 retries
    # Size of the old finished batches relative to the watched ones (students and pairs): below
    # 1 it packs more batches into the same disk, e.g. 1,000,000 batches at 0.1.
    history_scale: float = 1.0

    def resolved(self) -> SeedParams:
        one_percent = max(1, self.batches // 100)
        return replace(self, in_flight=one_percent if self.in_flight is None else self.in_flight,
                       recent=one_percent if self.recent is None else self.recent)

    def key(self) -> str:
        fields: dict[str, Any] = {**asdict(self.resolved()), "format": SEED_FORMAT}
        if fields["history_scale"] == 1.0:
            del fields["history_scale"]  # keeps the names of databases seeded before it existed
        blob = json.dumps(fields, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:8]

    def database_name(self) -> str:
        return f"cj_bench_{self.batches}_{self.key()}"

    def validate(self) -> None:
        p = self.resolved()
        assert p.in_flight is not None and p.recent is not None
        if p.batches < 1 or p.in_flight < 0 or p.recent < 0 or p.faulty < 0:
            raise ValueError("counts must be positive")
        history = p.batches - p.in_flight - p.recent
        unfinished = sum(1 for i in range(p.faulty) if FAULT_ORDER[i % 6] in UNFINISHED_FAULTS)
        if history < unfinished:
            raise ValueError(f"{history} history batches cannot hold {unfinished} old faults")
        if p.recent < p.faulty - unfinished:
            raise ValueError(f"--recent {p.recent} cannot hold {p.faulty - unfinished} recent "
                             "faults")
        if not 0 < p.history_scale <= 1:
            raise ValueError("--history-scale must be in (0, 1]")
        if p.history_days * 86400 < LOOKBACK.total_seconds() + 3 * 86400:
            raise ValueError("--history-days must exceed the lookback window by 3 days")


# --- the per-batch plan (Python, small) -----------------------------------------------------

PLAN_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "integer PRIMARY KEY"), ("kind", "text"), ("status", "text"), ("state", "text"),
    ("students", "integer"), ("anchors", "integer"), ("assignment", "integer"),
    ("anchors_flagged", "boolean"), ("pairs", "integer"), ("wins", "integer"),
    ("errors", "integer"), ("budget", "integer"), ("request_metadata", "boolean"),
    ("scored", "boolean"), ("created_at", "timestamptz"), ("last_activity_at", "timestamptz"),
    ("completed_at", "timestamptz"), ("bos", "text"), ("corr", "text"), ("user_id", "text"),
    ("completion_runs", "integer"), ("burst_ms", "integer"), ("projections", "boolean"),
    ("failed_event", "boolean"), ("iteration", "integer"), ("pair_offset", "bigint"),
)


@dataclass
class PlanRow:
    id: int
    kind: str
    status: str = "COMPLETE_STABLE"
    state: str = "COMPLETED"
    students: int = 0
    anchors: int = 0
    assignment: int | None = None
    anchors_flagged: bool = True
    pairs: int = 0
    wins: int = 0
    errors: int = 0
    budget: int | None = None
    request_metadata: bool = True
    scored: bool = True
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    last_activity_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    completed_at: datetime | None = None
    bos: str = ""
    corr: str = ""
    user_id: str = ""
    completion_runs: int = 0
    burst_ms: int = 0
    projections: bool = False
    failed_event: bool = False
    iteration: int = 1
    pair_offset: int = 0

    def values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name, _ in PLAN_COLUMNS)


@dataclass(frozen=True)
class Plan:
    rows: list[PlanRow]
    fill_events: int
    counts: dict[str, int]
    categories: dict[str, int]
    watched: int
    problems: dict[str, int]


def make_plan(params: SeedParams, now: datetime) -> Plan:
    """Decide every batch: category, outcome, sizes, times. Deterministic by params.seed."""
    p = params.resolved()
    assert p.in_flight is not None and p.recent is not None
    rng = random.Random(p.seed)
    n_hist = p.batches - p.in_flight - p.recent
    hist_ids = range(1, n_hist + 1)
    recent_ids = range(n_hist + 1, n_hist + p.recent + 1)
    faults: dict[int, str] = {}
    kinds = [FAULT_ORDER[i % 6] for i in range(p.faulty)]
    old = [k for k in kinds if k in UNFINISHED_FAULTS]
    new = [k for k in kinds if k in RECENT_FAULTS]
    faults.update(zip(rng.sample(hist_ids, len(old)), old, strict=True))
    faults.update(zip(rng.sample(recent_ids, len(new)), new, strict=True))

    history_span = timedelta(days=p.history_days) - LOOKBACK - timedelta(days=2)
    recent_span = LOOKBACK - timedelta(days=1) - timedelta(minutes=5)
    rows: list[PlanRow] = []
    previous: PlanRow | None = None
    pair_offset = 0
    for batch_id in range(1, p.batches + 1):
        row = PlanRow(id=batch_id, kind="history",
                      bos=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                      corr=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                      user_id=f"teacher-{rng.randrange(5000):05d}",
                      students=rng.randint(*STUDENTS))
        if rng.random() < ANCHORED_SHARE:
            row.anchors, row.assignment = ANCHORS, rng.randrange(ASSIGNMENTS)
        planned_pairs = rng.randint(*PAIRS)
        duration = timedelta(minutes=rng.uniform(15, 120))
        if batch_id <= n_hist:
            frac = (batch_id - 1) / max(n_hist - 1, 1)
            row.created_at = now - timedelta(days=p.history_days) + history_span * frac
            row.last_activity_at = row.created_at + duration
        elif batch_id <= n_hist + p.recent:
            row.kind = "recent"
            frac = (batch_id - n_hist - rng.random()) / max(p.recent, 1)
            row.last_activity_at = now - LOOKBACK + timedelta(days=1) + recent_span * frac
            row.created_at = row.last_activity_at - duration
        else:
            row.kind = "in_flight"
            row.created_at = now - timedelta(minutes=rng.uniform(10, 360))
            row.last_activity_at = now - timedelta(seconds=rng.uniform(5, 600))
        kind = faults.get(batch_id)
        if kind is None and batch_id <= n_hist and p.history_scale < 1:
            row.students = max(1, round(row.students * p.history_scale))
            planned_pairs = max(2, round(planned_pairs * p.history_scale))
        if kind is not None:
            _fault(row, kind, planned_pairs, rng)
        elif row.kind == "in_flight":
            _in_flight(row, planned_pairs, rng)
        else:
            _finished(row, planned_pairs, rng, previous)
        row.pair_offset = pair_offset
        pair_offset += row.pairs
        rows.append(row)
        previous = row

    events = sum(r.completion_runs * 3 + r.failed_event for r in rows)
    fill = max(0, round(p.outbox_per_batch * p.batches) - events - p.backlog)
    counts = {
        "cj_batch_uploads": p.batches,
        "cj_batch_states": p.batches,
        "cj_processed_essays": sum(r.students + r.anchors for r in rows),
        "cj_comparison_pairs": pair_offset,
        "grade_projections": sum(r.students for r in rows if r.projections),
        "anchor_essay_references": ASSIGNMENTS * ANCHORS,
        "assessment_instructions": ASSIGNMENTS,
        "event_outbox": events + fill + p.backlog,
    }
    categories: dict[str, int] = {}
    for r in rows:
        categories[r.kind] = categories.get(r.kind, 0) + 1
    problems = {name: 0 for name in sorted(PROBLEM_COLUMNS)}  # every kind, 0 included
    for kind in kinds:
        for name in FAULTS[kind]:
            problems[name] += 1
    watched = p.in_flight + p.recent + len(old)
    return Plan(rows, fill, counts, categories, watched, problems)


def _finished(row: PlanRow, pairs: int, rng: random.Random, previous: PlanRow | None) -> None:
    """A batch the service finished normally (or failed cleanly, with a failure event)."""
    u = rng.random()
    row.completed_at = row.last_activity_at
    row.iteration = rng.randint(1, 3)
    row.pairs = pairs
    row.errors = int(pairs * rng.uniform(0, 0.05))
    row.wins = pairs - row.errors
    row.budget = pairs
    row.completion_runs = 1
    if u < 0.90:
        pass  # COMPLETE_STABLE / COMPLETED
    elif u < 0.94:
        row.status = "COMPLETE_FORCED_RECOVERY"  # callbacks under budget, forced to scoring
        row.budget = pairs + rng.randint(10, 60)
    elif u < 0.99:
        row.status, row.state = "ERROR_PROCESSING", "FAILED"  # low success rate
        row.errors = int(pairs * rng.uniform(0.25, 0.6))
        row.wins = pairs - row.errors
        row.completion_runs, row.failed_event, row.scored = 0, True, False
    else:  # the single-essay path: no comparisons, never a budget
        row.status = "COMPLETE_INSUFFICIENT_ESSAYS"
        row.students, row.anchors, row.assignment = 1, 0, None
        row.pairs = row.wins = row.errors = 0
        row.budget, row.scored, row.iteration = None, False, 0
    row.projections = row.anchors > 0 and row.state == "COMPLETED"
    # Re-runs reuse the BOS batch id (docs/design.md §F1): half of the failed runs are retried.
    if (previous is not None and previous.failed_event and previous.kind != "in_flight"
            and rng.random() < 0.5):
        row.bos = previous.bos


def _in_flight(row: PlanRow, pairs: int, rng: random.Random) -> None:
    """Healthy work in progress: callbacks still pending (or not yet submitted)."""
    row.scored = False
    if rng.random() < 0.1:
        row.status, row.state, row.iteration = "PENDING", "INITIALIZING", 0
        return
    row.status = "FETCHING_CONTENT" if rng.random() < 0.7 else "PERFORMING_COMPARISONS"
    row.state = "WAITING_CALLBACKS"
    row.budget = pairs
    row.pairs = max(2, int(pairs * rng.uniform(0.3, 0.95)))
    pending = rng.randint(1, max(1, row.pairs // 3))
    row.errors = min(int(row.pairs * rng.uniform(0, 0.05)), row.pairs - pending)
    row.wins = row.pairs - pending - row.errors
    row.iteration = rng.randint(1, 3)


def _fault(row: PlanRow, kind: str, pairs: int, rng: random.Random) -> None:
    """The production failures (docs/metrics.md's problem kinds), one kind per batch."""
    row.kind = kind
    row.pairs = row.budget = pairs
    row.errors = int(pairs * rng.uniform(0, 0.05))
    row.wins = pairs - row.errors
    if kind in ("wedged", "missing_projections", "duplicate_completion") and not row.anchors:
        row.anchors, row.assignment = ANCHORS, rng.randrange(ASSIGNMENTS)
    if kind == "wedged":  # Batch 20: status says done, state never left WAITING_CALLBACKS
        row.state = "WAITING_CALLBACKS"
        row.anchors_flagged = False  # anchors only in metadata: the projector saw none
        row.completed_at = row.last_activity_at
    elif kind == "stuck_scoring":  # a failed finalization is never retried upstream
        row.status, row.state = "FETCHING_CONTENT", "SCORING"
    elif kind == "inconsistent":  # the monitor's < 80 % path: FAILED, status left live
        row.status, row.state, row.scored = "FETCHING_CONTENT", "FAILED", False
        row.wins = int(pairs * rng.uniform(0.3, 0.7))
    elif kind == "metadata_incomplete":  # in flight without budget or request documents
        row.status, row.state, row.scored = "FETCHING_CONTENT", "WAITING_CALLBACKS", False
        row.budget, row.request_metadata = None, False
        row.wins = pairs - row.errors - rng.randint(1, 20)
    elif kind == "duplicate_completion":  # the runaway: up to 83 completions within seconds
        row.completed_at = row.last_activity_at
        row.completion_runs, row.burst_ms = rng.randint(2, 83), 70
        row.projections = True
    elif kind == "missing_projections":
        row.completed_at = row.last_activity_at
        row.completion_runs = 1


# --- SQL generation ---------------------------------------------------------------------------

def rnd(seed: int, salt: int, *keys: str) -> str:
    """A uniform [0, 1) SQL expression from hashes of (seed, salt, keys): order-independent."""
    expr = f"{seed * 7919 + salt}::bigint"
    for key in keys:
        expr = f"hashint8extended(({key})::bigint, {expr})"
    return f"((({expr}) & 9007199254740991)::float8 / 9007199254740992.0)"


def uid(seed: int, tag: str, *keys: str) -> str:
    """A deterministic uuid SQL expression (md5 of the seed, a tag and the keys)."""
    parts = " || ':' || ".join(f"({k})::text" for k in keys)
    return f"md5('{seed}:{tag}:' || {parts})::uuid"


def ts(expr: str) -> str:
    """ISO-8601 UTC text for JSON documents, independent of the session's TimeZone."""
    return f"to_char(({expr}) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"')"


class Sql:
    """The INSERT ... SELECT statements; each takes %(lo)s/%(hi)s batch ids (or row numbers)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def student_id(self, idx: str) -> str:
        return f"{uid(self.seed, 's', 'p.id', idx)}::text"

    def essay_id(self, idx: str) -> str:
        """Students: a uuid. Anchors: ANCHOR_<ref>_<8 hex> as upstream, where upstream's hex is
        random (uuid4) and can collide once thousands of batches share a reference; here it is
        the batch id through a bijection of 32-bit integers, so it looks random and is unique
        (a batch holds one anchor per reference)."""
        ref = f"(p.assignment * {ANCHORS} + ({idx}) - p.students + 1)"
        scramble = (f"lpad(to_hex(mod(p.id::bigint * 2654435761 + {self.seed % 2**32},"
                    " 4294967296)), 8, '0')")
        return (f"CASE WHEN ({idx}) < p.students THEN {self.student_id(idx)}"
                f" ELSE 'ANCHOR_' || {ref} || '_' || {scramble} END")

    def request(self) -> str:
        return ("json_strip_nulls(json_build_object('assignment_id', CASE WHEN p.assignment IS"
                " NOT NULL THEN 'assignment-' || lpad(p.assignment::text, 4, '0') END,"
                " 'language', CASE WHEN mod(p.id, 4) = 0 THEN 'en' ELSE 'sv' END,"
                " 'course_code', CASE WHEN mod(p.id, 4) = 0 THEN 'ENG5' ELSE 'SV1' END,"
                " 'cj_source', 'els', 'cj_request_type', 'cj_comparison',"
                " 'user_id', p.user_id, 'org_id', 'org-' || mod(p.id, 97)))")

    def instructions(self) -> str:
        return (
            "INSERT INTO assessment_instructions (id, assignment_id, course_id, instructions_text,"
            " created_at, grade_scale, student_prompt_storage_id, judge_rubric_storage_id,"
            " context_origin) SELECT a + 1, 'assignment-' || lpad(a::text, 4, '0'), NULL,"
            " 'Write an argumentative essay about assignment ' || a || '.',"
            " %(now)s - interval '800 days', 'swedish_8_anchor', 'prompt-' || a, NULL,"
            " 'research_experiment' FROM generate_series(0, %(n)s - 1) AS a"
        )

    def anchor_refs(self) -> str:
        return (
            "INSERT INTO anchor_essay_references (id, grade, text_storage_id, assignment_id,"
            " created_at, grade_scale, anchor_label) SELECT a * 8 + g + 1,"
            f" (ARRAY{list(SWEDISH_8)})[g + 1], 'anchor-text-' || (a * 8 + g + 1),"
            " 'assignment-' || lpad(a::text, 4, '0'), %(now)s - interval '800 days',"
            " 'swedish_8_anchor', 'grade_' || (ARRAY"
            f"{list(SWEDISH_8)})[g + 1] || '_id_' || (a * 8 + g + 1)"
            " FROM generate_series(0, %(n)s - 1) AS a CROSS JOIN generate_series(0, 7) AS g"
        )

    def uploads(self) -> str:
        return (
            "INSERT INTO cj_batch_uploads (id, bos_batch_id, event_correlation_id, language,"
            " course_code, expected_essay_count, status, created_at, updated_at, completed_at,"
            " processing_metadata, assignment_id, user_id, org_id)"
            " SELECT p.id, p.bos, p.corr, CASE WHEN mod(p.id, 4) = 0 THEN 'en' ELSE 'sv' END,"
            " CASE WHEN mod(p.id, 4) = 0 THEN 'ENG5' ELSE 'SV1' END, p.students + p.anchors,"
            " p.status::cj_batch_status_enum, p.created_at AT TIME ZONE 'UTC',"
            " p.last_activity_at AT TIME ZONE 'UTC', p.completed_at AT TIME ZONE 'UTC',"
            f" json_build_object('original_request', {self.request()},"
            " 'student_prompt_storage_id', 'prompt-' || COALESCE(p.assignment, 0)),"
            " CASE WHEN p.assignment IS NOT NULL THEN 'assignment-'"
            " || lpad(p.assignment::text, 4, '0') END, p.user_id, 'org-' || mod(p.id, 97)"
            f" FROM {BENCH_SCHEMA}.plan AS p WHERE p.id BETWEEN %(lo)s AND %(hi)s"
        )

    def states(self) -> str:
        return (
            "INSERT INTO cj_batch_states (batch_id, state, total_comparisons,"
            " submitted_comparisons, completed_comparisons, failed_comparisons, last_activity_at,"
            " partial_scoring_triggered, completion_threshold_pct, current_iteration,"
            " processing_metadata, total_budget)"
            " SELECT p.id, p.state::cj_batch_state_enum, p.pairs, p.pairs, p.wins, p.errors,"
            " p.last_activity_at, COALESCE(p.wins >= p.budget * 0.95, false), 95, p.iteration,"
            f" CASE WHEN p.request_metadata THEN json_build_object('original_request',"
            f" {self.request()}, 'comparison_budget', json_build_object('max_pairs_requested',"
            " COALESCE(p.budget, 120), 'source', 'service_default'), 'llm_batching_mode',"
            " 'per_request', 'bt_se_summary', CASE WHEN p.scored THEN json_build_object("
            " 'mean_se', 0.61, 'max_se', 1.4, 'min_se', 0.0, 'item_count', p.students + p.anchors,"
            " 'comparison_count', p.wins) END) ELSE json_build_object('llm_batching_mode',"
            " 'per_request') END, p.budget"
            f" FROM {BENCH_SCHEMA}.plan AS p WHERE p.id BETWEEN %(lo)s AND %(hi)s"
        )

    def essays(self) -> str:
        s = self.seed
        grade = f"(ARRAY{list(SWEDISH_8)})[k - p.students + 1]"
        ref = f"(p.assignment * {ANCHORS} + k - p.students + 1)"
        return (
            "INSERT INTO cj_processed_essays (els_essay_id, cj_batch_id, text_storage_id,"
            " assessment_input_text, current_bt_score, comparison_count, created_at, updated_at,"
            " processing_metadata, current_bt_se, is_anchor)"
            f" SELECT {self.essay_id('k')}, p.id,"
            f" CASE WHEN k < p.students THEN 'essay-' || substr(md5('{s}:t:' || p.id || ':' || k),"
            f" 1, 16) ELSE 'anchor-text-' || {ref} END, %(text)s,"
            f" CASE WHEN p.scored THEN ({rnd(s, 1, 'p.id', 'k')} + {rnd(s, 2, 'p.id', 'k')}"
            f" + {rnd(s, 3, 'p.id', 'k')} - 1.5) * 2 END,"
            " CASE WHEN p.scored THEN 2 * p.wins / (p.students + p.anchors) ELSE 0 END,"
            " p.created_at AT TIME ZONE 'UTC', p.last_activity_at AT TIME ZONE 'UTC',"
            " CASE WHEN k < p.students THEN json_build_object('is_anchor', false)"
            f" ELSE json_build_object('is_anchor', true, 'known_grade', {grade},"
            f" 'anchor_ref_id', {ref}::text, 'text_storage_id', 'anchor-text-' || {ref},"
            f" 'anchor_label', 'grade_' || {grade} || '_id_' || {ref}) END,"
            f" CASE WHEN p.scored THEN 0.2 + {rnd(s, 4, 'p.id', 'k')} * 0.8 END,"
            " k >= p.students AND p.anchors_flagged"
            f" FROM {BENCH_SCHEMA}.plan AS p"
            " CROSS JOIN LATERAL generate_series(0, p.students + p.anchors - 1) AS k"
            " WHERE p.id BETWEEN %(lo)s AND %(hi)s"
        )

    def pairs(self) -> str:
        s = self.seed
        n = "(p.students + p.anchors)"
        won = "j <= p.wins"
        done = "j <= p.wins + p.errors"
        err = f"j > p.wins AND {done}"
        at = "(p.created_at + (p.last_activity_at - p.created_at) * j / (p.pairs + 1))"
        back = f"({at} + interval '5 seconds' + interval '55 seconds' * {rnd(s, 15, 'p.id', 'j')})"
        return (
            "INSERT INTO cj_comparison_pairs (id, cj_batch_id, essay_a_els_id, essay_b_els_id,"
            " prompt_text, winner, confidence, justification, raw_llm_response, error_code,"
            " error_correlation_id, error_timestamp, error_service, error_details, created_at,"
            " processing_metadata, request_correlation_id, submitted_at, completed_at,"
            " pair_generation_mode)"
            f" SELECT p.pair_offset + j, p.id, {self.essay_id('x.ai')},"
            f" {self.essay_id(f'mod(x.ai + 1 + x.off, {n})')}, %(prompt)s,"
            f" CASE WHEN {won} THEN CASE WHEN {rnd(s, 13, 'p.id', 'j')} < 0.5 THEN 'essay_a'"
            f" ELSE 'essay_b' END WHEN {done} THEN 'error' END,"
            f" CASE WHEN {won} THEN 1 + 4 * {rnd(s, 14, 'p.id', 'j')} END,"
            f" CASE WHEN {won} THEN %(justification)s END, NULL,"
            f" CASE WHEN {err} THEN (ARRAY['TIMEOUT', 'RATE_LIMIT', 'INVALID_RESPONSE'])"
            f"[1 + floor(3 * {rnd(s, 16, 'p.id', 'j')})::int] END,"
            f" CASE WHEN {err} THEN {uid(s, 'ec', 'p.id', 'j')} END,"
            f" CASE WHEN {err} THEN {back} END,"
            f" CASE WHEN {err} THEN 'llm_provider_service' END,"
            f" CASE WHEN {err} THEN json_build_object('reason', 'provider error') END,"
            f" {at} AT TIME ZONE 'UTC',"
            f" CASE WHEN {won} THEN json_build_object('provider', 'openai', 'model',"
            f" 'gpt-5-mini', 'response_time_ms', 800 + floor(4000 * {rnd(s, 17, 'p.id', 'j')}),"
            " 'token_usage', json_build_object('prompt_tokens', 2400, 'completion_tokens', 180,"
            " 'total_tokens', 2580), 'cost_estimate', 0.0012) END,"
            f" {uid(s, 'rc', 'p.id', 'j')}, {at},"
            f" CASE WHEN {done} THEN {back} END,"
            f" CASE WHEN {rnd(s, 18, 'p.id', 'j')} < 0.9 THEN 'coverage' ELSE 'resampling' END"
            f" FROM {BENCH_SCHEMA}.plan AS p CROSS JOIN LATERAL generate_series(1, p.pairs) AS j"
            f" CROSS JOIN LATERAL (SELECT floor({n} * {rnd(s, 11, 'p.id', 'j')})::int AS ai,"
            f" floor(({n} - 1) * {rnd(s, 12, 'p.id', 'j')})::int AS off) AS x"
            " WHERE p.id BETWEEN %(lo)s AND %(hi)s AND p.pairs > 0"
        )

    def projections(self) -> str:
        s = self.seed
        grade = f"(ARRAY{list(SWEDISH_8)})[1 + floor(8 * {rnd(s, 21, 'p.id', 'k')})::int]"
        return (
            "INSERT INTO grade_projections (els_essay_id, cj_batch_id, primary_grade,"
            " confidence_score, confidence_label, calculation_metadata, created_at,"
            " assessment_method, model_used, model_provider, normalized_score, population_prior,"
            " grade_scale)"
            f" SELECT {self.student_id('k')}, p.id, g.grade, 0.894, 'HIGH',"
            " json_build_object('bt_mean', 0.1, 'bt_se', 0.5, 'context_source', 'assignment',"
            " 'calibration_method', 'gaussian_mixture', 'primary_anchor_grade', g.grade,"
            " 'grade_scale', 'swedish_8_anchor'), p.last_activity_at, 'cj_assessment', NULL,"
            " NULL, NULL, 0.15, 'swedish_8_anchor'"
            f" FROM {BENCH_SCHEMA}.plan AS p"
            " CROSS JOIN LATERAL generate_series(0, p.students - 1) AS k"
            f" CROSS JOIN LATERAL (SELECT {grade} AS grade) AS g"
            " WHERE p.projections AND p.id BETWEEN %(lo)s AND %(hi)s"
        )

    def completion_events(self) -> str:
        """The three rows of each finalize_scoring run (exporter/upstream/events.py shapes)."""
        s = self.seed
        at = "(p.last_activity_at - (p.completion_runs - 1 - r) * p.burst_ms"\
             " * interval '1 millisecond')"
        data = (
            "CASE e.kind WHEN 1 THEN json_build_object('event_name', 'cj_assessment.completed',"
            f" 'entity_id', p.bos, 'entity_type', 'batch', 'parent_id', NULL, 'timestamp',"
            f" {ts(at)}, 'status', 'completed_successfully', 'system_metadata',"
            " json_build_object('entity_id', p.bos, 'entity_type', 'batch'),"
            " 'cj_assessment_job_id', p.id::text, 'processing_summary', json_build_object("
            " 'total_essays', p.students + p.anchors, 'successful', p.students, 'failed', 0))"
            " WHEN 2 THEN json_build_object('batch_id', p.bos, 'cj_assessment_job_id', p.id::text,"
            " 'assignment_id', CASE WHEN p.assignment IS NOT NULL THEN 'assignment-'"
            " || lpad(p.assignment::text, 4, '0') END, 'essay_results', json_build_array())"
            " ELSE json_build_object('entity_id', p.bos, 'entity_type', 'batch', 'user_id',"
            " p.user_id, 'org_id', 'org-' || mod(p.id, 97), 'resource_type', 'cj_comparison',"
            f" 'quantity', p.pairs, 'service_name', '{ev.SOURCE_SERVICE}', 'processing_id',"
            f" p.id::text, 'consumed_at', {ts(at)}) END"
        )
        return self._outbox_insert(
            oid=uid(s, "o", "p.id", "r * 3 + e.kind"),
            aggregate="CASE e.kind WHEN 2 THEN p.id::text ELSE p.bos END",
            aggregate_type="CASE e.kind WHEN 1 THEN 'cj_batch' WHEN 2 THEN 'assessment_result'"
                           " ELSE 'resource_consumption' END",
            event_type=f"CASE e.kind WHEN 1 THEN '{ev.COMPLETED_EVENT}' WHEN 2 THEN"
                       f" '{ev.RESULT_EVENT}' ELSE '{ev.RESOURCE_EVENT}' END",
            topic=f"CASE e.kind WHEN 1 THEN '{ev.COMPLETED_EVENT}' WHEN 2 THEN"
                  f" '{ev.RESULT_TOPIC}' ELSE '{ev.RESOURCE_EVENT}' END",
            correlation="p.corr", data=data, at=at, published=True,
            source=f"{BENCH_SCHEMA}.plan AS p CROSS JOIN LATERAL generate_series(0,"
                   " p.completion_runs - 1) AS r CROSS JOIN (VALUES (1), (2), (3)) AS e(kind)"
                   " WHERE p.completion_runs > 0 AND p.id BETWEEN %(lo)s AND %(hi)s",
            event_uuid=uid(s, "oe", "p.id", "r * 3 + e.kind"),
        )

    def failed_events(self) -> str:
        """finalize_failure's event for the batches that failed cleanly."""
        data = ("json_build_object('event_name', 'cj_assessment.failed', 'entity_id', p.bos,"
                " 'entity_type', 'batch', 'cj_assessment_job_id', p.id::text,"
                " 'status', 'failed_critically')")
        return self._outbox_insert(
            oid=uid(self.seed, "of", "p.id"), aggregate="p.bos", aggregate_type="'cj_batch'",
            event_type=f"'{FAILED_EVENT}'", topic=f"'{FAILED_EVENT}'", correlation="p.corr",
            data=data, at="p.last_activity_at", published=True,
            source=f"{BENCH_SCHEMA}.plan AS p WHERE p.failed_event"
                   " AND p.id BETWEEN %(lo)s AND %(hi)s",
            event_uuid=uid(self.seed, "ofe", "p.id"),
        )

    def fill_events(self, history_days: float) -> str:
        """Requests that failed before a batch existed (cj_assessment_job_id is the literal
        INITIALIZATION_FAILED): old, published rows that make the outbox as big as asked."""
        s = self.seed
        at = f"(%(now)s - interval '1 day' * {history_days} * {rnd(s, 31, 'i')})"
        data = ("json_build_object('event_name', 'cj_assessment.failed', 'entity_id',"
                f" {uid(s, 'fb', 'i')}::text, 'entity_type', 'batch', 'cj_assessment_job_id',"
                " 'INITIALIZATION_FAILED', 'status', 'failed_critically')")
        return self._outbox_insert(
            oid=uid(s, "fo", "i"), aggregate=f"{uid(s, 'fb', 'i')}::text",
            aggregate_type="'cj_batch'", event_type=f"'{FAILED_EVENT}'",
            topic=f"'{FAILED_EVENT}'", correlation=f"{uid(s, 'fc', 'i')}::text", data=data,
            at=at, published=True,
            source="generate_series(%(lo)s::bigint, %(hi)s::bigint) AS i",
            event_uuid=uid(s, "fe", "i"),
        )

    def backlog_events(self) -> str:
        """Unpublished rows of the last hour; the first fifth past the relay's 5 retries."""
        s = self.seed
        at = "(%(now)s - interval '1 minute' * (61 - i))"
        data = ("json_build_object('event_name', 'cj_assessment.failed', 'cj_assessment_job_id',"
                " 'INITIALIZATION_FAILED', 'status', 'failed_critically')")
        return self._outbox_insert(
            oid=uid(s, "bo", "i"), aggregate=f"{uid(s, 'bb', 'i')}::text",
            aggregate_type="'cj_batch'", event_type=f"'{FAILED_EVENT}'",
            topic=f"'{FAILED_EVENT}'", correlation=f"{uid(s, 'bc', 'i')}::text", data=data,
            at=at, published=False,
            source="generate_series(1, %(n)s) AS i", event_uuid=uid(s, "be", "i"),
            retry="CASE WHEN i <= GREATEST(%(n)s / 5, 1) THEN 5 ELSE 1 + mod(i, 4) END",
            error="CASE WHEN i <= GREATEST(%(n)s / 5, 1) THEN 'Exceeded max retries (5)'"
                  " ELSE 'broker timeout' END",
        )

    @staticmethod
    def _outbox_insert(*, oid: str, aggregate: str, aggregate_type: str, event_type: str,
                       topic: str, correlation: str, data: str, at: str, published: bool,
                       source: str, event_uuid: str, retry: str = "0",
                       error: str = "NULL") -> str:
        envelope = (f"json_build_object('event_id', {event_uuid}::text, 'event_type',"
                    f" {event_type}, 'event_timestamp', {ts(at)}, 'source_service',"
                    f" '{ev.SOURCE_SERVICE}', 'schema_version', 1, 'correlation_id',"
                    f" {correlation}, 'data_schema_uri', NULL, 'data', {data}, 'metadata',"
                    f" json_build_object(), 'topic', {topic})")
        published_at = f"{at} + interval '20 milliseconds'" if published else "NULL"
        return (
            "INSERT INTO event_outbox (id, aggregate_id, aggregate_type, event_type, event_data,"
            " event_key, topic, created_at, published_at, retry_count, last_error)"
            f" SELECT {oid}, {aggregate}, {aggregate_type}, {event_type}, {envelope},"
            f" {aggregate}, {topic}, {at}, {published_at}, {retry}, {error} FROM {source}"
        )


# --- running it -------------------------------------------------------------------------------

class Progress:
    """A progress bar on stderr: redrawn in place on a terminal, a line per 5 % otherwise."""

    def __init__(self, total: float, enabled: bool = True) -> None:
        self.total = max(total, 1.0)
        self.done = 0.0
        self.label = ""
        self.started = time.monotonic()
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self._last_step = -1
        self._lock = threading.Lock()

    def advance(self, amount: float, label: str) -> None:
        with self._lock:
            self.done += amount
            self.label = label
            self._draw()

    def note(self, label: str) -> None:
        with self._lock:
            self.label = label
            self._draw()

    def _draw(self) -> None:
        if not self.enabled:
            return
        frac = min(self.done / self.total, 1.0)
        elapsed = time.monotonic() - self.started
        if self.tty:
            bar = "#" * int(frac * 30)
            sys.stderr.write(f"\r[{bar:<30}] {frac:6.1%} {elapsed:7.1f}s {self.label:<48.48}")
            sys.stderr.flush()
        elif int(frac * 20) != self._last_step:
            self._last_step = int(frac * 20)
            sys.stderr.write(f"seed: {frac:6.1%} {elapsed:7.1f}s {self.label}\n")

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")


@dataclass(frozen=True)
class Task:
    label: str
    statement: str
    params: dict[str, Any] | None  # None: no placeholders (DDL, where % is literal)
    weight: float  # rows (or row-equivalents) for the progress bar


class Pool:
    """`jobs` autocommit connections working through Tasks; one statement per task."""

    def __init__(self, conninfo: str, jobs: int, progress: Progress) -> None:
        self.conninfo = conninfo
        self.jobs = max(1, jobs)
        self.progress = progress
        self._local = threading.local()
        self._conns: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()

    def _conn(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.conninfo)
            # Bulk load of a throwaway bench database: losing the last commits on a crash is
            # fine, waiting for each WAL flush is not.
            conn.execute("SET synchronous_commit = off")
            conn.execute("SET maintenance_work_mem = '512MB'")
            conn.execute("SET work_mem = '64MB'")
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def _run(self, task: Task) -> None:
        # bytes: the statements are built at run time, not LiteralStrings.
        self._conn().execute(task.statement.encode(), task.params)
        self.progress.advance(task.weight, task.label)

    def run(self, tasks: Sequence[Task]) -> None:
        if self.jobs == 1:
            for task in tasks:
                self._run(task)
            return
        with ThreadPoolExecutor(max_workers=self.jobs) as executor:
            for future in [executor.submit(self._run, t) for t in tasks]:
                future.result()

    def close(self) -> None:
        for conn in self._conns:
            conn.close()


def connect(conninfo: str) -> psycopg.Connection[Any]:
    return psycopg.connect(conninfo, autocommit=True)


def conninfo_of(url: str) -> str:
    """A libpq URI from a SQLAlchemy-style URL (postgresql+psycopg://...)."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def chunks(first: int, last: int, count: int) -> Iterator[tuple[int, int]]:
    size = max(1, math.ceil((last - first + 1) / max(count, 1)))
    for lo in range(first, last + 1, size):
        yield lo, min(lo + size - 1, last)


def drop_cj_objects(conn: psycopg.Connection[Any]) -> None:
    """--reset: remove the views, the CJ tables and types, and the bench schema."""
    conn.execute("DROP VIEW IF EXISTS cj_batch_health, cj_outbox_health")
    conn.execute(f"DROP TABLE IF EXISTS {', '.join(CJ_TABLES)} CASCADE")
    conn.execute("DROP TYPE IF EXISTS cj_batch_state_enum, cj_batch_status_enum")
    conn.execute(f"DROP SCHEMA IF EXISTS {BENCH_SCHEMA} CASCADE")


@dataclass(frozen=True)
class Deferred:
    """Constraints and indexes of the reference schema, dropped for the load."""

    keys: list[str]  # ALTER TABLE ... ADD CONSTRAINT (primary keys, unique)
    indexes: list[str]  # CREATE INDEX
    foreign: list[str]  # ALTER TABLE ... ADD CONSTRAINT ... FOREIGN KEY


def defer_constraints(conn: psycopg.Connection[Any]) -> Deferred:
    rows = conn.execute(
        "SELECT c.conrelid::regclass::text, c.conname, c.contype, pg_get_constraintdef(c.oid)"
        " FROM pg_constraint AS c WHERE c.connamespace = 'public'::regnamespace"
        " AND c.contype IN ('p', 'u', 'f') ORDER BY c.contype DESC, c.conname").fetchall()
    keys = [f"ALTER TABLE {t} ADD CONSTRAINT {n} {d}" for t, n, k, d in rows if k != "f"]
    foreign = [f"ALTER TABLE {t} ADD CONSTRAINT {n} {d}" for t, n, k, d in rows if k == "f"]
    indexes = [r[0] for r in conn.execute(
        "SELECT indexdef FROM pg_indexes AS i WHERE i.schemaname = 'public'"
        " AND NOT EXISTS (SELECT 1 FROM pg_constraint AS c WHERE c.conname = i.indexname"
        " AND c.connamespace = 'public'::regnamespace) ORDER BY indexname").fetchall()]
    for table, name, kind, _ in rows:
        if kind == "f":
            conn.execute(f"ALTER TABLE {table} DROP CONSTRAINT {name}")
    for table, name, kind, _ in rows:
        if kind != "f":
            conn.execute(f"ALTER TABLE {table} DROP CONSTRAINT {name}")
    for statement in indexes:
        conn.execute(f"DROP INDEX {statement.split(' INDEX ', 1)[1].split()[0]}")
    return Deferred(keys, indexes, foreign)


def ddl_name(statement: str) -> str:
    """'ALTER TABLE t ADD CONSTRAINT name ...' / 'CREATE [UNIQUE] INDEX name ON ...' -> name."""
    words = statement.split()
    marker = "CONSTRAINT" if "CONSTRAINT" in words else "INDEX"
    return words[words.index(marker) + 1]


def schema_snapshot(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """Constraints and index definitions: the seed checks it restored the reference schema."""
    return conn.execute(
        "SELECT 'c', conrelid::regclass::text, conname, pg_get_constraintdef(oid)"
        " FROM pg_constraint WHERE connamespace = 'public'::regnamespace"
        " UNION ALL SELECT 'i', tablename, indexname, indexdef FROM pg_indexes"
        " WHERE schemaname = 'public' ORDER BY 1, 2, 3").fetchall()


def table_digests(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """Row count and an order-independent hash of every CJ table's rows."""
    conn.execute("SET TimeZone = 'UTC'")  # timestamptz text depends on it
    out = {}
    for table in CJ_TABLES:
        count, total = conn.execute(
            f"SELECT count(*), COALESCE(sum(hashtextextended(t::text, 0)), 0) FROM {table} AS t"
        ).fetchone() or (0, 0)
        out[table] = f"{count}:{total}"
    return out


def seed(conninfo: str, params: SeedParams, now: datetime, jobs: int = 1,
         reset: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Fill the database at `conninfo`; returns the manifest (also stored in the database)."""
    params.validate()
    p = params.resolved()
    timings: dict[str, float] = {}
    started = time.monotonic()
    with connect(conninfo) as conn:
        exists = conn.execute("SELECT to_regclass('cj_batch_uploads') IS NOT NULL").fetchone()
        if exists and exists[0]:
            if not reset:
                raise SystemExit("the database already holds CJ tables: use --reset")
            drop_cj_objects(conn)
        with conn.transaction():
            cur = conn.cursor()
            cur.execute(sqlfiles.read("schema/cj_reference.sql").encode())
        reference = schema_snapshot(conn)
        deferred = defer_constraints(conn)
        conn.execute(f"CREATE SCHEMA {BENCH_SCHEMA}")
        conn.execute(f"CREATE TABLE {BENCH_SCHEMA}.plan ("
                     + ", ".join(f"{n} {t}" for n, t in PLAN_COLUMNS) + ")")
        conn.execute(f"CREATE TABLE {BENCH_SCHEMA}.manifest (doc json NOT NULL)")

        t0 = time.monotonic()
        plan = make_plan(p, now)
        columns = ", ".join(n for n, _ in PLAN_COLUMNS)
        with conn.cursor().copy(f"COPY {BENCH_SCHEMA}.plan ({columns}) FROM STDIN") as copy:
            for row in plan.rows:
                copy.write_row(row.values())
        conn.execute(f"ANALYZE {BENCH_SCHEMA}.plan")
        timings["plan"] = time.monotonic() - t0

    sql = Sql(p.seed)
    n_chunks = min(100, p.batches)
    base = {"now": now, "text": ESSAY_TEXT, "prompt": PROMPT_TEXT,
            "justification": JUSTIFICATION}
    c = plan.counts
    per_chunk = {k: v / n_chunks for k, v in c.items()}
    tasks: list[Task] = [
        Task("assessment_instructions", sql.instructions(), {**base, "n": ASSIGNMENTS},
             ASSIGNMENTS),
        Task("anchor_essay_references", sql.anchor_refs(), {**base, "n": ASSIGNMENTS},
             ASSIGNMENTS * ANCHORS),
    ]
    # Biggest first, so that with --jobs > 1 the workers finish together.
    for table, statement in (("cj_comparison_pairs", sql.pairs()),
                             ("cj_processed_essays", sql.essays()),
                             ("grade_projections", sql.projections()),
                             ("cj_batch_uploads", sql.uploads()),
                             ("cj_batch_states", sql.states())):
        for lo, hi in chunks(1, p.batches, n_chunks):
            tasks.append(Task(table, statement, {**base, "lo": lo, "hi": hi}, per_chunk[table]))
    events_per_chunk = (c["event_outbox"] - plan.fill_events - p.backlog) / n_chunks
    for lo, hi in chunks(1, p.batches, n_chunks):
        tasks.append(Task("event_outbox (completions)", sql.completion_events(),
                          {**base, "lo": lo, "hi": hi}, events_per_chunk))
        tasks.append(Task("event_outbox (failures)", sql.failed_events(),
                          {**base, "lo": lo, "hi": hi}, 0))
    if plan.fill_events:
        for lo, hi in chunks(1, plan.fill_events, n_chunks):
            tasks.append(Task("event_outbox (history)", sql.fill_events(p.history_days),
                              {**base, "lo": lo, "hi": hi}, hi - lo + 1))
    tasks.append(Task("event_outbox (backlog)", sql.backlog_events(), {**base, "n": p.backlog},
                      p.backlog))
    # Index builds weigh about as much as a tenth of their table's rows on the bar.
    index_weight = sum(c.values()) / 10
    total = sum(t.weight for t in tasks) + index_weight * 2
    progress = Progress(total, show_progress)
    pool = Pool(conninfo, jobs, progress)
    try:
        t0 = time.monotonic()
        pool.run(tasks)
        timings["load"] = time.monotonic() - t0

        t0 = time.monotonic()
        with connect(conninfo) as conn:
            for table, column, value in (("cj_batch_uploads", "id", p.batches),
                                         ("cj_comparison_pairs", "id", c["cj_comparison_pairs"]),
                                         ("anchor_essay_references", "id",
                                          ASSIGNMENTS * ANCHORS),
                                         ("assessment_instructions", "id", ASSIGNMENTS)):
                conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'),"
                             f" {max(value, 1)}, {value > 0})")
        # Keys first (they lock their table), then plain indexes, then foreign keys (which
        # need the referenced keys). Each phase runs across the pool's connections.
        steps = len(deferred.keys) + len(deferred.indexes) + len(deferred.foreign)
        for phase in (deferred.keys, deferred.indexes, deferred.foreign):
            pool.run([Task(ddl_name(s), s, None, index_weight / steps) for s in phase])
        timings["indexes"] = time.monotonic() - t0

        t0 = time.monotonic()
        # VACUUM sets the visibility map (index-only scans) and ANALYZE the statistics, as
        # autovacuum would have on a database that grew over two years.
        pool.run([Task(f"vacuum analyze {t}", f"VACUUM (ANALYZE) {t}", None, index_weight / 8)
                  for t in CJ_TABLES])
        timings["vacuum"] = time.monotonic() - t0
    finally:
        pool.close()
        progress.close()

    with connect(conninfo) as conn:
        if schema_snapshot(conn) != reference:
            raise RuntimeError("the restored constraints/indexes differ from the reference")
        actual = {t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])  # type: ignore[index]
                  for t in CJ_TABLES}
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        conn.execute(f"DROP TABLE {BENCH_SCHEMA}.plan")
        timings["total"] = time.monotonic() - started
        manifest = {
            "params": asdict(p),
            "key": p.key(),
            "now": now.isoformat(),
            "seeded_at": datetime.now(UTC).isoformat(),
            "rows": actual,
            "expected_rows": c,
            "categories": plan.categories,
            "watched": plan.watched,
            "problems": plan.problems,
            "database_bytes": int(size[0]) if size else 0,
            "seconds": {k: round(v, 1) for k, v in timings.items()},
            "jobs": jobs,
        }
        conn.execute(f"INSERT INTO {BENCH_SCHEMA}.manifest (doc) VALUES (%s)",
                     (json.dumps(manifest),))
    if actual != c:
        raise RuntimeError(f"row counts differ from the plan: {actual} != {c}")
    return manifest


def read_manifest(conninfo: str) -> dict[str, Any] | None:
    """The manifest of a complete seed, or None (no seed, or one that did not finish)."""
    with connect(conninfo) as conn:
        if conn.execute(f"SELECT to_regclass('{BENCH_SCHEMA}.manifest')").fetchone() == (None,):
            return None
        row = conn.execute(f"SELECT doc FROM {BENCH_SCHEMA}.manifest LIMIT 1").fetchone()
    if row is None:
        return None
    doc = row[0]
    return doc if isinstance(doc, dict) else dict(json.loads(doc))


# --- embedded server --------------------------------------------------------------------------

class BenchServer:
    """The pgserver cluster the benchmarks use (data under /tmp, survives between runs)."""

    def __init__(self, data_dir: Path = DEFAULT_DATA_DIR) -> None:
        from exporter.demo.embedded import EmbeddedPostgres, runtime_dir_env

        runtime_dir_env()
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.pg = EmbeddedPostgres(data_dir)
        with connect(self.conninfo("postgres")) as conn:
            # Fewer forced checkpoints while loading tens of millions of rows; the rest of the
            # server configuration stays at PostgreSQL's defaults.
            conn.execute("ALTER SYSTEM SET max_wal_size = '8GB'")
            conn.execute("ALTER SYSTEM SET checkpoint_timeout = '30min'")
            conn.execute("SELECT pg_reload_conf()")

    def url(self, database: str) -> str:
        return self.pg.url(database).render_as_string(hide_password=False)

    def conninfo(self, database: str) -> str:
        return conninfo_of(self.url(database))

    def database_exists(self, name: str) -> bool:
        with connect(self.conninfo("postgres")) as conn:
            return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                (name,)).fetchone() is not None

    def recreate_database(self, name: str) -> None:
        with connect(self.conninfo("postgres")) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')

    def close(self) -> None:
        self.pg.close()


def ensure_seeded(server: BenchServer, params: SeedParams, jobs: int = 1,
                  max_age: timedelta = timedelta(hours=20),
                  log: Callable[[str], None] = print) -> tuple[str, dict[str, Any]]:
    """Reuse the database seeded with `params` when it is complete and fresh, else seed it.

    "Fresh": the watched set is defined relative to now(), and the seed placed its recent
    batches a day inside the lookback window, so a seed older than that no longer matches its
    manifest.
    """
    name = params.database_name()
    if server.database_exists(name):
        manifest = read_manifest(server.conninfo(name))
        if manifest is not None:
            age = datetime.now(UTC) - datetime.fromisoformat(manifest["now"])
            if age < max_age:
                log(f"reusing {name} (seeded {age.total_seconds() / 3600:.1f} h ago in "
                    f"{manifest['seconds']['total']:.0f} s)")
                return name, manifest
            log(f"{name} was seeded {age} ago: seeding again")
    server.recreate_database(name)
    log(f"seeding {name}: {params.resolved()}")
    manifest = seed(server.conninfo(name), params, now_utc(), jobs=jobs)
    log(f"seeded {name} in {manifest['seconds']['total']:.0f} s "
        f"({manifest['database_bytes'] / 2**30:.1f} GiB)")
    return name, manifest


def now_utc() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    d = SeedParams()
    ap = argparse.ArgumentParser(prog="python -m bench.seed", description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=d.batches, help="CJ runs (default %(default)s)")
    ap.add_argument("--in-flight", type=int, help="batches in flight (default 1 %% of batches)")
    ap.add_argument("--recent", type=int,
                    help="finished within the lookback window (default 1 %% of batches)")
    ap.add_argument("--faulty", type=int, default=d.faulty, help="faulty batches (%(default)s)")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--history-days", type=float, default=d.history_days)
    ap.add_argument("--outbox-per-batch", type=float, default=d.outbox_per_batch)
    ap.add_argument("--backlog", type=int, default=d.backlog, help="unpublished outbox rows")
    ap.add_argument("--history-scale", type=float, default=d.history_scale,
                    help="size of old finished batches relative to watched ones (default 1)")
    ap.add_argument("--now", type=datetime.fromisoformat,
                    help="ISO time every relative time is anchored to (default: now)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="connections loading at once (default 1: the machine is shared)")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--dsn", help="an existing database (postgresql://...)")
    where.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                       help="embedded pgserver cluster (default %(default)s)")
    ap.add_argument("--database", help="database in --data-dir (default cj_bench_<batches>_<key>)")
    ap.add_argument("--reset", action="store_true", help="drop CJ tables already in --dsn")
    ap.add_argument("--digest", action="store_true", help="print a content hash per table")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    params = SeedParams(batches=args.batches, in_flight=args.in_flight, recent=args.recent,
                        faulty=args.faulty, seed=args.seed, history_days=args.history_days,
                        outbox_per_batch=args.outbox_per_batch, backlog=args.backlog,
                        history_scale=args.history_scale)
    try:
        params.validate()
    except ValueError as exc:
        print(f"seed: {exc}", file=sys.stderr)
        return 2
    now = args.now or now_utc()
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    server: BenchServer | None = None
    try:
        if args.dsn:
            conninfo = conninfo_of(args.dsn)
            where = args.dsn.split("@")[-1]
        else:
            server = BenchServer(args.data_dir)
            name = args.database or params.database_name()
            server.recreate_database(name)
            conninfo = server.conninfo(name)
            where = server.url(name)
        manifest = seed(conninfo, params, now, jobs=args.jobs, reset=args.reset,
                        show_progress=not args.quiet)
        print(f"seeded {where}")
        print(json.dumps({k: manifest[k] for k in ("params", "rows", "categories", "watched",
                                                   "problems", "database_bytes", "seconds")},
                         indent=1))
        if args.digest:
            with connect(conninfo) as conn:
                print(json.dumps({"digest": table_digests(conn)}, indent=1))
    finally:
        if server is not None:
            server.close()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
