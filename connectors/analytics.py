"""Reading the analytics store: named queries with bound parameters, and `query` for
analysts (one read-only SELECT, parameters bound by the engine).

Who reads what: with a ClickHouse server, everyone reads it directly. With chDB, the
directory opens in one process only, so while the stack runs, readers ask the analytics
process's query service (`ServiceStore`); when it is not running, they open the
directory themselves (`Analytics.connect` picks)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import aiohttp
from pydantic import BaseModel, ConfigDict, Field

from connectors.clickhouse import (
    AnalyticsStore,
    ChdbStore,
    ClickHouseSettings,
    QueryFailed,
    Rows,
    ServerStore,
    StoreUnavailable,
)
from schemas import utc_now


class ServiceSettings(BaseModel):
    """The query service of the process that owns the analytics store."""

    model_config = ConfigDict(frozen=True)

    host: str = Field(default="127.0.0.1", description="Bind address; keep it local: it runs SQL.")
    port: int = Field(default=6066, ge=0, le=65535)
    timeout_s: float = Field(default=30.0, gt=0)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


_READ_ONLY = re.compile(r"^\s*(SELECT|WITH)\b", re.IGNORECASE)


def read_only(sql: str) -> str:
    """One SELECT statement, or QueryFailed. chDB runs `a; b` as two statements, so a
    `;` anywhere but the end is refused: pass values as parameters, not in the text."""
    statement = sql.strip().rstrip(";").strip()
    if not _READ_ONLY.match(statement) or ";" in statement:
        raise QueryFailed("only one SELECT (or WITH ... SELECT) statement; bind values as {name:Type}")
    return statement


class ServiceStore:
    """Reads through the owner's query service over HTTP (read-only)."""

    backend = "service"

    def __init__(self, settings: ServiceSettings) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self._settings.timeout_s)
            self._session = aiohttp.ClientSession(timeout=timeout)

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def health(self) -> dict[str, Any]:
        return await self._call("GET", "/health/", None)

    async def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> Rows:
        body = {"sql": sql, "parameters": dict(parameters or {})}
        return Rows.from_json(await self._call("POST", "/sql/", body))

    async def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None:
        raise QueryFailed("the query service is read-only")

    async def insert(self, table: str, rows: Any) -> None:
        raise QueryFailed("the query service is read-only")

    async def _call(self, method: str, path: str, body: Any) -> Any:
        await self.open()
        assert self._session is not None
        url = self._settings.url + path
        try:
            async with self._session.request(method, url, json=body) as response:
                payload = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise StoreUnavailable(f"analytics service at {self._settings.url}: {exc}") from exc
        if response.status >= 500:
            raise StoreUnavailable(f"analytics service: {payload.get('error', response.status)}")
        if response.status >= 400:
            raise QueryFailed(str(payload.get("error", response.status)))
        return payload


# Latency states over the window: the first partial hour from stage_minutes, whole hours
# (and the current one) from stage_hours. Parameters: since, tenant.
_STAGE_STATES = """
    SELECT stage, events, errors, latency, minute AS t0 FROM stage_minutes
    WHERE minute >= toStartOfMinute({since:DateTime64(3, 'UTC')})
      AND minute < toStartOfHour({since:DateTime64(3, 'UTC')}) + toIntervalHour(1)
      AND (empty({tenant:String}) OR tenant = {tenant:String})
    UNION ALL
    SELECT stage, events, errors, latency, hour AS t0 FROM stage_hours
    WHERE hour >= toStartOfHour({since:DateTime64(3, 'UTC')}) + toIntervalHour(1)
      AND (empty({tenant:String}) OR tenant = {tenant:String})
"""


def when(value: datetime) -> str:
    """A UTC time as a DateTime64 parameter value (bound by the engine, not spliced)."""
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


