"""Reading the analytics store: named queries with bound parameters, and `query` for
analysts (one read-only SELECT, parameters bound by the engine).

Who reads what: with a ClickHouse server, everyone reads it directly. With chDB, the
directory opens in one process only, so while the stack runs, readers ask the analytics
process's query service (`ServiceStore`); when it is not running, they open the
directory themselves (`Analytics.connect` picks)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from connectors.clickhouse import (
    AnalyticsStore,
    ChdbStore,
    ClickHouseSettings,
    QueryFailed,
    Rows,
    ServerStore,
    StoreUnavailable,
    checked_table,
)
from connectors.ports import AlertState, Measure, Moments, StageLoad, TraceFacts, Window
from schemas import utc_now

# The local stack's readiness probes ask as this tenant (topology/stack.py). Its traffic
# is stored like any other but left out of reports, cost and the monitor's windows unless
# asked for (`probes=True`, or naming the tenant).
PROBE_TENANT = "llmops-probe"


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
      AND (empty({tenant:String}) OR tenant = {tenant:String}) AND tenant != {hide:String}
    UNION ALL
    SELECT stage, events, errors, latency, hour AS t0 FROM stage_hours
    WHERE hour >= toStartOfHour({since:DateTime64(3, 'UTC')}) + toIntervalHour(1)
      AND (empty({tenant:String}) OR tenant = {tenant:String}) AND tenant != {hide:String}
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
            self._window(since, tenant, probes),
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
            self._window(since, tenant, probes),
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
            sql, {**self._window(since, tenant, probes), "bucket": max(bucket_s, 1)}
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
            self._window(since, tenant, probes),
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
            self._window(since, tenant, probes),
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
            {**self._window(since, tenant, probes), "bucket": max(bucket_s, 1)},
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
            {**self._window(since, tenant, probes), "limit": limit},
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

    # --- the monitor's windows (agents.monitor, through ports.MonitorReads) -------------
    # Probe traffic never enters them: cold-start probes are slow by nature.

    async def query_vectors(self, window: Window, n: int) -> np.ndarray:
        """Up to n query vectors embedded in the window, a stable sample (by trace id)."""
        rows = await self.store.query(
            f"""
            SELECT query_vector FROM telemetry
            WHERE stage = 'embedding' AND notEmpty(query_vector) AND {_SPAN} AND tenant != {{hide:String}}
            ORDER BY cityHash64(trace_id) LIMIT {{n:UInt32}}
            """,  # noqa: S608  (constant SQL; values are bound)
            {**_span(window), "hide": PROBE_TENANT, "n": n},
        )
        return np.array([r[0] for r in rows.rows], dtype=np.float32)

    async def stage_moments(self, measure: Measure, window: Window, reference: Window) -> Moments:
        stage, value, valid, flag = _MEASURES[measure]
        sql = _MOMENTS.replace("VALUE", value).replace("VALID", valid).replace("FLAG", flag)
        parameters = {**_span(window), **_span(reference, "ref_"), "stage": stage, "hide": PROBE_TENANT}
        m = (await self.store.query(sql, parameters)).dicts()[0]
        return Moments(
            _number(m["m"]),
            _number(m["v"]),
            int(m["n"]),
            _number(m["rm"]),
            _number(m["rv"]),
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
            {**_span(window), "hide": PROBE_TENANT},
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
            {**_span(window), **_span(reference, "ref_"), "hide": PROBE_TENANT},
        )
        return {
            r["version"]: Moments(
                _number(r["m"]),
                _number(r["v"]),
                int(r["n"]),
                _number(r["rm"]),
                _number(r["rv"]),
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

    @staticmethod
    def _window(since: timedelta, tenant: str, probes: bool = False) -> dict[str, Any]:
        # Naming the probe tenant shows it, as asking for probes does.
        hide = "" if probes or tenant == PROBE_TENANT else PROBE_TENANT
        return {"since": when(utc_now() - since), "tenant": tenant, "hide": hide}


def _number(value: Any) -> float:
    """A moment ClickHouse left undefined (no rows: null) as 0; callers skip thin sides."""
    return 0.0 if value is None else float(value)


def _span(window: Window, prefix: str = "") -> dict[str, str]:
    return {f"{prefix}start": when(window.start), f"{prefix}end": when(window.end)}


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
