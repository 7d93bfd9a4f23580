"""Realistic CJ batches written with plain SQL, for the demo, the tests and the benchmarks.

`insert_batch` writes one batch as the CJ service would leave it (upload, state row, students,
anchors with known grades, comparison pairs, projections, outbox events), with knobs that
reproduce each production failure. `seed_demo` plants one batch per scenario and returns which
problems each batch must show, so tests can check the exporter flags exactly those.

The outbox events are what upstream's publisher writes, field for field, and pass the
consumers' contracts (tests/db/test_finalizer_events.py): HEAD's shape by default, the pre-fix
code's with `prefix_events` (no top-level assignment_id, every grade "U", its old default
model name), which is what the real Batch 20 carries. A batch that published events was
scored: its essays get BT scores. The demo core needs no numpy, so they are a stand-in for the
fit (the centred log of (wins + 0.5) / (losses + 0.5)); the finalizer computes the real one.
"""

from __future__ import annotations

import json
import math
import random
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, text

from exporter.upstream import events as ev
from exporter.vocabulary import problem_set

SWEDISH_8 = ("F", "E", "D", "D+", "C", "C+", "B", "A")
DEMO_ASSIGNMENT = "demo-assignment-essay-2026"
SWEDISH_SCALE = "swedish_8_anchor"
# What the comparisons' LLM callbacks record (cj_comparison_pairs.processing_metadata).
LLM_PROVIDER, LLM_MODEL = "openai", "gpt-5-mini"
PREFIX_DEFAULT_MODEL = "gpt-5-mini-2025-08-07"  # the pre-fix code's result model_used
# grade -> normalized_score, as upstream's grade_utils (the finalizer's copy is in
# exporter/finalizer/events.py; the demo core must not import the finalizer)
NORMALIZED = {"A": 1.0, "A-": 0.93, "B+": 0.87, "B": 0.8, "B-": 0.73, "C+": 0.67, "C": 0.6,
              "C-": 0.53, "D+": 0.47, "D": 0.4, "D-": 0.33, "E+": 0.27, "E": 0.2, "E-": 0.13,
              "F+": 0.07, "F": 0.0, "U": 0.0}

# The figures of the scenarios, named once: the tests and the docs rely on them, and the demo's
# /metrics shows them (changing one changes what the demo exports).
STUDENTS = 6  # student essays of a batch (BatchSpec default)
COMPARISONS = 30  # a batch's budget, and comparisons submitted and completed (defaults)
GRADES = ("E", "D", "C", "B", "A")  # the anchor grades of the anchored scenarios: 5 anchors
BATCH20_IDLE = timedelta(hours=2)  # the Batch 20 wedge: no activity since its last callback
RUNAWAY_COMPLETION_RUNS = 83  # the runaway loop wrote its three completion events 83 times
RUNAWAY_BURST_SPACING = timedelta(milliseconds=70)  # one run every 70 ms: 83 within 6 s
# every completion, result and resource event beyond the first, all the runaway loop's
RUNAWAY_DUPLICATES = RUNAWAY_COMPLETION_RUNS - 1
OUTBOX_PENDING = 4  # unpublished outbox rows the relay still retries
OUTBOX_FAILED = 3  # unpublished rows past the relay's 5 retries: never delivered
OUTBOX_UNPUBLISHED = OUTBOX_PENDING + OUTBOX_FAILED
OUTBOX_OLDEST = timedelta(minutes=25)  # age of the oldest unpublished row
RERUN_BOS_BATCH_ID = "7b0c1d2e-0000-4000-8000-0000000e0e0e"  # a BOS batch run twice, legitimately
RERUNS = 2
HISTORY_IDLE = timedelta(days=400)  # a batch finished long ago: outside the watched set


