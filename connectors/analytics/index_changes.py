"""Reading `index_changes` (the steps of `llmops reindex`) for `llmops reindex --status`."""

from __future__ import annotations

from typing import Any, Protocol

from connectors.clickhouse import Rows

RECENT = """
SELECT occurred_at, change_id, event_type, alias, source, target, encoder, source_encoder, actor,
       rows_done, rows_total, rows_per_s, source_score, target_score, margin, queries, passed, switch_ms
FROM index_changes FINAL
WHERE event_type != 'ReindexProgressed'
ORDER BY occurred_at DESC
LIMIT {limit:UInt32}
"""


class Reads(Protocol):
    async def query(self, sql: str, parameters: Any = None) -> Rows: ...


async def recent_changes(analytics: Reads, limit: int = 20) -> list[dict[str, Any]]:
    """The latest steps, newest first (progress rows left out)."""
    return (await analytics.query(RECENT, {"limit": limit})).dicts()
