"""The consumers' contracts shipped inside the package: byte-identical to the JSON Schemas the
project was given (exported from upstream's pydantic models), checked with formats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pytest

from exporter.upstream import contracts
from exporter.upstream import events as ev
from tests.support.paths import UPSTREAM

GIVEN = UPSTREAM / "contracts"
RELAYED = UPSTREAM / "fixtures" / "relayed_messages.jsonl"
TOPIC_TO_EVENT_TYPE = {ev.COMPLETED_EVENT: ev.COMPLETED_EVENT, ev.RESULT_TOPIC: ev.RESULT_EVENT,
                       ev.RESOURCE_EVENT: ev.RESOURCE_EVENT}


@pytest.mark.parametrize("event_type", sorted(contracts.SCHEMA_FILES))
def test_shipped_schemas_are_byte_identical_to_the_given_ones(event_type: str) -> None:
    given = GIVEN / contracts.SCHEMA_FILES[event_type]
    assert given.is_file(), f"missing {given}"
    assert contracts.schema_text(event_type) == given.read_bytes()


def test_every_message_schema_given_is_shipped() -> None:
    shipped = set(contracts.SCHEMA_FILES.values())
    assert {p.name for p in GIVEN.glob("message_*.schema.json")} == shipped
    package = Path(contracts.__file__).parent / "contracts"
    assert {p.name for p in package.iterdir()} == shipped


def relayed() -> list[tuple[str, dict[str, object]]]:
    out = []
    for line in RELAYED.read_text(encoding="utf-8").splitlines():
        msg = json.loads(line)
        out.append((TOPIC_TO_EVENT_TYPE[msg["topic"]], json.loads(msg["value"])))
    return out


def test_what_upstreams_relay_sent_is_valid_and_formats_are_checked() -> None:
    assert contracts.date_time_checked()
    messages = relayed()
    assert len(messages) == 28
    assert all(contracts.violations(t, m) == [] for t, m in messages)
    event_type, message = next((t, m) for t, m in messages if t == ev.RESOURCE_EVENT)
    # What JSON Schema's types accept but the consumers' pydantic rejects (contracts/README):
    for broken, field in (({**message, "event_id": "not-a-uuid"}, "event_id"),
                          ({**message, "event_timestamp": "2026-13-45T00:00:00Z"},
                           "event_timestamp"),
                          ({**message, "event_timestamp": "2026-12-01T18:00:00"},
                           "event_timestamp"),  # naive: RFC 3339 needs an offset
                          ({**message, "data": {**message["data"], "quantity": -1}},  # type: ignore[dict-item]
                           "data/quantity"),
                          ({**message, "data": {**message["data"], "processing_id": 1}},  # type: ignore[dict-item]
                           "data/processing_id")):
        problems = contracts.violations(event_type, broken)
        assert problems and problems[0].startswith(field), (field, problems)


def test_an_eng5_national_grade_has_no_valid_result() -> None:
    event_type, message = next((t, m) for t, m in relayed() if t == ev.RESULT_EVENT)
    data = dict(cast(dict[str, Any], message["data"]))
    data["essay_results"] = [{**data["essay_results"][0], "letter_grade": "9"}]
    problems = contracts.violations(event_type, {**message, "data": data})
    assert problems == ["data/essay_results/0/letter_grade: '9' does not match"
                        " '^([A-F][+-]?|U)$'"]


def test_an_event_type_without_a_contract_is_reported() -> None:
    assert contracts.violations("huleedu.cj_assessment.failed.v1", {}) == [
        "no contract for event type 'huleedu.cj_assessment.failed.v1'"]
