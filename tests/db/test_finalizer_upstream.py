"""The finalizer on the batches the CJ service's own code wrote (../shared/upstream/fixtures),
loaded on upstream's migrated schema: what it writes per batch by the healing policy, and its
parity with upstream HEAD's own re-finalization (upstream_refinalize_expected.json).

Parity figures (max |delta BT|, max |delta SE|, grades, payload fields) are printed by
test_parity_with_upstreams_own_refinalization (pytest -s) and recorded in docs/finalizer.md.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text

from exporter.finalizer import audit, bt, store
from exporter.finalizer.model import Result
from exporter.finalizer.refinalize import Hooks, refinalize
from exporter.upstream import contracts
from exporter.vocabulary import APPLIED, CLOSED, NEEDS_PERSON, SKIPPED
from tests.support import upstream as up
from tests.support.database import Server
from tests.support.remediation import audit_rows, events_of, snapshot

Counts = dict[str, int]


@pytest.fixture
def fixture_db(pg_server: Server) -> Iterator[up.UpstreamDb]:
    with up.upstream_database(pg_server) as db:
        with db.engine.begin() as conn:
            audit.install(conn)
        yield db


def counts(engine: Engine, batch_id: int) -> Counts:
    return {k: len(v) for k, v in events_of(engine, batch_id).items()}


def end_state(engine: Engine, batch_id: int) -> tuple[str, str, int]:
    with engine.connect() as conn:
        row = conn.execute(text(
            "SELECT u.status::text, s.state::text,"
            " (SELECT count(*) FROM grade_projections g WHERE g.cj_batch_id = u.id)"
            " FROM cj_batch_uploads u JOIN cj_batch_states s ON s.batch_id = u.id"
            " WHERE u.id = :id"), {"id": batch_id}).one()
    return str(row[0]), str(row[1]), int(row[2])


# cj_batch_id -> (outcome, events added per type, (status, state, projections) after), by the
# policy of docs/finalizer.md (the table beside MANIFEST.md's).
POLICY: dict[int, tuple[str, Counts, tuple[str, str, int]]] = {
    up.BATCH20_WEDGE: (APPLIED, {"completed": 0, "result": 1, "resource": 0},
                       ("COMPLETE_STABLE", "COMPLETED", 6)),
    up.SUPERSEDED: (CLOSED, {"completed": 0, "result": 0, "resource": 0},
                    ("COMPLETE_STABLE", "COMPLETED", 0)),
    up.RERUN: (CLOSED, {"completed": 0, "result": 0, "resource": 0},
               ("COMPLETE_STABLE", "COMPLETED", 0)),
    up.HEALTHY: (SKIPPED, {"completed": 0, "result": 0, "resource": 0},
                 ("COMPLETE_STABLE", "COMPLETED", 8)),
    up.ENG5_NATIONAL: (NEEDS_PERSON, {"completed": 0, "result": 0, "resource": 0},
                       ("PERFORMING_COMPARISONS", "SCORING", 6)),
    up.NO_USER: (APPLIED, {"completed": 1, "result": 1, "resource": 0},
                 ("COMPLETE_STABLE", "COMPLETED", 5)),
    up.NEVER_SCORED: (APPLIED, {"completed": 1, "result": 1, "resource": 1},
                      ("COMPLETE_STABLE", "COMPLETED", 6)),
    up.IN_FLIGHT: (SKIPPED, {"completed": 0, "result": 0, "resource": 0},
                   ("PERFORMING_COMPARISONS", "WAITING_CALLBACKS", 0)),
}


def test_each_fixture_batch_is_healed_by_the_policy(fixture_db: up.UpstreamDb) -> None:
    engine = fixture_db.engine
    before = {b: counts(engine, b) for b in up.ALL_BATCHES}
    assert before[up.BATCH20_WEDGE] == {"completed": 1, "result": 1, "resource": 1}
    assert before[up.SUPERSEDED] == {"completed": 6, "result": 6, "resource": 7}  # + 3's charge
    assert before[up.ENG5_NATIONAL] == {"completed": 1, "result": 0, "resource": 0}
    results = {b: refinalize(engine, b, replica="test", dry_run=False) for b in up.ALL_BATCHES}
    for batch_id, (outcome, added, state) in POLICY.items():
        result = results[batch_id]
        assert result.outcome == outcome, (batch_id, result.line())
        after = counts(engine, batch_id)
        assert {k: after[k] - before[batch_id][k] for k in after} == added, batch_id
        assert end_state(engine, batch_id) == state, batch_id
    # Why, in the audit detail.
    decisions = results[up.BATCH20_WEDGE].detail["decisions"]
    assert decisions["completed"].startswith("kept") and decisions["resource"].startswith("kept")
    assert decisions["result"].startswith("corrected")
    assert "superseded by run(s) 3" in results[up.SUPERSEDED].reason
    assert "still right" in results[up.RERUN].reason
    eng5 = results[up.ENG5_NATIONAL]
    assert "letter_grade" in eng5.reason and eng5.detail["grade_scale"] == (
        "eng5_np_national_9_step")
    assert results[up.NO_USER].detail["decisions"]["resource"].startswith("withheld")
    audited = {(r["cj_batch_id"], r["outcome"]) for r in audit_rows(engine)}
    assert audited == {(b, o) for b, (o, _, _) in POLICY.items()
                       if o in (APPLIED, CLOSED)}  # the others are audited by the caller
    # A second pass changes nothing at all.
    unchanged = snapshot(engine)
    again = {b: refinalize(engine, b, replica="test", dry_run=False) for b in up.ALL_BATCHES}
    assert snapshot(engine) == unchanged
    assert {r.outcome for b, r in again.items() if b != up.ENG5_NATIONAL} == {SKIPPED}
    assert again[up.ENG5_NATIONAL].outcome == NEEDS_PERSON  # still a person's, still SCORING


def test_the_dry_run_plans_what_the_apply_does(fixture_db: up.UpstreamDb) -> None:
    engine = fixture_db.engine
    before = snapshot(engine)
    plans = {b: refinalize(engine, b, replica="test", dry_run=True) for b in up.ALL_BATCHES}
    assert snapshot(engine) == before
    for batch_id, plan in plans.items():
        outcome = POLICY[batch_id][0]
        assert plan.outcome == ("dry_run" if outcome in (APPLIED, CLOSED) else outcome), batch_id
    assert plans[up.BATCH20_WEDGE].detail["events"] == ["result"]
    assert plans[up.NO_USER].detail["events"] == ["completed", "result"]
    assert plans[up.RERUN].reason.startswith("would close")


def test_every_row_written_over_the_fixture_validates(fixture_db: up.UpstreamDb) -> None:
    engine = fixture_db.engine
    for batch_id in up.ALL_BATCHES:
        refinalize(engine, batch_id, replica="test", dry_run=False)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT event_type, CAST(event_data AS text), published_at"
                                 " FROM event_outbox")).all()
    ours = [r for r in rows if r[2] is None]
    assert len(rows) == 28 + len(ours) and len(ours) == 1 + 2 + 3  # 1: result, 6: 2, 7: 3
    for event_type, data, _ in rows:  # upstream's 28 and ours
        assert contracts.violations(event_type, json.loads(data)) == [], (event_type, data)


def test_a_row_its_consumer_would_reject_rolls_everything_back(
        fixture_db: up.UpstreamDb) -> None:
    """Formats are checked: a correlation id that is not a UUID passes JSON Schema's types
    but fails the consumers' pydantic parse; nothing may be written for it."""
    engine = fixture_db.engine
    with engine.begin() as conn:
        conn.execute(text("UPDATE cj_batch_uploads SET event_correlation_id = 'not-a-uuid'"
                          " WHERE id = :id"), {"id": up.NEVER_SCORED})
    before = snapshot(engine)
    result = refinalize(engine, up.NEVER_SCORED, replica="test", dry_run=False)
    assert result.outcome == NEEDS_PERSON, result.line()
    assert "correlation_id" in result.reason and "uuid" in result.reason
    assert snapshot(engine) == before
    assert end_state(engine, up.NEVER_SCORED)[1] == "WAITING_CALLBACKS"


