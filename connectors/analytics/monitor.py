"""The monitor's windows (agents.monitor, through ports.MonitorReads). Probe traffic
never enters them: cold-start probes are slow by nature."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from connectors.analytics.common import PROBE_TENANT, number, span, when
from connectors.clickhouse import AnalyticsStore
from connectors.ports import AlertState, Measure, Moments, StageLoad, Window


class MonitorQueries:
    """Reads for the monitor: windows of telemetry and ratings, open incidents."""

    store: AnalyticsStore

    async def query_vectors(self, window: Window, n: int) -> np.ndarray:
        """Up to n query vectors embedded in the window, a stable sample (by trace id)."""
        rows = await self.store.query(
            f"""
            SELECT query_vector FROM telemetry
            WHERE stage = 'embedding' AND notEmpty(query_vector) AND {_SPAN} AND tenant != {{hide:String}}
            ORDER BY cityHash64(trace_id) LIMIT {{n:UInt32}}
            """,  # noqa: S608  (constant SQL; values are bound)
            {**span(window), "hide": PROBE_TENANT, "n": n},
        )
        return np.array([r[0] for r in rows.rows], dtype=np.float32)

    async def stage_moments(self, measure: Measure, window: Window, reference: Window) -> Moments:
        stage, value, valid, flag = _MEASURES[measure]
        sql = _MOMENTS.replace("VALUE", value).replace("VALID", valid).replace("FLAG", flag)
        parameters = {**span(window), **span(reference, "ref_"), "stage": stage, "hide": PROBE_TENANT}
        m = (await self.store.query(sql, parameters)).dicts()[0]
        return Moments(
            number(m["m"]),
            number(m["v"]),
            int(m["n"]),
            number(m["rm"]),
            number(m["rv"]),
            int(m["rn"]),
            int(m["total"]),
            int(m["ref_total"]),
            int(m["hits"] or 0),
            int(m["ref_hits"] or 0),
        )

    async def stage_loads(self, window: Window) -> list[StageLoad]:
        """Per query stage (indexing is not a request): events, errors, p95 latency."""
        rows = await self.store.query(
            f"""
            SELECT stage, count() AS n, countIf(status = 'error') AS errors, quantile(0.95)(latency_ms) AS p95
            FROM telemetry WHERE {_SPAN} AND stage != 'indexing' AND tenant != {{hide:String}}
            GROUP BY stage
            """,  # noqa: S608  (constant SQL; values bound)
            {**span(window), "hide": PROBE_TENANT},
        )
        return [StageLoad(r["stage"], int(r["n"]), int(r["errors"]), float(r["p95"])) for r in rows.dicts()]

    async def spend_by_tenant(self, day_of: datetime) -> dict[str, float]:
        """Each tenant's spend (USD) on the UTC day of `day_of`."""
        rows = await self.store.query(
            "SELECT tenant, sum(cost_usd) AS spent FROM cost_days "
            "WHERE day = toDate({end:DateTime64(3, 'UTC')}) AND tenant != {hide:String} GROUP BY tenant",
            {"end": when(day_of), "hide": PROBE_TENANT},
        )
        return {r["tenant"]: float(r["spent"]) for r in rows.dicts()}

    async def rating_moments(self, window: Window, reference: Window) -> dict[str, Moments]:
        """Per prompt version (`id@version`): user scores in the window and the reference."""
        rows = await self.store.query(
            """
            SELECT concat(template_id, '@', template_version) AS version,
                   avgIf(score, cur) AS m, varSampIf(score, cur) AS v, countIf(cur) AS n,
                   avgIf(score, NOT cur) AS rm, varSampIf(score, NOT cur) AS rv, countIf(NOT cur) AS rn
            FROM (
                SELECT template_id, template_version, score,
                       occurred_at >= {start:DateTime64(3, 'UTC')} AS cur
                FROM feedback FINAL
                WHERE trace_seen AND score IS NOT NULL AND name = 'user' AND tenant != {hide:String}
                  AND ((occurred_at >= {start:DateTime64(3, 'UTC')}
                        AND occurred_at < {end:DateTime64(3, 'UTC')})
                    OR (occurred_at >= {ref_start:DateTime64(3, 'UTC')}
                        AND occurred_at < {ref_end:DateTime64(3, 'UTC')}))
            )
            GROUP BY version
            """,
            {**span(window), **span(reference, "ref_"), "hide": PROBE_TENANT},
        )
        return {
            r["version"]: Moments(
                number(r["m"]),
                number(r["v"]),
                int(r["n"]),
                number(r["rm"]),
                number(r["rv"]),
                int(r["rn"]),
            )
            for r in rows.dicts()
        }

    async def alert_states(self) -> list[AlertState]:
        """Every incident's last event (to pick up open incidents after a restart)."""
        rows = await self.store.query(
            """
            SELECT alert_id, check_name, subject, argMax(event_type, occurred_at) AS last,
                   max(occurred_at) AS at
            FROM alerts GROUP BY alert_id, check_name, subject
            """
        )
        return [
            AlertState(
                r["alert_id"],
                r["check_name"],
                r["subject"],
                r["last"],
                datetime.fromisoformat(r["at"]).replace(tzinfo=UTC),
            )
            for r in rows.dicts()
        ]


_SPAN = "started_at >= {start:DateTime64(3, 'UTC')} AND started_at < {end:DateTime64(3, 'UTC')}"
_REF_SPAN = "started_at >= {ref_start:DateTime64(3, 'UTC')} AND started_at < {ref_end:DateTime64(3, 'UTC')}"

# Per side (the window: cur, the reference: NOT cur): moments of a value over the rows
# where it is defined, and a flag's count over all rows. VALUE, VALID and FLAG are
# expressions from _MEASURES; the stage and times are bound.
_MOMENTS = f"""
SELECT avgIf(x, cur AND valid) AS m, varSampIf(x, cur AND valid) AS v, countIf(cur AND valid) AS n,
       avgIf(x, NOT cur AND valid) AS rm, varSampIf(x, NOT cur AND valid) AS rv,
       countIf(NOT cur AND valid) AS rn,
       countIf(cur) AS total, countIf(NOT cur) AS ref_total,
       sumIf(flag, cur) AS hits, sumIf(flag, NOT cur) AS ref_hits
FROM (
    SELECT VALUE AS x, VALID AS valid, FLAG AS flag, ({_SPAN}) AS cur
    FROM telemetry
    WHERE stage = {{stage:String}} AND status = 'ok' AND tenant != {{hide:String}}
      AND (({_SPAN}) OR ({_REF_SPAN}))
)
"""  # noqa: S608  (constant SQL; values bound)

# measure: (stage, value, where the value is defined, flag)
_MEASURES: dict[str, tuple[str, str, str, str]] = {
    # The dense leg's top-1 similarity (whatever the mode fused), over searches that ran it
    # and found something; the flag: a search that found nothing.
    "retrieval": ("retrieval", "dense_scores[1]", "notEmpty(dense_scores)", "empty(passage_scores)"),
    "response": ("generation", "lengthUTF8(answer)", "1", "notEmpty(citations)"),
}