@dataclass(frozen=True)
class BatchSpec:
    """How one CJ run looks in the database. Defaults: a healthy, finished batch."""

    status: str = "COMPLETE_STABLE"
    state: str | None = "COMPLETED"
    students: int = STUDENTS
    anchor_grades: tuple[str, ...] = ()
    anchors_flagged: bool = True  # False: anchors only in metadata (Batch 20)
    budget: int | None = COMPARISONS
    submitted: int = COMPARISONS
    completed: int = COMPARISONS
    failed: int = 0
    request_metadata: bool = True  # original_request + comparison_budget in the state row
    idle: timedelta = timedelta(minutes=2)  # now - last_activity_at
    finished: bool = True  # completed_at set
    projections: bool = False
    completion_runs: int = 0  # times the three completion events were written
    burst_spacing: timedelta = timedelta(seconds=1)
    bos_batch_id: str | None = None
    user_id: str | None = "teacher-0001"
    essay_metadata: Any = None  # overrides every student's processing_metadata when set
    # What the run's original_request carries beyond the defaults (e.g. max_comparisons_override:
    # then comparison_budget.source is runner_override); written to the upload and to the state
    # row from one payload, as upstream's create_cj_batch does. `state_request` changes only the
    # state row's copy (a key with None removes it) and `budget_source` overrides the source.
    request: Mapping[str, Any] = field(default_factory=dict)
    state_request: Mapping[str, Any] | None = None
    budget_source: str | None = None
    iteration: int | None = None  # current_iteration (default: 1 once comparisons were sent)
    events: tuple[str, ...] = ("completed", "result", "resource")  # what each run writes
    projection_grades: tuple[str, ...] = ()  # the projections' grades (default: Swedish 8)
    # Changes to every anchor's processing_metadata (a key with None removes it).
    anchor_metadata: Mapping[str, Any] = field(default_factory=dict)
    unresolved_anchors: int = 0  # the first N anchors: no grade any tier of the lookup finds
    prefix_events: bool = False  # the events in the pre-fix code's shape (Batch 20)
    superseded: bool = False  # a re-run of the BOS batch then took its essays (a healthy run)
    # The grade scale of the assignment's instructions, references and projections (the ENG5
    # national scale's grades 1-9 fail the result's letter_grade pattern).
    grade_scale: str = SWEDISH_SCALE


@dataclass(frozen=True)
class Content:
    """What a batch's events report: its essays' scores and the students' projected grades."""

    created_at: datetime
    assignment_id: str | None
    scores: dict[str, float]  # essay id -> BT score (stand-in)
    grades: dict[str, str]  # student id -> projected grade
    prefix: bool


