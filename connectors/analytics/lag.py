"""Consumer lag samples: the lag watch's write (agents.lag, through ports.LagWrites) and
the report's read."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from connectors.analytics.common import when
from connectors.clickhouse import AnalyticsStore, Rows
from connectors.ports import PartitionLag
from schemas import utc_now


class LagQueries:
    store: AnalyticsStore

    async def store_lag(self, sampled_at: datetime, rows: Sequence[PartitionLag]) -> None:
        await self.store.insert(
            "consumer_lag",
            [
                {
                    "sampled_at": sampled_at,
                    "group_id": r.group,
                    "stage": r.stage,
                    "topic": r.topic,
                    "partition": r.partition,
                    "end_offset": r.end,
                    "committed_offset": r.committed,
                    "lag": r.lag,
                }
                for r in rows
            ],
        )

    async def lag(self, since: timedelta) -> Rows:
        """Per stage, from the last sample in the window: partitions, total lag and the
        most behind partition's lag; and the largest total lag of any sample in it."""
        return await self.store.query(
            """
            SELECT stage, argMax(partitions, sampled_at) AS partitions,
                   argMax(total, sampled_at) AS total_lag, argMax(largest, sampled_at) AS max_lag,
                   max(total) AS peak_lag, max(sampled_at) AS last_sample
            FROM (
                SELECT sampled_at, stage, count() AS partitions, sum(lag) AS total, max(lag) AS largest
                FROM consumer_lag WHERE sampled_at >= {since:DateTime64(3, 'UTC')}
                GROUP BY sampled_at, stage
            )
            GROUP BY stage ORDER BY stage
            """,
            {"since": when(utc_now() - since)},
        )
