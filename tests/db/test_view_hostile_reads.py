"""The documents the view reads for issues 11 and 16 (the upload's request, the last result event,
the charges, the anchors' metadata) under a document PostgreSQL stores but ->/->> cannot read:
no error, the document counted as unreadable, its facts unknown (never a problem invented from
it), and every other batch as before (sql/views/cj_health_json.sql)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import Connection, text

from exporter.demo.scenarios import GRADES, BatchSpec, Seeder
from exporter.upstream import events as ev
from exporter.vocabulary import PROBLEM_COLUMNS

NUL = '"pasted\\u0000text"'  # what json.dumps writes for a NUL character


def row(conn: Connection, batch: int) -> dict[str, Any]:
    return dict(conn.execute(text("SELECT * FROM cj_batch_health WHERE cj_batch_id = :b"),
                             {"b": batch}).mappings().one())


def problems(r: dict[str, Any]) -> set[str]:
    return {p for p, column in PROBLEM_COLUMNS.items() if r[column]}


def poison_events(conn: Connection, batch: int, event_type: str) -> None:
    """Every event of the type for the batch gets a NUL in a string of its data."""
    conn.execute(text(
        "UPDATE event_outbox SET event_data = CAST(replace(event_data::text,"
        " '\"data\": {', '\"data\": {\"note\": ' || :nul || ', ') AS json)"
        " WHERE event_type = :t AND (aggregate_id = :id OR aggregate_id ="
        " (SELECT bos_batch_id FROM cj_batch_uploads WHERE id = CAST(:id AS integer)))"),
        {"nul": NUL, "t": event_type, "id": str(batch)})


def test_an_unreadable_upload_request_is_counted_and_compares_nothing(conn: Connection) -> None:
    seeder = Seeder(conn)
    batch = seeder.insert_batch(BatchSpec(status="FETCHING_CONTENT", state="WAITING_CALLBACKS",
                                          completed=10, finished=False,
                                          request={"max_comparisons_override": 30}))
    healthy = seeder.insert_batch(BatchSpec(completion_runs=1))
    before = row(conn, healthy)
    request = json.dumps({"original_request": {"language": "sv", "user_id": "x"}})
    conn.execute(text("UPDATE cj_batch_uploads SET processing_metadata = CAST(:m AS json)"
                      " WHERE id = :b"), {"m": request.replace('"x"', NUL), "b": batch})
    r = row(conn, batch)
    assert r["unreadable_upload_documents"] == 1
    assert r["rehydration_mismatched_fields"] is None and problems(r) == set()
    assert row(conn, healthy) == {**before, "state_age_seconds": row(conn, healthy)[
        "state_age_seconds"]}


def test_an_unreadable_result_event_is_never_judged_wrong(conn: Connection) -> None:
    batch = Seeder(conn).insert_batch(BatchSpec(anchor_grades=GRADES, projections=True,
                                                completion_runs=1, prefix_events=True))
    assert "wrong_result" in problems(row(conn, batch))  # readable: the pre-fix result
    poison_events(conn, batch, ev.RESULT_EVENT)
    r = row(conn, batch)
    assert r["unreadable_result_events"] == 1 and r["result_events"] == 1
    assert r["result_students"] == 0 and problems(r) == set()


def test_unreadable_charges_are_counted_and_leave_the_run_not_unbilled(
        conn: Connection) -> None:
    batch = Seeder(conn).insert_batch(BatchSpec(completion_runs=2))
    assert problems(row(conn, batch)) == {"duplicate_completion", "duplicate_charge"}
    poison_events(conn, batch, ev.RESOURCE_EVENT)
    r = row(conn, batch)
    assert (r["unreadable_charge_events"], r["charge_events"], r["resource_events"]) == (2, 0, 2)
    assert problems(r) == {"duplicate_completion"}  # a charge it cannot read is not "unbilled"
    charges = conn.execute(text(
        "SELECT count(*) FILTER (WHERE unreadable), count(*) FILTER (WHERE run_charges > 1)"
        " FROM cj_charge_events")).one()
    assert tuple(charges) == (2, 0)  # never merged into a duplicate


@pytest.mark.parametrize("quantity", ["1e200000", "-3", "2.5", '"7"', "null", "[]"])
def test_a_charge_whose_quantity_the_contract_forbids_is_listed_with_it_unknown(
        conn: Connection, quantity: str) -> None:
    """1e200000 is valid JSON that overflows numeric: a cast of it failed the whole view (and
    the charges command with it)."""
    batch = Seeder(conn).insert_batch(BatchSpec(completion_runs=2))
    conn.execute(text(
        # on the text: jsonb would refuse 1e200000 (json, the outbox's type, keeps it)
        "UPDATE event_outbox SET event_data = CAST(regexp_replace(event_data::text,"
        " '\"quantity\": *[^,}]*', '\"quantity\": ' || :q) AS json) WHERE event_type = :t"
        " AND aggregate_id = (SELECT bos_batch_id FROM cj_batch_uploads WHERE id = :b)"),
        {"q": quantity, "t": ev.RESOURCE_EVENT, "b": batch})
    charges = conn.execute(text(
        "SELECT quantity, run_charges FROM cj_charge_events WHERE cj_batch_id = :b"),
        {"b": batch}).all()
    assert [tuple(c) for c in charges] == [(None, 2), (None, 2)]  # still a duplicate charge
    assert "duplicate_charge" in problems(row(conn, batch))


def test_an_anchor_with_an_unreadable_document_is_unknown_not_unresolved(
        conn: Connection) -> None:
    batch = Seeder(conn).insert_batch(BatchSpec(
        status="FETCHING_CONTENT", state="WAITING_CALLBACKS", completed=10, finished=False,
        anchor_grades=GRADES))
    conn.execute(text(
        "UPDATE cj_processed_essays SET processing_metadata = CAST("
        "'{\"is_anchor\": true, \"known_grade\": ' || :nul || '}' AS json)"
        " WHERE els_essay_id = (SELECT min(els_essay_id) FROM cj_processed_essays"
        "  WHERE cj_batch_id = :b AND is_anchor)"), {"nul": NUL, "b": batch})
    r = row(conn, batch)
    assert r["unreadable_essay_documents"] == 1
    assert (r["anchors_by_known_grade"], r["anchors_unresolved"]) == (4, 0)
    assert problems(r) == set()