@dataclass
class Seeder:
    """Writes batches through one connection; `now` anchors every relative time."""

    conn: Connection
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    rng: random.Random = field(default_factory=lambda: random.Random(20))
    _anchor_refs: dict[str, int] = field(default_factory=dict)
    _content: dict[int, Content] = field(default_factory=dict)
    reruns: dict[int, int] = field(default_factory=dict)  # superseded run -> the run now owning

    def naive(self, at: datetime) -> datetime:
        """Upload and essay timestamps are naive UTC upstream."""
        return at.astimezone(UTC).replace(tzinfo=None)

    def anchor_ref(self, grade: str, scale: str = SWEDISH_SCALE) -> int:
        key = grade if scale == SWEDISH_SCALE else f"{scale}:{grade}"
        if key not in self._anchor_refs:
            assignment = assignment_of(scale)
            self._ensure_assignment(assignment, scale)
            ref_id = self.conn.execute(
                text(
                    "INSERT INTO anchor_essay_references (grade, text_storage_id, assignment_id,"
                    " anchor_label, grade_scale) VALUES (:g, :t, :a, :l, :s) RETURNING id"
                ),
                {"g": grade, "t": f"anchor-text-{key}", "a": assignment,
                 "l": f"grade_{grade}_{uuid.uuid4().hex[:6]}", "s": scale},
            ).scalar_one()
            self._anchor_refs[key] = ref_id
        return self._anchor_refs[key]

    def _ensure_assignment(self, assignment: str, scale: str) -> None:
        self.conn.execute(
            text(
                "INSERT INTO assessment_instructions (assignment_id, instructions_text,"
                " grade_scale) SELECT CAST(:a AS varchar), 'Write an argumentative essay.', :s"
                " WHERE NOT EXISTS (SELECT 1 FROM assessment_instructions WHERE assignment_id = :a)"
            ),
            {"a": assignment, "s": scale},
        )

    def insert_batch(self, spec: BatchSpec) -> int:
        last_activity = self.now - spec.idle
        bos = spec.bos_batch_id or str(uuid.UUID(int=self.rng.getrandbits(128)))
        correlation = str(uuid.UUID(int=self.rng.getrandbits(128)))
        batch_id = self._insert_upload(spec, bos, correlation, last_activity)
        if spec.state is not None:
            self._insert_state(batch_id, spec, last_activity)
        students = self._insert_students(batch_id, spec)
        anchors = self._insert_anchors(batch_id, spec)
        outcomes = self._insert_pairs(batch_id, students + anchors, spec)
        grades = (self._insert_projections(batch_id, students, spec.projection_grades or SWEDISH_8,
                                           spec.grade_scale) if spec.projections else {})
        scores = stand_in_scores(students + anchors, outcomes) if spec.completion_runs else {}
        self._write_scores(batch_id, scores)
        self._content[batch_id] = Content(
            last_activity - timedelta(minutes=30),
            assignment_of(spec.grade_scale) if spec.anchor_grades else None, scores, grades,
            spec.prefix_events)
        for run in range(spec.completion_runs):
            at = last_activity - spec.burst_spacing * (spec.completion_runs - 1 - run)
            self.write_completion_events(batch_id, bos, correlation, spec.user_id, at,
                                         events=spec.events)
        if spec.superseded:
            rerun = self.insert_batch(BatchSpec(bos_batch_id=bos, students=0, completion_runs=1))
            self.move_essays(batch_id, rerun)
            self.reruns[batch_id] = rerun
        return batch_id

    def _insert_upload(
        self, spec: BatchSpec, bos: str, correlation: str, last_activity: datetime
    ) -> int:
        created = last_activity - timedelta(minutes=30)
        request = original_request(spec)
        return int(self.conn.execute(
            text(
                "INSERT INTO cj_batch_uploads (bos_batch_id, event_correlation_id, language,"
                " course_code, expected_essay_count, status, created_at, updated_at, completed_at,"
                " processing_metadata, assignment_id, user_id, org_id) VALUES (:bos, :corr, 'sv',"
                " 'SV1', :count, CAST(:status AS cj_batch_status_enum), :created, :updated,"
                " :completed, CAST(:meta AS json), :assignment, :user, 'org-demo') RETURNING id"
            ),
            {"bos": bos, "corr": correlation, "count": spec.students + len(spec.anchor_grades),
             "status": spec.status, "created": self.naive(created),
             "updated": self.naive(last_activity),
             "completed": self.naive(last_activity) if spec.finished else None,
             "meta": json.dumps({"original_request": request}),
             "assignment": assignment_of(spec.grade_scale) if spec.anchor_grades else None,
             "user": spec.user_id},
        ).scalar_one())

    def _insert_state(self, batch_id: int, spec: BatchSpec, last_activity: datetime) -> None:
        meta: dict[str, Any] = {"llm_batching_mode": "per_request"}
        if spec.request_metadata:
            request = original_request(spec)
            meta["original_request"] = _changed(request, spec.state_request or {})
            override = "max_comparisons_override" in request
            meta["comparison_budget"] = {
                "max_pairs_requested": spec.budget or 120,
                "source": spec.budget_source or ("runner_override" if override
                                                 else "service_default")}
        # Every NOT NULL column is supplied: the create_all variant has no defaults
        # on six of them (docs/design.md §F1).
        self.conn.execute(
            text(
                "INSERT INTO cj_batch_states (batch_id, state, total_comparisons,"
                " submitted_comparisons, completed_comparisons, failed_comparisons,"
                " last_activity_at, partial_scoring_triggered, completion_threshold_pct,"
                " current_iteration, processing_metadata, total_budget) VALUES (:id,"
                " CAST(:state AS cj_batch_state_enum), :sub, :sub, :done, :failed, :at, false,"
                " 95, :iteration, CAST(:meta AS json), :budget)"
            ),
            {"id": batch_id, "state": spec.state, "sub": spec.submitted, "done": spec.completed,
             "failed": spec.failed, "at": last_activity,
             "iteration": spec.iteration if spec.iteration is not None
             else 1 if spec.submitted else 0,
             "meta": json.dumps(meta), "budget": spec.budget},
        )

    def _insert_essay(
        self, batch_id: int, essay_id: str, is_anchor: bool, meta: Any, storage: str
    ) -> None:
        self.conn.execute(
            text(
                "INSERT INTO cj_processed_essays (els_essay_id, cj_batch_id, text_storage_id,"
                " assessment_input_text, comparison_count, created_at, updated_at,"
                " processing_metadata, is_anchor) VALUES (:id, :batch, :storage, :body, 0,"
                " :at, :at, CAST(:meta AS json), :anchor)"
            ),
            {"id": essay_id, "batch": batch_id, "storage": storage,
             "body": "Essay text. " * 20, "at": self.naive(self.now - timedelta(hours=1)),
             "meta": json.dumps(meta), "anchor": is_anchor},
        )

    def _insert_students(self, batch_id: int, spec: BatchSpec) -> list[str]:
        ids = [str(uuid.UUID(int=self.rng.getrandbits(128))) for _ in range(spec.students)]
        meta = {"is_anchor": False} if spec.essay_metadata is None else spec.essay_metadata
        for essay_id in ids:
            self._insert_essay(batch_id, essay_id, False, meta, f"storage-{essay_id[:8]}")
        return ids

    def _insert_anchors(self, batch_id: int, spec: BatchSpec) -> list[str]:
        ids = []
        for index, grade in enumerate(spec.anchor_grades):
            ref = self.anchor_ref(grade, spec.grade_scale)
            essay_id = f"ANCHOR_{ref}_{self.rng.getrandbits(32):08x}"
            storage = self.conn.execute(
                text("SELECT text_storage_id FROM anchor_essay_references WHERE id = :id"),
                {"id": ref}).scalar_one()
            meta = _changed({"is_anchor": True, "known_grade": grade, "anchor_ref_id": str(ref),
                             "text_storage_id": storage, "anchor_label": f"grade_{grade}"},
                            spec.anchor_metadata)
            if index < spec.unresolved_anchors:  # its reference is gone: no tier finds a grade
                meta = {"is_anchor": True, "anchor_label": f"grade_{grade}"}
                storage = f"anchor-text-removed-{index}"
            self._insert_essay(batch_id, essay_id, spec.anchors_flagged, meta, storage)
            ids.append(essay_id)
        return ids

    def _insert_pairs(self, batch_id: int, essays: list[str],
                      spec: BatchSpec) -> list[tuple[str, str]]:
        """The comparisons; returns the (winner, loser) of those with a winner."""
        if len(essays) < 2:
            return []
        kinds = (["win"] * spec.completed + ["error"] * spec.failed
                 + [None] * (spec.submitted - spec.completed - spec.failed))
        outcomes = []
        for kind in kinds:
            a, b = self.rng.sample(essays, 2)
            winner = self.rng.choice(("essay_a", "essay_b")) if kind == "win" else kind
            if kind == "win":
                outcomes.append((a, b) if winner == "essay_a" else (b, a))
            self.conn.execute(
                text(
                    "INSERT INTO cj_comparison_pairs (cj_batch_id, essay_a_els_id, essay_b_els_id,"
                    " prompt_text, winner, confidence, error_code, created_at,"
                    " request_correlation_id, submitted_at, completed_at, pair_generation_mode,"
                    " processing_metadata) VALUES (:batch, :a, :b, 'Which essay is better?',"
                    " :winner, :conf, :err, :created, :corr, :submitted, :completed, 'coverage',"
                    " CAST(:meta AS json))"
                ),
                {"batch": batch_id, "a": a, "b": b, "winner": winner,
                 "conf": 3.0 if kind == "win" else None,
                 "err": "TIMEOUT" if kind == "error" else None,
                 "created": self.naive(self.now - timedelta(minutes=20)),
                 "corr": str(uuid.uuid4()), "submitted": self.now - timedelta(minutes=20),
                 "completed": self.now - timedelta(minutes=10) if kind else None,
                 "meta": json.dumps({"provider": LLM_PROVIDER, "model": LLM_MODEL})
                 if kind == "win" else None},
            )
        return outcomes

    def _write_scores(self, batch_id: int, scores: dict[str, float]) -> None:
        for essay_id, score in scores.items():
            self.conn.execute(
                text("UPDATE cj_processed_essays SET current_bt_score = :s"
                     " WHERE els_essay_id = :id AND cj_batch_id = :batch"),
                {"s": score, "id": essay_id, "batch": batch_id})

    def _insert_projections(self, batch_id: int, students: list[str],
                            grades_of: tuple[str, ...] = SWEDISH_8,
                            scale: str = SWEDISH_SCALE) -> dict[str, str]:
        grades = {}
        for essay_id in students:
            grade = self.rng.choice(grades_of)
            grades[essay_id] = grade
            self.conn.execute(
                text(
                    "INSERT INTO grade_projections (els_essay_id, cj_batch_id, primary_grade,"
                    " confidence_score, confidence_label, calculation_metadata, population_prior,"
                    " grade_scale) VALUES (:id, :batch, :grade, 0.894, 'HIGH',"
                    " CAST(:meta AS json), 0.15, :scale)"
                ),
                {"id": essay_id, "batch": batch_id, "grade": grade, "scale": scale,
                 "meta": json.dumps({"calibration_method": "gaussian_mixture",
                                     "primary_anchor_grade": grade, "grade_scale": scale})},
            )
        return grades

    def write_completion_events(
        self, batch_id: int, bos: str, correlation: str, user_id: str | None, at: datetime,
        published: bool = True, events: tuple[str, ...] = ("completed", "result", "resource"),
    ) -> None:
        """What one upstream finalize_scoring call writes: completed, result, resource (no
        resource event without a user; `events` leaves out what an interrupted one did not)."""
        c = self._content.get(batch_id) or Content(at, None, {}, {}, False)
        rows = []
        if "completed" in events:
            rows.append(ev.completion_row(batch_id, bos, correlation, completion_summary(c, at),
                                          at, started_at=c.created_at))
        if "result" in events:
            rows.append(ev.result_row(batch_id, bos, correlation, result_payload(c, at), at))
        if user_id is not None and "resource" in events:
            students = len([e for e in c.scores if not e.startswith("ANCHOR_")])
            rows.append(ev.resource_row(bos, correlation, user_id, "org-demo",
                                        students * (students - 1) // 2, at,
                                        processing_id=str(batch_id)))
        for row in rows:
            ev.insert_row(self.conn, row, at, published_at=at if published else None)

    def move_essays(self, from_batch: int, to_batch: int) -> None:
        """A re-run of the BOS batch with the same ELS essays: upstream's upsert re-parents the
        essay rows (cj_processed_essays is keyed by els_essay_id alone)."""
        self.conn.execute(text("UPDATE cj_processed_essays SET cj_batch_id = :to"
                               " WHERE cj_batch_id = :src"), {"to": to_batch, "src": from_batch})

    def outbox_backlog(self, pending: int, failed: int, oldest: timedelta) -> None:
        """Unpublished rows; `failed` of them past the relay's 5 retries (never delivered)."""
        for i in range(pending + failed):
            at = self.now - oldest + timedelta(seconds=i)
            row = ev.OutboxRow(f"backlog-{i}", "cj_batch", "huleedu.cj_assessment.failed.v1",
                               "huleedu.cj_assessment.failed.v1",
                               ev.envelope("huleedu.cj_assessment.failed.v1",
                                           "huleedu.cj_assessment.failed.v1", str(uuid.uuid4()),
                                           {"cj_assessment_job_id": "INITIALIZATION_FAILED"}, at))
            gave_up = i < failed
            ev.insert_row(self.conn, row, at, retry_count=5 if gave_up else 1,
                          last_error="Exceeded max retries (5)" if gave_up else "broker timeout")