class Analytics:
    """The named queries behind `llmops report`, `llmops trace` and the HTML page."""

    def __init__(self, store: AnalyticsStore) -> None:
        self.store = store

    @classmethod
    async def connect(cls, clickhouse: ClickHouseSettings, service: ServiceSettings) -> Analytics:
        """The server when one is configured; else the running stack's query service;
        else the chDB directory itself."""
        store: AnalyticsStore
        if clickhouse.url:
            store = ServerStore(clickhouse)
            await store.open()
            return cls(store)
        remote = ServiceStore(service)
        try:
            await remote.health()
            return cls(remote)
        except StoreUnavailable:
            await remote.close()
        local = ChdbStore(clickhouse)
        try:
            await local.open()
        except StoreUnavailable as exc:
            raise StoreUnavailable(
                f"{exc}. No analytics service answered at {service.url} either: "
                "is the stack (`llmops up`) or `llmops analytics` running with other settings?"
            ) from exc
        return cls(local)

    async def close(self) -> None:
        await self.store.close()

    async def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> Rows:
        return await self.store.query(read_only(sql), parameters)

    # --- named queries -------------------------------------------------------------

    async def latency(self, since: timedelta, tenant: str = "") -> Rows:
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
            self._window(since, tenant),
        )

    async def extent(self, since: timedelta, tenant: str = "") -> tuple[str, str] | None:
        """First and last minute with telemetry in the window, or None."""
        rows = await self.store.query(
            """
            SELECT min(minute), max(minute), count() FROM stage_minutes
            WHERE minute >= toStartOfMinute({since:DateTime64(3, 'UTC')})
              AND (empty({tenant:String}) OR tenant = {tenant:String})
            """,
            self._window(since, tenant),
        )
        first, last, count = rows.rows[0]
        return (first, last) if count else None

    async def latency_over_time(self, since: timedelta, bucket_s: int = 60, tenant: str = "") -> Rows:
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
              AND (empty({tenant:String}) OR tenant = {tenant:String})
            GROUP BY t, stage ORDER BY t, stage
            """
        else:
            sql = """
            SELECT toStartOfInterval(started_at, toIntervalSecond({bucket:UInt32})) AS t, stage,
                   quantiles(0.5, 0.95, 0.99)(latency_ms) AS q, count() AS events
            FROM telemetry
            WHERE started_at >= {since:DateTime64(3, 'UTC')} AND stage != 'indexing'
              AND (empty({tenant:String}) OR tenant = {tenant:String})
            GROUP BY t, stage ORDER BY t, stage
            """
        return await self.store.query(sql, {**self._window(since, tenant), "bucket": max(bucket_s, 1)})

    async def cost(self, since: timedelta, tenant: str = "") -> Rows:
        """Per tenant and model: events, tokens in and out, cost in USD, unpriced events."""
        return await self.store.query(
            """
            SELECT tenant, model, sum(events) AS events, sum(input_tokens) AS input_tokens,
                   sum(output_tokens) AS output_tokens, round(sum(cost_usd), 6) AS cost_usd,
                   sum(unpriced) AS unpriced
            FROM cost_days
            WHERE day >= toDate({since:DateTime64(3, 'UTC')})
              AND (empty({tenant:String}) OR tenant = {tenant:String})
            GROUP BY tenant, model ORDER BY cost_usd DESC, tenant, model
            """,
            self._window(since, tenant),
        )

    async def feedback(self, since: timedelta, tenant: str = "") -> Rows:
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
                  AND (empty({tenant:String}) OR tenant = {tenant:String})
                GROUP BY template_id, template_version, name, data_type, category
                UNION ALL
                SELECT '(unlinked)', '', name, data_type, category, count(), round(avg(score), 4)
                FROM feedback FINAL
                WHERE NOT trace_seen AND occurred_at >= {since:DateTime64(3, 'UTC')}
                  AND (empty({tenant:String}) OR tenant = {tenant:String})
                GROUP BY name, data_type, category
            )
            ORDER BY template_id, template_version, name, category
            """,
            self._window(since, tenant),
        )

    async def feedback_over_time(self, since: timedelta, bucket_s: int = 3600, tenant: str = "") -> Rows:
        """Per time bucket, prompt version and score name: ratings and mean score."""
        return await self.store.query(
            """
            SELECT toStartOfInterval(occurred_at, toIntervalSecond({bucket:UInt32})) AS t,
                   concat(template_id, '@', template_version, ' ', name) AS version,
                   count() AS events, avg(score) AS mean_score
            FROM feedback FINAL
            WHERE trace_seen AND score IS NOT NULL AND occurred_at >= {since:DateTime64(3, 'UTC')}
              AND (empty({tenant:String}) OR tenant = {tenant:String})
            GROUP BY t, version ORDER BY t, version
            """,
            {**self._window(since, tenant), "bucket": max(bucket_s, 1)},
        )

    async def slowest(self, since: timedelta, limit: int = 10, tenant: str = "") -> Rows:
        """The slowest question traces: first stage start to last stage end."""
        return await self.store.query(
            """
            SELECT trace_id, tenant, min(started_at) AS first_started,
                   round(dateDiff('microsecond', min(started_at), max(ended_at)) / 1000, 2) AS total_ms,
                   countIf(status = 'error') AS errors, groupUniqArray(stage) AS stages
            FROM telemetry
            WHERE started_at >= {since:DateTime64(3, 'UTC')}
              AND (empty({tenant:String}) OR tenant = {tenant:String})
            GROUP BY trace_id, tenant
            HAVING countIf(stage = 'prompting') > 0
            ORDER BY total_ms DESC LIMIT {limit:UInt32}
            """,
            {**self._window(since, tenant), "limit": limit},
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
            self._window(since, ""),
        )

    async def trace(self, trace_id: str) -> tuple[Rows, Rows]:
        """One request: its stages in order, and its feedback."""
        stages = await self.store.query(
            """
            SELECT stage, started_at, ended_at, round(latency_ms, 2) AS latency_ms, status, error_class,
                   tenant, model, template_id, template_version, input_tokens, output_tokens,
                   cost_usd, retrieval_mode, passage_ids, passage_scores, question, answer, citations
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

    @staticmethod
    def _window(since: timedelta, tenant: str) -> dict[str, Any]:
        return {"since": when(utc_now() - since), "tenant": tenant}
