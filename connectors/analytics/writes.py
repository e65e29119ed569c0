"""The writes: the sinks' idempotent insert (agents.sink, through ports.SinkWrites) and
feedback linking (agents.feedback, through ports.FeedbackLinks)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from connectors.clickhouse import AnalyticsStore, checked_table
from connectors.ports import TraceFacts


class StoreWrites:
    """Inserts that skip what is stored, and the feedback links."""

    store: AnalyticsStore

    # --- feedback linking (agents.feedback, through ports.FeedbackLinks) ---------------

    async def trace_facts(self, trace_ids: Sequence[str]) -> dict[tuple[str, str], TraceFacts]:
        """What served each of these traces, by (trace id, tenant)."""
        found = await self.store.query(_TRACE_FACTS, {"traces": sorted(set(trace_ids))})
        return {
            (r["trace_id"], r["tenant"]): TraceFacts(r["template_id"], r["template_version"], r["model"])
            for r in found.dicts()
        }

    async def link_feedback(self, trace_ids: Sequence[str], settle_s: int) -> None:
        """Link unlinked feedback whose trace has arrived: of these traces, or of every
        trace when none is named; only feedback stored at least `settle_s` ago."""
        await self.store.command(_LINK, {"traces": sorted(trace_ids), "settle_s": settle_s})

    # --- the sinks' write (agents.sink, through ports.SinkWrites) -----------------------

    async def insert_new(
        self, table: str, rows: Sequence[Mapping[str, Any]], key: str = "trace_id"
    ) -> list[Mapping[str, Any]]:
        """Insert the rows whose event_id the table does not hold yet; returns them. `key`:
        the column the table's primary key starts with (the lookup reads by it)."""
        unique = list({row["event_id"]: row for row in rows}.values())
        if not unique:
            return []
        held = await self.store.query(
            f"SELECT event_id FROM {checked_table(table)} "  # noqa: S608  (checked names; values are bound)
            f"WHERE {checked_table(key)} IN {{keys:Array(String)}} AND event_id IN {{ids:Array(String)}}",
            {"keys": sorted({r[key] for r in unique}), "ids": [r["event_id"] for r in unique]},
        )
        seen = {row[0] for row in held.rows}
        fresh = [row for row in unique if row["event_id"] not in seen]
        await self.store.insert(table, fresh)
        return fresh


# A trace's prompt version and model, from its telemetry; per tenant, so feedback never
# links to another tenant's trace. SOURCE is the set of trace ids to look at.
_FACTS = """
SELECT trace_id, tenant,
       anyIf(template_id, template_id != '') AS template_id,
       anyIf(template_version, template_version != '') AS template_version,
       anyIf(model, stage = 'generation') AS model
FROM telemetry
WHERE trace_id IN SOURCE
GROUP BY trace_id, tenant
"""
_TRACE_FACTS = _FACTS.replace("SOURCE", "{traces:Array(String)}")

# Re-insert unlinked feedback whose trace has arrived, linked, with a higher revision.
# The rollup's view counts only linked rows, so each rating is counted once, when linked.
_UNLINKED = "(SELECT trace_id FROM feedback FINAL WHERE NOT trace_seen)"
_LINK = f"""
INSERT INTO feedback (event_id, trace_id, tenant, occurred_at, name, data_type, score, category,
                      comment, user, trace_seen, template_id, template_version, model, revision)
SELECT f.event_id, f.trace_id, f.tenant, f.occurred_at, f.name, f.data_type, f.score, f.category,
       f.comment, f.user, true, t.template_id, t.template_version, t.model, f.revision + 1
FROM (
    SELECT * FROM feedback FINAL
    WHERE NOT trace_seen
      AND (empty({{traces:Array(String)}}) OR trace_id IN {{traces:Array(String)}})
      AND stored_at <= now64(3) - toIntervalSecond({{settle_s:UInt32}})
) AS f
INNER JOIN ({_FACTS.replace("SOURCE", _UNLINKED)}) AS t ON f.trace_id = t.trace_id AND f.tenant = t.tenant
"""  # noqa: S608  (constants only; no value is spliced in)