def assignment_of(scale: str) -> str:
    """The demo's assignment with instructions (and references) on `scale`."""
    return DEMO_ASSIGNMENT if scale == SWEDISH_SCALE else f"{DEMO_ASSIGNMENT}-{scale}"


def original_request(spec: BatchSpec) -> dict[str, Any]:
    """The request a batch was created with, as create_cj_batch stores it (None-valued keys
    omitted)."""
    request: dict[str, Any] = {
        "assignment_id": assignment_of(spec.grade_scale) if spec.anchor_grades else None,
        "language": "sv",
        "course_code": "SV1", "cj_source": "els", "cj_request_type": "cj_comparison",
        "user_id": spec.user_id, "org_id": "org-demo" if spec.user_id else None,
        **spec.request}
    return {k: v for k, v in request.items() if v is not None}


def _changed(document: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`document` with `changes` applied; a change to None removes the key."""
    out = {**document, **changes}
    return {k: v for k, v in out.items() if v is not None}


def stand_in_scores(essays: Sequence[str], outcomes: Sequence[tuple[str, str]]
                    ) -> dict[str, float]:
    """A demo stand-in for the BT fit, mean-centred like upstream's scores (module doc)."""
    wins = {e: 0 for e in essays}
    losses = dict(wins)
    for winner, loser in outcomes:
        wins[winner] += 1
        losses[loser] += 1
    raw = {e: math.log((wins[e] + 0.5) / (losses[e] + 0.5)) for e in essays}
    mean = sum(raw.values()) / len(raw) if raw else 0.0
    return {e: v - mean for e, v in raw.items()}


def completion_summary(c: Content, at: datetime) -> dict[str, Any]:
    students = [e for e in ranked(c) if not e.startswith("ANCHOR_")]
    return {"total_essays": len(students), "successful": len(students), "failed": 0,
            "successful_essay_ids": students, "failed_essay_ids": [],
            "processing_time_seconds": round((at - c.created_at).total_seconds(), 2),
            "single_essay_batch": len(students) == 1}


def ranked(c: Content) -> list[str]:
    return sorted(c.scores, key=lambda e: (-c.scores[e], e))


def result_payload(c: Content, at: datetime) -> dict[str, Any]:
    """The result event's body as upstream's publisher builds it (HEAD, or pre-fix)."""
    essays = []
    for rank, essay in enumerate(ranked(c), start=1):
        anchor = essay.startswith("ANCHOR_")
        grade = "U" if c.prefix or anchor else c.grades.get(essay, "U")
        graded = grade != "U"
        essays.append({
            "essay_id": essay, "normalized_score": NORMALIZED.get(grade, 0.0),
            "letter_grade": grade, "confidence_score": 0.894 if graded else 0.0,
            "confidence_label": "HIGH" if graded else "LOW", "bt_score": c.scores[essay],
            "rank": rank, "is_anchor": anchor, "feedback_uri": None, "metrics_uri": None,
            "display_name": f"ANCHOR GRADE {grade}" if anchor else None})
    anchors = sum(1 for e in c.scores if e.startswith("ANCHOR_"))
    payload: dict[str, Any] = {} if c.prefix else {"assignment_id": c.assignment_id}
    payload.update({
        "assessment_method": "cj_assessment",
        "model_used": PREFIX_DEFAULT_MODEL if c.prefix else LLM_MODEL,
        "model_provider": LLM_PROVIDER, "model_version": None, "essay_results": essays,
        "assessment_metadata": {
            "anchor_essays_used": anchors,
            "calibration_method": "anchor" if anchors else "default",
            "anchor_grade_distribution": (dict.fromkeys(("A", "B", "C", "D", "E", "F", "U"), 0)
                                          if anchors else {}),
            "comparison_count": len(essays) * (len(essays) - 1) // 2,
            "processing_duration_seconds": (at - c.created_at).total_seconds(),
            "llm_temperature": 0.1, "assignment_id": c.assignment_id, "course_code": "SV1"},
        "assessed_at": ev.timestamp(at)})
    return payload


# name -> (spec, problems the exporter must flag on exactly that batch)
DEMO_SCENARIOS: dict[str, tuple[BatchSpec, frozenset[str]]] = {
    "healthy_with_anchors": (
        BatchSpec(anchor_grades=GRADES, projections=True, completion_runs=1), problem_set()),
    "healthy_without_anchors": (BatchSpec(completion_runs=1), problem_set()),
    "healthy_forced_recovery": (
        BatchSpec(status="COMPLETE_FORCED_RECOVERY", completed=26, failed=0, submitted=26,
                  completion_runs=1), problem_set()),
    "single_essay": (
        BatchSpec(status="COMPLETE_INSUFFICIENT_ESSAYS", students=1, budget=None, submitted=0,
                  completed=0, request_metadata=False, completion_runs=1), problem_set()),
    "in_flight": (
        BatchSpec(status="FETCHING_CONTENT", state="WAITING_CALLBACKS", completed=12, failed=1,
                  finished=False, anchor_grades=GRADES, idle=timedelta(seconds=40)),
        problem_set()),
    "initializing": (
        BatchSpec(status="PENDING", state="INITIALIZING", budget=None, submitted=0, completed=0,
                  request_metadata=False, finished=False, idle=timedelta(seconds=5)),
        problem_set()),
    # What the pre-fix code left (docs/finalizer.md, "The policy", fixture batch 1): it scored
    # the batch and published one completion, one all-"U" result without assignment_id and one
    # charge, then the state machine never left WAITING_CALLBACKS.
    "batch20_wedge": (
        BatchSpec(status="COMPLETE_STABLE", state="WAITING_CALLBACKS", anchor_grades=GRADES,
                  anchors_flagged=False, idle=BATCH20_IDLE, completion_runs=1,
                  prefix_events=True),
        problem_set("wedged", "anchor_mismatch", "missing_projections", "wrong_result")),
    "stuck_scoring": (
        BatchSpec(status="FETCHING_CONTENT", state="SCORING", finished=False,
                  idle=timedelta(minutes=50)),
        problem_set("stuck_scoring")),
    "runaway_completion": (
        BatchSpec(completion_runs=RUNAWAY_COMPLETION_RUNS, burst_spacing=RUNAWAY_BURST_SPACING),
        problem_set("duplicate_completion", "duplicate_charge")),
    "monitor_failed": (
        BatchSpec(status="FETCHING_CONTENT", state="FAILED", completed=10, finished=False,
                  idle=timedelta(minutes=15)),
        problem_set("inconsistent_state")),
    "no_budget_in_flight": (
        BatchSpec(status="FETCHING_CONTENT", state="WAITING_CALLBACKS", budget=None,
                  completed=5, request_metadata=False, finished=False),
        problem_set("metadata_incomplete")),
    # --- what the upstream service's own batches showed (issue 11) ---------------------------
    # Finished and graded, but its result event has no assignment_id (the pre-fix code's).
    "wrong_result_published": (
        BatchSpec(anchor_grades=GRADES, projections=True, completion_runs=1, prefix_events=True),
        problem_set("wrong_result")),
    # The runaway run of the fixture, in small: a re-run of its BOS batch took its essays.
    "superseded_run": (
        BatchSpec(status="COMPLETE_STABLE", state="COMPLETED", completion_runs=1,
                  superseded=True),
        problem_set("superseded")),
    # The ENG5 national batch: the completion was written, then building the result raised on
    # the grades 1-9; stuck in SCORING, never charged.
    "eng5_national_scoring": (
        BatchSpec(status="PERFORMING_COMPARISONS", state="SCORING", finished=False,
                  anchor_grades=tuple("123456789"), grade_scale="eng5_np_national_9_step",
                  projections=True,
                  projection_grades=("1", "2", "4", "9"), completion_runs=1,
                  events=("completed",), idle=timedelta(minutes=50)),
        problem_set("stuck_scoring", "completion_without_result", "unbilled",
                    "unpublishable_result")),
    # user_id NULL: projections written, then finalization raised before any event.
    "no_user_scoring": (
        BatchSpec(status="PERFORMING_COMPARISONS", state="SCORING", finished=False,
                  anchor_grades=GRADES, projections=True, user_id=None,
                  idle=timedelta(minutes=50)),
        problem_set("stuck_scoring", "unbilled")),
    # --- the invariants of the metadata-persistence work (issue 16) --------------------------
    # A third continuation runs with runner_override although no stored request has an override.
    "budget_source_flipped": (
        BatchSpec(status="FETCHING_CONTENT", state="WAITING_CALLBACKS", completed=12,
                  finished=False, iteration=3, budget_source="runner_override"),
        problem_set("budget_source_flip")),
    # The state row's original_request names another user than the upload's.
    "rehydration_mismatch": (
        BatchSpec(status="FETCHING_CONTENT", state="WAITING_CALLBACKS", completed=12,
                  finished=False, state_request={"user_id": "teacher-0002"}),
        problem_set("rehydration_mismatch")),
    # One anchor whose reference is gone: no tier of the projector's lookup resolves it.
    "anchor_grade_unresolved": (
        BatchSpec(status="FETCHING_CONTENT", state="WAITING_CALLBACKS", completed=12,
                  finished=False, anchor_grades=GRADES, unresolved_anchors=1),
        problem_set("anchor_grade_unresolved")),
}


UNREADABLE_SCENARIO = BatchSpec(
    status="FETCHING_CONTENT", state="WAITING_CALLBACKS", completed=8, finished=False,
    essay_metadata={"is_anchor": False, "note": "pasted from a PDF\x00"})


def seed_demo(conn: Connection, now: datetime | None = None) -> dict[int, frozenset[str]]:
    """Plant every scenario; return cj_batch_id -> the problems it must be flagged with."""
    seeder = Seeder(conn, now=now or datetime.now(UTC))
    planted = {seeder.insert_batch(spec): problems
               for spec, problems in DEMO_SCENARIOS.values()}
    # The runs that took a superseded run's essays are healthy re-runs.
    planted.update({rerun: problem_set() for rerun in seeder.reruns.values()})
    # A BOS batch run twice, each run finalized once: legitimate, not a duplicate.
    for _ in range(RERUNS):
        planted[seeder.insert_batch(BatchSpec(bos_batch_id=RERUN_BOS_BATCH_ID,
                                              completion_runs=1))] = problem_set()
    # Years of history are not watched: a batch finished long ago is never exported.
    seeder.insert_batch(BatchSpec(completion_runs=1, idle=HISTORY_IDLE))
    # Essay metadata holding a NUL (json.dumps writes \u0000), which PostgreSQL stores but
    # ->/->> cannot read: the batch is exported with cj_batch_unreadable_documents 6 and facts
    # unknown, every other batch as usual (docs/metrics.md). Planted last: the other ids stay.
    planted[seeder.insert_batch(UNREADABLE_SCENARIO)] = problem_set()
    seeder.outbox_backlog(pending=OUTBOX_PENDING, failed=OUTBOX_FAILED, oldest=OUTBOX_OLDEST)
    return planted
