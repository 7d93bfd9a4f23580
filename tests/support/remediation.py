"""Helpers shared by the finalizer and remediation tests (the `remediation_db` fixture that
uses them lives in conftest.py)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, text

from exporter.demo.scenarios import BatchSpec, Seeder
from exporter.upstream import events as ev
from exporter.vocabulary import PROBLEM_COLUMNS as PROBLEMS

CJ_TABLES = {
    "essays": "SELECT els_essay_id, cj_batch_id, is_anchor, current_bt_score, current_bt_se,"
              " comparison_count, updated_at FROM cj_processed_essays ORDER BY 1",
    "states": "SELECT batch_id, state::text, last_activity_at, processing_metadata::text"
              " FROM cj_batch_states ORDER BY 1",
    "uploads": "SELECT id, status::text, completed_at, updated_at FROM cj_batch_uploads"
               " ORDER BY 1",
    "projections": "SELECT els_essay_id, cj_batch_id, primary_grade, created_at"
                   " FROM grade_projections ORDER BY 1, 2",
    "outbox": "SELECT id, event_type, aggregate_id, published_at FROM event_outbox ORDER BY 1",
}


def snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every CJ row the finalizer could touch, for "nothing changed" assertions."""
    with engine.connect() as conn:
        return {name: [tuple(r) for r in conn.execute(text(sql))]
                for name, sql in CJ_TABLES.items()}


def audit_rows(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(text(
            "SELECT replica, cj_batch_id, action, dry_run, outcome, detail"
            " FROM cj_health_remediations ORDER BY id")).mappings()]


def health(engine: Engine, batch_id: int) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM cj_batch_health WHERE cj_batch_id = :id"),
                           {"id": batch_id}).mappings().one()
    return dict(row)


def problems(row: dict[str, Any]) -> set[str]:
    return {p for p, column in PROBLEMS.items() if row[column]}


@dataclass(frozen=True)
class RemediationDb:
    url: str
    engine: Engine
    planted: dict[int, frozenset[str]]

    def batch(self, problem: str) -> int:
        return next(b for b, p in sorted(self.planted.items()) if problem in p)

    def wedged(self) -> list[int]:
        """The planted batches the finalizer acts on: wedged, or stuck in SCORING (2 in the
        demo: Batch 20 and the stuck one)."""
        return sorted(b for b, p in self.planted.items() if p & {"wedged", "stuck_scoring"})

    def planned_actions(self) -> int:
        """What one cycle plans for them: a refinalize each, and a backfill_anchors before it
        where the anchors are flagged only in metadata (3 in the demo)."""
        return sum(1 + ("anchor_mismatch" in self.planted[b]) for b in self.wedged())

    def seed(self, spec: BatchSpec) -> int:
        """One more batch; its own random ids (the demo's seeded generator would repeat)."""
        with self.engine.begin() as conn:
            return Seeder(conn, rng=random.Random()).insert_batch(spec)


def events_of(engine: Engine, batch_id: int) -> dict[str, list[dict[str, Any]]]:
    """The batch's outbox rows by kind, keyed as the view keys them."""
    with engine.connect() as conn:
        bos = conn.execute(text("SELECT bos_batch_id FROM cj_batch_uploads WHERE id = :id"),
                           {"id": batch_id}).scalar_one()
        rows = conn.execute(text(
            "SELECT event_type, aggregate_id, aggregate_type, topic, event_key, published_at,"
            " event_data::text AS data FROM event_outbox WHERE"
            " (event_type = :c AND event_data -> 'data' ->> 'cj_assessment_job_id' = :sid)"
            " OR (event_type = :r AND aggregate_id = :sid)"
            " OR (event_type = :rc AND aggregate_id = :bos)"),
            {"c": ev.COMPLETED_EVENT, "r": ev.RESULT_EVENT, "rc": ev.RESOURCE_EVENT,
             "sid": str(batch_id), "bos": bos}).mappings().all()
    kinds = {ev.COMPLETED_EVENT: "completed", ev.RESULT_EVENT: "result",
             ev.RESOURCE_EVENT: "resource"}
    out: dict[str, list[dict[str, Any]]] = {"completed": [], "result": [], "resource": []}
    for r in rows:
        out[kinds[r["event_type"]]].append({**r, "data": json.loads(r["data"])})
    return out