def test_eight_concurrent_finalizers_on_batch20_write_one_corrected_result(
        fixture_db: up.UpstreamDb) -> None:
    finalizers = 8
    barrier = threading.Barrier(finalizers)
    results: list[Result] = []
    lock = threading.Lock()

    def finalizer(n: int) -> None:
        engine = create_engine(fixture_db.url, pool_size=1)
        try:
            hooks = Hooks(before_commit=lambda: time.sleep(0.3))
            barrier.wait()
            result = refinalize(engine, up.BATCH20_WEDGE, replica=f"r{n}", dry_run=False,
                                hooks=hooks)
            with lock:
                results.append(result)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=finalizer, args=(n,)) for n in range(finalizers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(r.outcome for r in results) == [APPLIED] + [SKIPPED] * (finalizers - 1), [
        r.line() for r in results]
    assert counts(fixture_db.engine, up.BATCH20_WEDGE) == {
        "completed": 1, "result": 2, "resource": 1}


# --- parity with upstream HEAD's own re-finalization ------------------------------------------

# Fields that differ on every build: event ids, clocks and what is measured with them.
VOLATILE = {"event_id", "event_timestamp", "timestamp", "started_at", "completed_at",
            "assessed_at", "consumed_at", "processing_time_seconds",
            "processing_duration_seconds"}


def differences(expected: Any, got: Any, path: str = "") -> list[str]:
    """Every leaf where `got` differs from `expected` (volatile fields aside; floats 1e-9)."""
    if isinstance(expected, dict) and isinstance(got, dict):
        out = [f"{path}/{k}: missing" for k in expected.keys() - got.keys() if k not in VOLATILE]
        out += [f"{path}/{k}: extra" for k in got.keys() - expected.keys() if k not in VOLATILE]
        for k in expected.keys() & got.keys():
            if k not in VOLATILE:
                out += differences(expected[k], got[k], f"{path}/{k}")
        return out
    if isinstance(expected, list) and isinstance(got, list):
        if len(expected) != len(got):
            return [f"{path}: {len(got)} items, expected {len(expected)}"]
        return [d for i, (e, g) in enumerate(zip(expected, got, strict=True))
                for d in differences(e, g, f"{path}/{i}")]
    if isinstance(expected, float) and isinstance(got, int | float) and not isinstance(got, bool):
        return [] if abs(expected - got) <= 1e-9 else [f"{path}: {got} != {expected}"]
    return [] if expected == got and type(expected) is type(got) else [
        f"{path}: {got!r} != {expected!r}"]


AGGREGATE_TYPES = {"huleedu.cj_assessment.completed.v1": "cj_batch",
                   "assessment.result.published": "assessment_result",
                   "huleedu.resource.consumption.v1": "resource_consumption"}


def test_the_field_comparison_can_fail() -> None:
    assert differences({"a": [1.0, "x"]}, {"a": [1.0 + 1e-6, "x"]}) == ["/a/0: 1.000001 != 1.0"]
    assert differences({"a": None}, {}) == ["/a: missing"]
    assert differences({"a": 0.1}, {"a": None}) == ["/a: None != 0.1"]
    assert differences({"timestamp": "t1"}, {"timestamp": "t2"}) == []  # volatile


def leaves(value: Any) -> int:
    if isinstance(value, dict):
        return sum(leaves(v) for k, v in value.items() if k not in VOLATILE)
    if isinstance(value, list):
        return sum(leaves(v) for v in value)
    return 1


def test_parity_with_upstreams_own_refinalization(fixture_db: up.UpstreamDb) -> None:
    engine = fixture_db.engine
    figures: dict[str, float] = {"bt": 0.0, "se": 0.0}
    compared = 0
    for batch_id in (up.BATCH20_WEDGE, up.NEVER_SCORED):
        expected = up.expected()["batches"][str(batch_id)]
        result = refinalize(engine, batch_id, replica="parity", dry_run=False)
        assert result.outcome == APPLIED, result.line()
        assert [result.detail["plan"][2].rsplit("reference ", 1)[1].rstrip(")")] == expected[
            "se_reference_anchor"]
        with engine.connect() as conn:
            essays = {r[0]: r for r in conn.execute(text(
                "SELECT els_essay_id, is_anchor, current_bt_score, current_bt_se,"
                " comparison_count FROM cj_processed_essays WHERE cj_batch_id = :id"),
                {"id": batch_id})}
            projections = {r[0]: r[1:] for r in conn.execute(text(
                "SELECT els_essay_id, primary_grade, confidence_label, confidence_score,"
                " grade_scale FROM grade_projections WHERE cj_batch_id = :id"),
                {"id": batch_id})}
        assert essays.keys() == {e["els_essay_id"] for e in expected["essays"]}
        for e in expected["essays"]:
            mine = essays[e["els_essay_id"]]
            assert (mine[1], mine[4]) == (e["is_anchor"], e["comparison_count"])
            figures["bt"] = max(figures["bt"], abs(mine[2] - e["current_bt_score"]))
            figures["se"] = max(figures["se"], abs(mine[3] - e["current_bt_se"]))
        assert {p["els_essay_id"]: (p["primary_grade"], p["confidence_label"],
                                    pytest.approx(p["confidence_score"], abs=1e-12),
                                    p["grade_scale"])
                for p in expected["projections"]} == projections
        assert (end_state(engine, batch_id)[:2]
                == (expected["upload"]["status"], expected["state"]))
        # The events this finalization wrote beside the ones upstream's wrote on its run.
        theirs = up.expected_outbox(batch_id)[-3:]  # upstream HEAD's three, in order
        ours = [r for r in _outbox(engine, batch_id) if r["published_at"] is None]
        wanted = ([t for t in theirs if t["event_type"] == "assessment.result.published"]
                  if batch_id == up.BATCH20_WEDGE else theirs)  # R1/R2: Batch 20 only a result
        assert [r["event_type"] for r in ours] == [t["event_type"] for t in wanted]
        for written, their in zip(ours, wanted, strict=True):
            assert (written["aggregate_id"], written["aggregate_type"], written["topic"],
                    written["event_key"]) == (their["aggregate_id"],
                                              AGGREGATE_TYPES[their["event_type"]],
                                              their["event_data"]["topic"],
                                              their["aggregate_id"])
            assert differences(their["event_data"], written["event_data"]) == []
            compared += leaves(their["event_data"])
    print(f"\nparity with upstream HEAD (batches 1, 7): max |delta BT| = {figures['bt']:.1e},"
          f" max |delta SE| = {figures['se']:.1e}, grades equal, {compared} payload fields"
          " equal")
    assert figures["bt"] < 1e-9 and figures["se"] < 1e-9


def _outbox(engine: Engine, batch_id: int) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        bos = conn.execute(text("SELECT bos_batch_id FROM cj_batch_uploads WHERE id = :id"),
                           {"id": batch_id}).scalar_one()
        rows = conn.execute(text(
            "SELECT event_type, aggregate_id, aggregate_type, topic, event_key, published_at,"
            " CAST(event_data AS text) AS data FROM event_outbox"
            " WHERE aggregate_id IN (:sid, :bos) ORDER BY created_at, event_type"),
            {"sid": str(batch_id), "bos": bos}).mappings().all()
    order = {"huleedu.cj_assessment.completed.v1": 0, "assessment.result.published": 1,
             "huleedu.resource.consumption.v1": 2}
    out = [{**r, "event_data": json.loads(r["data"])} for r in rows]
    return sorted(out, key=lambda r: (r["published_at"] is None, order[r["event_type"]]))


def test_se_reference_is_the_last_anchor_in_row_order_as_upstream_stored_it(
        fixture_db: up.UpstreamDb) -> None:
    """Upstream's own scores and SEs, stored for the batches its HEAD code scored (4, 5, 6 and
    the in-flight 8), are reproduced from the stored comparisons; the last anchor in sorted-id
    order as reference would not reproduce them (count printed)."""
    engine = fixture_db.engine
    wrong_with_sorted_ids = 0
    with engine.connect() as conn:
        for batch_id in (up.HEALTHY, up.ENG5_NATIONAL, up.NO_USER, up.IN_FLIGHT):
            essays = store.load_essays(conn, batch_id)
            stored = {r[0]: (r[1], r[2]) for r in conn.execute(text(
                "SELECT els_essay_id, current_bt_score, current_bt_se FROM cj_processed_essays"
                " WHERE cj_batch_id = :id"), {"id": batch_id})}
            outcomes = store.load_outcomes(conn, batch_id)
            anchors = [e.els_essay_id for e in essays if e.is_anchor]
            fit = bt.fit([e.els_essay_id for e in essays], anchors, outcomes)
            for essay, (score, se) in stored.items():
                assert score == pytest.approx(fit.scores[essay], abs=1e-9), (batch_id, essay)
                assert se == pytest.approx(fit.ses[essay], abs=1e-9), (batch_id, essay)
            by_id = bt.fit([e.els_essay_id for e in essays], sorted(anchors), outcomes)
            wrong_with_sorted_ids += any(abs(by_id.ses[e] - se) > 1e-9
                                         for e, (_, se) in stored.items())
    print(f"\nsorted-id reference would change the SEs of {wrong_with_sorted_ids} of 4 batches")
