"""The named queries behind `llmops report`, `llmops trace` and the HTML page."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from connectors.analytics.common import report_window, when
from connectors.clickhouse import AnalyticsStore, Rows
from schemas import utc_now

# Latency states over the window: the first partial hour from stage_minutes, whole hours
# (and the current one) from stage_hours. Parameters: since, tenant.
_STAGE_STATES = """
    SELECT stage, events, errors, latency, minute AS t0 FROM stage_minutes
    WHERE minute >= toStartOfMinute({since:DateTime64(3, 'UTC')})
      AND minute < toStartOfHour({since:DateTime64(3, 'UTC')}) + toIntervalHour(1)
      AND (empty({tenant:String}) OR tenant = {tenant:String}) AND tenant != {hide:String}
    UNION ALL
    SELECT stage, events, errors, latency, hour AS t0 FROM stage_hours
    WHERE hour >= toStartOfHour({since:DateTime64(3, 'UTC')}) + toIntervalHour(1)
      AND (empty({tenant:String}) OR tenant = {tenant:String}) AND tenant != {hide:String}
"""


class ReportQueries:
    """Reads for reports: latency, cost, feedback, slow traces, alerts, one trace, arms."""

    store: AnalyticsStore

    async def latency(self, since: timedelta, tenant: str = "", probes: bool = False) -> Rows:
        """Per stage: events, errors, error rate and p50/p95/p99 latency (ms). Whole hours
        come from the hourly rollup, the window's first partial hour from the per-minute
        one, so the cost stays flat as windows and traffic grow."""
        return await self.store.query(
            f"""
            SELECT stage, sum(events) AS events, sum(errors) AS errors,
                   round(errors / events, 4) AS error_rate,
                   arrayMap(x -> round(x, 2), quantilesBFloat16Merge(0.5, 0.95, 0.99)(latency)) AS q
            FROM ({_STAGE_STATES})
            GROUP BY stage ORDER BY stage
            """,  # noqa: S608  (constant SQL; values are bound)
            report_window(since, tenant, probes),
        )

    async def extent(
        self, since: timedelta, tenant: str = "", probes: bool = False
    ) -> tuple[str, str] | None:
        """First and last minute with telemetry in the window, or None."""
        rows = await self.store.query(
            """
            SELECT min(minute), max(minute), count() FROM stage_minutes
            WHERE minute >= toStartOfMinute({since:DateTime64(3, 'UTC')})
              AND (empty({tenant:String}) OR tenant = {tenant:String}) AND tenant != {hide:String}
            """,
            report_window(since, tenant, probes),
        )
        first, last, count = rows.rows[0]
        return (first, last) if count else None

    async def latency_over_time(
        self, since: timedelta, bucket_s: int = 60, tenant: str = "", probes: bool = False
    ) -> Rows:
        """Per time bucket and query stage: p50, p95 and p99 latency (ms) and events.
        Buckets of an hour or more come from the hourly rollup, of a minute or more from
        the per-minute one, shorter ones (a window holding a few minutes of data) from
        the raw table."""
        if bucket_s >= 3600:
            sql = f"""
            SELECT toStartOfInterval(t0, toIntervalSecond({{bucket:UInt32}})) AS t, stage,
                   quantilesBFloat16Merge(0.5, 0.95, 0.99)(latency) AS q, sum(events) AS events
            FROM ({_STAGE_STATES})
            WHERE stage != 'indexing'
            GROUP BY t, stage ORDER BY t, stage
            """  # noqa: S608  (constant SQL; values are bound)
        elif bucket_s >= 60:
            sql = """
            SELECT toStartOfInterval(minute, toIntervalSecond({bucket:UInt32})) AS t, stage,
                   quantilesBFloat16Merge(0.5, 0.95, 0.99)(latency) AS q, sum(events) AS events
            FROM stage_minutes
            WHERE minute >= toStartOfMinute({since:DateTime64(3, 'UTC')}) AND stage != 'indexing'
              AND (empty({tenant:String}) OR tenant = {tenant:String}) AND tenant != {hide:String}
            GROUP BY t, stage ORDER BY t, stage
            """
        else:
            sql = """
            SELECT toStartOfInterval(started_at, toIntervalSecond({bucket:UInt32})) AS t, stage,
                   quantiles(0.5, 0.95, 0.99)(latency_ms) AS q, count() AS events
            FROM telemetry
            WHERE started_at >= {since:DateTime64(3, 'UTC')} AND stage != 'indexing'
              AND (empty({tenant:String}) OR tenant = {tenant:String}) AND tenant != {hide:String}
            GROUP BY t, stage ORDER BY t, stage
            """
        return await self.store.query(
            sql, {**report_window(since, tenant, probes), "bucket": max(bucket_s, 1)}
        )

    async def cost(self, since: timedelta, tenant: str = "", probes: bool = False) -> Rows:
        """Per tenant and model: events, tokens in and out, cost in USD, unpriced events."""
        return await self.store.query(
            """
            SELECT tenant, model, sum(events) AS events, sum(input_tokens) AS input_tokens,
                   sum(output_tokens) AS output_tokens, round(sum(cost_usd), 6) AS cost_usd,
                   sum(unpriced) AS unpriced
            FROM cost_days
            WHERE day >= toDate({since:DateTime64(3, 'UTC')})
              AND (empty({tenant:String}) OR tenant = {tenant:String}) AND tenant != {hide:String}
            GROUP BY tenant, model ORDER BY cost_usd DESC, tenant, model
            """,
            report_window(since, tenant, probes),
        )

    async def generation_speed(self, since: timedelta, tenant: str = "", probes: bool = False) -> Rows:
        """Per model, over its streamed answers: time to first token (ms) and output
        tokens per second, p50 and p95, and how many answers were measured. From the raw
        generation rows: only streamed answers have the two values."""
        return await self.store.query(
            """
            SELECT model, count() AS answers,
                   arrayMap(x -> round(x, 1), quantiles(0.5, 0.95)(assumeNotNull(ttft_ms))) AS ttft,
                   arrayMap(x -> round(x, 1), quantilesIf(0.5, 0.95)(
                       assumeNotNull(tokens_per_s), isNotNull(tokens_per_s))) AS tokens_per_s
            FROM telemetry
            WHERE stage = 'generation' AND status = 'ok' AND isNotNull(ttft_ms)
              AND started_at >= {since:DateTime64(3, 'UTC')}
              AND (empty({tenant:String}) OR tenant = {tenant:String}) AND tenant != {hide:String}
            GROUP BY model ORDER BY model
            """,
            report_window(since, tenant, probes),
        )

    async def feedback(self, since: timedelta, tenant: str = "", probes: bool = False) -> Rows:
        """Per prompt version and score name: ratings, mean score, and label counts for
        categorical scores. Feedback not yet linked to a trace is counted apart."""
        return await self.store.query(
            """
            SELECT * FROM (
                SELECT template_id, template_version, name, data_type, category,
                       sum(events) AS events,
                       round(sum(score_sum) / nullIf(sum(scored), 0), 4) AS mean_score
                FROM feedback_days
                WHERE day >= toDate({since:DateTime64(3, 'UTC')})
                  AND (empty({tenant:String}) OR tenant = {tenant:String}) AND tenant != {hide:String}
                GROUP BY template_id, template_version, name, data_type, category
                UNION ALL
                SELECT '(unlinked)', '', name, data_type, category, count(), round(avg(score), 4)
                FROM feedback FINAL
                WHERE NOT trace_seen AND occurred_at >= {since:DateTime64(3, 'UTC')}
                  AND (empty({tenant:String}) OR tenant = {tenant:String}) AND tenant != {hide:String}
                GROUP BY name, data_type, category
            )
            ORDER BY template_id, template_version, name, category
            """,
            report_window(since, tenant, probes),
        )

    async def feedback_over_time(
        self, since: timedelta, bucket_s: int = 3600, tenant: str = "", probes: bool = False
    ) -> Rows:
        """Per time bucket, prompt version and score name: ratings and mean score."""
        return await self.store.query(
            """
            SELECT toStartOfInterval(occurred_at, toIntervalSecond({bucket:UInt32})) AS t,
                   concat(template_id, '@', template_version, ' ', name) AS version,
                   count() AS events, avg(score) AS mean_score
            FROM feedback FINAL
            WHERE trace_seen AND score IS NOT NULL AND occurred_at >= {since:DateTime64(3, 'UTC')}
              AND (empty({tenant:String}) OR tenant = {tenant:String}) AND tenant != {hide:String}
            GROUP BY t, version ORDER BY t, version
            """,
            {**report_window(since, tenant, probes), "bucket": max(bucket_s, 1)},
        )

    async def turns_per_conversation(self, since: timedelta, tenant: str = "", probes: bool = False) -> Rows:
        """Turns per conversation in the window: for each number of turns, how many
        conversations had that many, and how many of their turns used memory (their
        prompts showed earlier turns). A turn is a prompting row of a conversation; a
        conversation that began before the window counts its turns in it."""
        return await self.store.query(
            """
            SELECT turns, count() AS conversations, sum(with_memory) AS turns_with_memory
            FROM (
                SELECT tenant, conversation_id, count() AS turns,
                       countIf(memory_turns > 0) AS with_memory
                FROM telemetry FINAL
                WHERE stage = 'prompting' AND status = 'ok' AND conversation_id != ''
                  AND started_at >= {since:DateTime64(3, 'UTC')}
                  AND (empty({tenant:String}) OR tenant = {tenant:String}) AND tenant != {hide:String}
                GROUP BY tenant, conversation_id
            )
            GROUP BY turns ORDER BY turns
            """,
            report_window(since, tenant, probes),
        )

    async def slowest(
        self, since: timedelta, limit: int = 10, tenant: str = "", probes: bool = False
    ) -> Rows:
        """The slowest question traces: first stage start to last stage end."""
        return await self.store.query(
            """
            SELECT trace_id, tenant, min(started_at) AS first_started,
                   round(dateDiff('microsecond', min(started_at), max(ended_at)) / 1000, 2) AS total_ms,
                   countIf(status = 'error') AS errors, groupUniqArray(stage) AS stages
            FROM telemetry
            WHERE started_at >= {since:DateTime64(3, 'UTC')}
              AND (empty({tenant:String}) OR tenant = {tenant:String}) AND tenant != {hide:String}
            GROUP BY trace_id, tenant
            HAVING countIf(stage = 'prompting') > 0
            ORDER BY total_ms DESC LIMIT {limit:UInt32}
            """,
            {**report_window(since, tenant, probes), "limit": limit},
        )

    async def alerts(self, since: timedelta) -> Rows:
        """Incidents raised in the window, newest first: what, about what, when raised and
        whether resolved."""
        return await self.store.query(
            """
            SELECT alert_id, argMin(event_type, occurred_at) AS kind, any(check_name) AS check_name,
                   any(subject) AS subject, min(occurred_at) AS raised_at,
                   countIf(event_type = 'AlertResolved') > 0 AS resolved,
                   argMin(message, occurred_at) AS message
            FROM alerts FINAL
            GROUP BY alert_id
            HAVING raised_at >= {since:DateTime64(3, 'UTC')}
            ORDER BY raised_at DESC
            """,
            {"since": when(utc_now() - since)},
        )

    async def trace(self, trace_id: str) -> tuple[Rows, Rows]:
        """One request: its stages in order, and its feedback."""
        stages = await self.store.query(
            """
            SELECT stage, started_at, ended_at, round(latency_ms, 2) AS latency_ms, status, error_class,
                   tenant, model, template_id, template_version, input_tokens, output_tokens,
                   cost_usd, retrieval_mode, passage_ids, passage_scores, question, answer, citations,
                   artifact_set, artifact_ids
            FROM telemetry FINAL WHERE trace_id = {trace:String}
            ORDER BY started_at, ended_at
            """,
            {"trace": trace_id},
        )
        feedback = await self.store.query(
            """
            SELECT occurred_at, name, data_type, score, category, comment, user, trace_seen
            FROM feedback FINAL WHERE trace_id = {trace:String} ORDER BY occurred_at
            """,
            {"trace": trace_id},
        )
        return stages, feedback

    async def trace_stages(self, trace_ids: Sequence[str]) -> Rows:
        """The stage rows of the given traces (a client reading its own requests back,
        as the follow-up benchmark does): per row the trace, stage, latency (ms), status,
        model, tokens, the passages retrieval found and the question as the row recorded it
        (a condense row: the rewritten question), in the order the stages ran."""
        return await self.store.query(
            """
            SELECT trace_id, stage, round(latency_ms, 2) AS latency_ms, status, model,
                   input_tokens, output_tokens, passage_ids, conversation_id, question
            FROM telemetry FINAL WHERE trace_id IN {traces:Array(String)}
            ORDER BY trace_id, started_at, ended_at
            """,
            {"traces": list(trace_ids)},
        )

    async def experiment_arms(self, experiment: str, since: datetime) -> Rows:
        """Per arm of an experiment since it started: queries, failures, p95 end-to-end
        latency (first stage start to last stage end, ms), cost per query, and the user
        ratings' count, mean and sample variance."""
        return await self.store.query(
            """
            WITH traces AS (
                SELECT trace_id, anyIf(arm, arm != '') AS arm,
                       toUnixTimestamp64Milli(max(ended_at)) - toUnixTimestamp64Milli(min(started_at))
                           AS latency_ms,
                       sum(cost_usd) AS cost, countIf(status = 'error') > 0 AS failed
                FROM telemetry FINAL
                WHERE experiment = {experiment:String} AND started_at >= {since:DateTime64(3, 'UTC')}
                GROUP BY trace_id
            ),
            ratings AS (
                SELECT t.arm AS arm, count() AS n, avg(f.score) AS m, varSamp(f.score) AS v
                FROM feedback AS f FINAL INNER JOIN traces AS t ON f.trace_id = t.trace_id
                WHERE f.name = 'user' AND f.score IS NOT NULL
                GROUP BY t.arm
            )
            SELECT t.arm AS arm, count() AS queries, countIf(t.failed) AS failed,
                   quantile(0.95)(t.latency_ms) AS p95_ms, avg(t.cost) AS cost_per_query,
                   any(r.n) AS ratings, any(r.m) AS mean, any(r.v) AS variance
            FROM traces AS t LEFT JOIN ratings AS r ON t.arm = r.arm
            WHERE t.arm != ''
            GROUP BY t.arm ORDER BY t.arm
            """,
            {"experiment": experiment, "since": when(since)},
        )
