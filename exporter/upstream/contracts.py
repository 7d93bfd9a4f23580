"""The consumers' contracts: JSON Schemas (2020-12) of the three completion messages.

The files in `contracts/` are data, not code: `message_*.schema.json` exported from the CJ
service's pydantic models (the envelope with `data` typed by the event's class, i.e. what a
consumer enforces after its two-phase parse). They ship inside the package because the
finalizer runs from an installed wheel; tests/unit/test_contracts.py holds them byte-identical
to the copies the project was given.

Validation checks formats (`uuid`, `date-time` through rfc3339-validator): without a format
checker a malformed UUID or date passes JSON Schema but fails the consumer. A stored
`event_outbox.event_data` carries an extra `topic` key; the envelope schema ignores unknown
keys, as pydantic does. jsonschema is imported on first use only: the exporter core never
needs it (it belongs to the `remediation` extra).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

from exporter.upstream.events import COMPLETED_EVENT, RESOURCE_EVENT, RESULT_EVENT

# outbox event_type -> the message schema its consumer holds it to
SCHEMA_FILES: Mapping[str, str] = {
    COMPLETED_EVENT: "message_cj_assessment_completed_v1.schema.json",
    RESULT_EVENT: "message_assessment_result_v1.schema.json",
    RESOURCE_EVENT: "message_resource_consumption_v1.schema.json",
}


def schema_text(event_type: str) -> bytes:
    """The shipped schema file's bytes (for the byte-identity test and for loading)."""
    return (resources.files("exporter.upstream") / "contracts" / SCHEMA_FILES[event_type]
            ).read_bytes()


@cache
def _validator(event_type: str) -> Any:
    from jsonschema import Draft202012Validator

    schema = json.loads(schema_text(event_type))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def date_time_checked() -> bool:
    """True when the format checker really checks `date-time` (rfc3339-validator present);
    jsonschema silently treats an uncheckable format as valid."""
    from jsonschema import Draft202012Validator

    return "date-time" in Draft202012Validator.FORMAT_CHECKER.checkers


def violations(event_type: str, envelope: Mapping[str, Any]) -> list[str]:
    """Why `envelope` (one outbox row's event_data) fails its consumer's contract; [] if valid.

    An event type without a contract here (e.g. the failure event) is reported as such: the
    finalizer never writes one.
    """
    if event_type not in SCHEMA_FILES:
        return [f"no contract for event type {event_type!r}"]
    if not date_time_checked():
        return ["rfc3339-validator is not installed: date-time formats cannot be checked"]
    errors = sorted(_validator(event_type).iter_errors(dict(envelope)),
                    key=lambda e: list(e.absolute_path))
    return [_describe(e) for e in errors]


def _describe(error: Any) -> str:
    path = "/".join(str(p) for p in error.absolute_path) or "(message)"
    return f"{path}: {error.message}"
