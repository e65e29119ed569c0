"""The index-changes sink's rows: every step of a re-index (`llmops reindex`) as one row of
`index_changes`, so who switched which collection, when and with which scores is kept
beside the rest of the analytics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from schemas.codec import decode_kind
from schemas.indexes import KINDS, IndexChange

STAGE = "index-changes-sink"


def decode_change(data: bytes | None) -> IndexChange:
    """An index-change event as its own kind (its `event_type` says which)."""
    return decode_kind(data, KINDS, "an index change")


def change_row(event: IndexChange) -> dict[str, Any]:
    fields = event.model_dump()
    return {
        "event_id": event.event_id,
        "change_id": event.change_id,
        "event_type": type(event).__name__,
        "occurred_at": event.occurred_at,
        "alias": event.alias,
        "source": event.source,
        "target": event.target,
        "encoder": event.encoder,
        "source_encoder": event.source_encoder,
        "actor": event.actor,
        "rows_done": fields.get("rows_done"),
        "rows_total": fields.get("rows_total"),
        "rows_per_s": fields.get("rows_per_s"),
        "metric": fields.get("metric", ""),
        "source_score": fields.get("source_score"),
        "target_score": fields.get("target_score"),
        "margin": fields.get("margin"),
        "queries": fields.get("queries"),
        "passed": fields.get("passed"),
        "switch_ms": fields.get("switch_ms"),
        "message": event.message,
    }


async def rows(_: object, events: Sequence[IndexChange]) -> list[dict[str, Any]]:
    return [change_row(e) for e in events]
