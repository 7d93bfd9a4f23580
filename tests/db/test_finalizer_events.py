"""What the finalizer's events carry on the demo's batches: the model attribution and its
configured defaults, the database's clock, and every event the demo plants or the finalizer
writes against the consumers' contracts."""

from __future__ import annotations

import json
import types
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text

from exporter.demo.scenarios import BatchSpec
from exporter.finalizer import events as fevents
from exporter.finalizer.refinalize import refinalize
from exporter.upstream import contracts
from exporter.vocabulary import APPLIED
from tests.support.database import SeededDb
from tests.support.remediation import RemediationDb, events_of


def stuck(db: RemediationDb) -> int:
    return db.seed(BatchSpec(status="FETCHING_CONTENT", state="SCORING", finished=False,
                             idle=timedelta(hours=1)))


def set_models(engine: Engine, batch_id: int, models: list[str | None]) -> None:
    """Give the batch's comparisons these models, in the comparisons' id order. The UPDATEs
    run one by one in that order, so the row (ctid) order afterwards is this order too."""
    with engine.begin() as conn:
        ids = conn.execute(text("SELECT id FROM cj_comparison_pairs WHERE cj_batch_id = :b"
                                " ORDER BY id"), {"b": batch_id}).scalars().all()
        for pair_id, model in zip(ids, models, strict=False):
            meta = json.dumps({"provider": "openai", "model": model}) if model else None
            conn.execute(text("UPDATE cj_comparison_pairs SET processing_metadata ="
                              " CAST(:m AS json) WHERE id = :id"), {"m": meta, "id": pair_id})


def result_of(engine: Engine, batch_id: int) -> dict[str, Any]:
    (row,) = events_of(engine, batch_id)["result"]
    data: dict[str, Any] = row["data"]["data"]
    return data


def test_a_tie_goes_to_the_model_met_first_in_row_order(remediation_db: RemediationDb) -> None:
    engine = remediation_db.engine
    bid = stuck(remediation_db)
    # 30 comparisons: 10 "zeta" first, then 10 "alpha", then 10 without a model. Alphabetical
    # order (the old tie-break) would pick alpha.
    set_models(engine, bid, ["zeta"] * 10 + ["alpha"] * 10 + [None] * 10)
    with engine.begin() as conn:  # more of a third model, but on errored comparisons only
        conn.execute(text(
            "INSERT INTO cj_comparison_pairs (cj_batch_id, essay_a_els_id, essay_b_els_id,"
            " prompt_text, winner, error_code, processing_metadata)"
            " SELECT cj_batch_id, essay_a_els_id, essay_b_els_id, 'p', 'error', 'TIMEOUT',"
            " CAST('{\"provider\": \"openai\", \"model\": \"errored\"}' AS json)"
            " FROM cj_comparison_pairs WHERE cj_batch_id = :b"), {"b": bid})
    assert refinalize(engine, bid, replica="test", dry_run=False).outcome == APPLIED
    result = result_of(engine, bid)
    assert (result["model_provider"], result["model_used"]) == ("openai", "zeta")
    assert result["model_version"] is None


def test_no_usable_model_falls_back_to_the_configured_defaults(
        remediation_db: RemediationDb) -> None:
    engine = remediation_db.engine
    default_bid, configured_bid = stuck(remediation_db), stuck(remediation_db)
    for bid in (default_bid, configured_bid):
        set_models(engine, bid, [None] * 30)
    assert refinalize(engine, default_bid, replica="t", dry_run=False).outcome == APPLIED
    configured = fevents.Defaults(model="claude-x", provider="anthropic", temperature=0.3)
    assert refinalize(engine, configured_bid, replica="t", dry_run=False,
                      defaults=configured).outcome == APPLIED
    first, second = result_of(engine, default_bid), result_of(engine, configured_bid)
    assert (first["model_provider"], first["model_used"]) == ("openai", "gpt-5.1")
    assert first["assessment_metadata"]["llm_temperature"] == 0.1
    assert (second["model_provider"], second["model_used"]) == ("anthropic", "claude-x")
    assert second["assessment_metadata"]["llm_temperature"] == 0.3


def test_single_essay_batch_and_the_normalized_scores() -> None:
    assert fevents.GRADE_TO_NORMALIZED["C+"] == 0.67 and fevents.GRADE_TO_NORMALIZED["D+"] == 0.47
    assert fevents.GRADE_TO_NORMALIZED["E-"] == 0.13 and fevents.GRADE_TO_NORMALIZED["U"] == 0.0
    assert fevents.GRADE_TO_NORMALIZED.get("9", 0.0) == 0.0


