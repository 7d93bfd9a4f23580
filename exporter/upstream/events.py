"""Outbox rows shaped as the CJ service writes them (docs/design.md §F6).

Used by the demo scenarios (to plant what upstream wrote) and by the finalizer (to write the
completion events upstream would have written). Kept in one place so both agree on event types,
aggregates and the envelope shape.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, text

COMPLETED_EVENT = "huleedu.cj_assessment.completed.v1"
RESULT_EVENT = "assessment.result.published"
RESULT_TOPIC = "huleedu.assessment.result.published.v1"
RESOURCE_EVENT = "huleedu.resource.consumption.v1"
SOURCE_SERVICE = "cj_assessment_service"


@dataclass(frozen=True)
class OutboxRow:
    aggregate_id: str
    aggregate_type: str
    event_type: str
    topic: str
    envelope: dict[str, Any]


def timestamp(at: datetime) -> str:
    """A UTC instant as pydantic v2 serialises it in JSON mode (the envelope is a pydantic
    model upstream): ISO 8601 with a 'Z' suffix."""
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def envelope(
    event_type: str, topic: str, correlation_id: str, data: Mapping[str, Any], at: datetime
) -> dict[str, Any]:
    """The serialized EventEnvelope plus the `topic` key the outbox library adds.

    `event_type` is what the envelope carries: upstream puts the topic string there for all
    three completion events, while the outbox row's event_type column may differ (result).
    """
    return {
        "event_id": str(uuid.uuid4()),
        "event_type": event_type,
        "event_timestamp": timestamp(at),
        "source_service": SOURCE_SERVICE,
        "schema_version": 1,
        "correlation_id": correlation_id,
        "data_schema_uri": None,
        "data": dict(data),
        "metadata": {},
        "topic": topic,
    }


def completion_row(
    cj_batch_id: int, bos_batch_id: str, correlation_id: str, summary: Mapping[str, Any],
    at: datetime, status: str = "completed_successfully", started_at: datetime | None = None,
) -> OutboxRow:
    """Thin completion event to ELS (CJAssessmentCompletedV1): aggregate cj_batch/bos_batch_id."""
    data: dict[str, Any] = {
        "event_name": "cj_assessment.completed",
        "entity_id": bos_batch_id,
        "entity_type": "batch",
        "parent_id": None,
        "timestamp": timestamp(at),
        "status": status,
        "system_metadata": {
            "entity_id": bos_batch_id,
            "entity_type": "batch",
            "parent_id": None,
            "timestamp": timestamp(at),
            "processing_stage": "completed",
            "started_at": timestamp(started_at) if started_at else None,
            "completed_at": timestamp(at),
            "event": "cj_assessment.completed",
            "error_info": {},
        },
        "cj_assessment_job_id": str(cj_batch_id),
        "processing_summary": dict(summary),
    }
    return OutboxRow(
        bos_batch_id, "cj_batch", COMPLETED_EVENT, COMPLETED_EVENT,
        envelope(COMPLETED_EVENT, COMPLETED_EVENT, correlation_id, data, at),
    )


def result_row(
    cj_batch_id: int, bos_batch_id: str, correlation_id: str, result: Mapping[str, Any],
    at: datetime,
) -> OutboxRow:
    """Rich result to RAS (AssessmentResultV1): the outbox event_type is not the topic string
    (the envelope's is); aggregate assessment_result / the CJ batch id.

    `result` follows the identifying fields in upstream's order: HEAD's starts with the
    top-level `assignment_id` (RAS reads it there); the pre-fix code's had none."""
    data = {
        "event_name": RESULT_EVENT,
        "entity_id": bos_batch_id,
        "entity_type": "batch",
        "parent_id": None,
        "timestamp": timestamp(at),
        "batch_id": bos_batch_id,
        "cj_assessment_job_id": str(cj_batch_id),
        **result,
    }
    return OutboxRow(
        str(cj_batch_id), "assessment_result", RESULT_EVENT, RESULT_TOPIC,
        envelope(RESULT_TOPIC, RESULT_TOPIC, correlation_id, data, at),
    )


def resource_row(
    bos_batch_id: str, correlation_id: str, user_id: str, org_id: str | None, quantity: int,
    at: datetime, *, processing_id: str,
) -> OutboxRow:
    """Credits consumed (ResourceConsumptionV1): aggregate resource_consumption/bos_batch_id.

    processing_id is the CJ batch id, `str(cj_batch_uploads.id)`, as upstream sets it (pre-fix
    and HEAD alike): the one key a charge can be attributed to a run by (R1).
    """
    data = {
        "event_name": "resource.consumption.reported",
        "entity_id": bos_batch_id,
        "entity_type": "batch",
        "parent_id": None,
        "timestamp": timestamp(at),
        "user_id": user_id,
        "org_id": org_id,
        "resource_type": "cj_comparison",
        "quantity": quantity,
        "service_name": SOURCE_SERVICE,
        "processing_id": processing_id,
        "consumed_at": timestamp(at),
    }
    return OutboxRow(
        bos_batch_id, "resource_consumption", RESOURCE_EVENT, RESOURCE_EVENT,
        envelope(RESOURCE_EVENT, RESOURCE_EVENT, correlation_id, data, at),
    )


_INSERT = text(
    "INSERT INTO event_outbox (id, aggregate_id, aggregate_type, event_type, event_data,"
    " event_key, topic, created_at, published_at, retry_count, last_error)"
    " VALUES (:id, :aggregate_id, :aggregate_type, :event_type, CAST(:event_data AS json),"
    " :aggregate_id, :topic, :created_at, :published_at, :retry_count, :last_error)"
)


def insert_row(
    conn: Connection, row: OutboxRow, created_at: datetime,
    published_at: datetime | None = None, retry_count: int = 0, last_error: str | None = None,
) -> None:
    """Insert one outbox row; event_key = aggregate_id as the outbox library does."""
    conn.execute(
        _INSERT,
        {
            "id": str(uuid.uuid4()),
            "aggregate_id": row.aggregate_id,
            "aggregate_type": row.aggregate_type,
            "event_type": row.event_type,
            "event_data": json.dumps(row.envelope),
            "topic": row.topic,
            "created_at": created_at,
            "published_at": published_at,
            "retry_count": retry_count,
            "last_error": last_error,
        },
    )