def test_single_essay_batch_is_true_exactly_with_one_student(
        remediation_db: RemediationDb) -> None:
    engine = remediation_db.engine
    one = remediation_db.seed(BatchSpec(status="FETCHING_CONTENT", state="SCORING", students=1,
                                        finished=False, anchor_grades=("C", "A")))
    six = stuck(remediation_db)
    for bid, single in ((one, True), (six, False)):
        assert refinalize(engine, bid, replica="t", dry_run=False).outcome == APPLIED
        (row,) = events_of(engine, bid)["completed"]
        assert row["data"]["data"]["processing_summary"]["single_essay_batch"] is single


class _SkewedClock(datetime):
    """A host clock 20 years off: nothing the finalizer writes may come from it."""

    @classmethod
    def now(cls, tz: Any = None) -> Any:
        return datetime(2006, 1, 2, 3, 4, 5, tzinfo=tz or UTC)

    @classmethod
    def utcnow(cls) -> Any:
        return datetime(2006, 1, 2, 3, 4, 5)


def test_every_time_written_comes_from_the_database_clock(
        remediation_db: RemediationDb, monkeypatch: pytest.MonkeyPatch) -> None:
    import exporter.finalizer as package

    for module in list(vars(package).values()):
        if isinstance(module, types.ModuleType) and hasattr(module, "datetime"):
            monkeypatch.setattr(module, "datetime", _SkewedClock)
    import exporter.upstream.events as upstream_events

    monkeypatch.setattr(upstream_events, "datetime", _SkewedClock)
    engine = remediation_db.engine
    bid = stuck(remediation_db)
    with engine.connect() as conn:
        started = conn.execute(text("SELECT now()")).scalar_one()
    assert refinalize(engine, bid, replica="t", dry_run=False).outcome == APPLIED
    with engine.connect() as conn:
        ended = conn.execute(text("SELECT now()")).scalar_one()
        state_at = conn.execute(text("SELECT last_activity_at FROM cj_batch_states"
                                     " WHERE batch_id = :b"), {"b": bid}).scalar_one()
        upload = conn.execute(text("SELECT completed_at, updated_at FROM cj_batch_uploads"
                                   " WHERE id = :b"), {"b": bid}).one()
        outbox = conn.execute(text("SELECT created_at FROM event_outbox WHERE published_at"
                                   " IS NULL AND event_type <> 'huleedu.cj_assessment.failed.v1'"
                                   )).scalars().all()
    assert started <= state_at <= ended
    assert upload[0].replace(tzinfo=UTC) == upload[1].replace(tzinfo=UTC) == state_at
    assert set(outbox) == {state_at} and len(outbox) == 3
    for rows in events_of(engine, bid).values():
        stamp = datetime.fromisoformat(rows[0]["data"]["event_timestamp"])
        assert stamp == state_at


def all_events(engine: Engine) -> list[tuple[str, dict[str, Any]]]:
    with engine.connect() as conn:
        return [(t, json.loads(d)) for t, d in conn.execute(text(
            "SELECT event_type, CAST(event_data AS text) FROM event_outbox"
            " WHERE event_type = ANY(:types)"), {"types": list(contracts.SCHEMA_FILES)})]


def test_every_event_the_demo_plants_validates(seeded_db: SeededDb) -> None:
    from sqlalchemy import create_engine

    engine = create_engine(seeded_db.url)
    try:
        planted = all_events(engine)
        with engine.connect() as conn:
            others = conn.execute(text("SELECT DISTINCT event_type FROM event_outbox WHERE NOT"
                                       " (event_type = ANY(:t))"),
                                  {"t": list(contracts.SCHEMA_FILES)}).scalars().all()
    finally:
        engine.dispose()
    assert len(planted) > 250  # every finalized scenario, the runaway's 83 runs included
    assert others == ["huleedu.cj_assessment.failed.v1"]  # the backlog: no contract given
    for event_type, data in planted:
        assert contracts.violations(event_type, data) == [], (event_type, data)


def test_every_event_the_finalizer_writes_on_the_demo_validates(
        remediation_db: RemediationDb) -> None:
    engine = remediation_db.engine
    wedged = [remediation_db.batch("wedged"), remediation_db.batch("stuck_scoring")]
    before = len(all_events(engine))
    for bid in wedged:
        assert refinalize(engine, bid, replica="t", dry_run=False).outcome == APPLIED
    found = all_events(engine)
    assert len(found) == before + 1 + 3  # Batch 20: one corrected result; stuck: all three
    for event_type, data in found:
        assert contracts.violations(event_type, data) == [], (event_type, data)
