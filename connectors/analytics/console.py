"""The reads behind the web console (topology/console) that the report does not make:
trace search, every row of one trace, end-to-end latency, and alerts with their evidence."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from connectors.analytics.common import report_window, when
from connectors.clickhouse import AnalyticsStore, Rows
from schemas import utc_now

# One row per question trace (a trace with a prompting stage) started in [start, end),
# with what served it; filters are bound, an empty one matches everything. The newest
# matching rows come from trace_search (migration 012): the prompting and generation rows
# with their filter columns and texts, ordered by time, so the newest are read first and
# a word is looked up in the full-text indexes of its question and answer. A trace has at
# most one row of each stage there, so the newest 2 x limit rows hold the newest `limit`
# traces: a top-N with no GROUP BY over every match (a common word matches most rows).
# Only those traces' telemetry is then read, by trace_id (that table's key), for the
# columns the search table lacks: timing, status, cost and stages. The status filter asks
# whether any of the trace's stages failed.
_WINDOW = "started_at >= {start:DateTime64(3, 'UTC')} AND started_at < {end:DateTime64(3, 'UTC')}"
_FILTERS = f"""{_WINDOW}
  AND (empty({{tenant:String}}) OR tenant = {{tenant:String}}) AND tenant != {{hide:String}}
  AND (empty({{prompt:String}}) OR template_id = {{prompt:String}}
       OR startsWith(template_version, {{prompt:String}}))
  AND (empty({{label:String}}) OR label = {{label:String}})
  AND (empty({{mode:String}}) OR retrieval_mode = {{mode:String}})
  AND (empty({{conversation:String}}) OR conversation_id = {{conversation:String}})"""
# Only with a status filter: the set of failed traces in the window is built even where
# the filter is empty, a scan of the window's status column.
_STATUS = f"""
  AND (trace_id IN (SELECT trace_id FROM telemetry WHERE {_WINDOW} AND status = 'error'))
      = ({{status:String}} = 'error')"""  # noqa: S608  (constant SQL; values are bound)
# Text: the words of the question or of the answer (the indexes' expressions).
_WORDS = "hasAllTokens(lower({column}), lower({{text:String}}))"
_PHRASE = "positionCaseInsensitiveUTF8({column}, {{text:String}}) > 0"
_MATCHING = f"""
SELECT trace_id, tenant, template_id, template_version, label, experiment, arm, retrieval_mode,
       conversation_id, question, answer
FROM trace_search
WHERE stage IN ('prompting', 'generation') AND {_FILTERS} STATUS AND (TEXT)
ORDER BY started_at DESC LIMIT 2 * {{limit:UInt32}}
"""  # noqa: S608  (constant SQL; values are bound)
_SEARCH = f"""
WITH matching AS (MATCHING)
SELECT t.trace_id AS trace_id, t.tenant AS tenant, first_started, total_ms, outcome,
       m.prompt_id AS prompt_id, m.prompt_version AS prompt_version, m.served_label AS served_label,
       m.experiment_name AS experiment_name, m.experiment_arm AS experiment_arm, m.mode AS mode,
       m.asked AS asked, m.answered AS answered, m.conversation AS conversation, cost, stages
FROM (
    SELECT trace_id, tenant, min(started_at) AS first_started,
           round(dateDiff('microsecond', min(started_at), max(ended_at)) / 1000, 2) AS total_ms,
           if(countIf(status = 'error') > 0, 'error', 'ok') AS outcome,
           round(sum(cost_usd), 6) AS cost, groupUniqArray(stage) AS stages
    FROM telemetry
    WHERE trace_id IN (SELECT trace_id FROM matching) AND {_WINDOW}
    GROUP BY trace_id, tenant
) AS t
INNER JOIN (
    SELECT trace_id, tenant,
           anyIf(template_id, template_id != '') AS prompt_id,
           anyIf(template_version, template_version != '') AS prompt_version,
           anyIf(label, label != '') AS served_label, anyIf(experiment, experiment != '') AS experiment_name,
           anyIf(arm, arm != '') AS experiment_arm, anyIf(retrieval_mode, retrieval_mode != '') AS mode,
           anyIf(question, question != '') AS asked, anyIf(answer, answer != '') AS answered,
           anyIf(conversation_id, conversation_id != '') AS conversation
    FROM matching
    GROUP BY trace_id, tenant
) AS m ON t.trace_id = m.trace_id AND t.tenant = m.tenant
ORDER BY first_started DESC LIMIT {{limit:UInt32}}
"""  # noqa: S608  (constant SQL; values are bound)
# What splitByNonAlpha keeps as one token: runs of ASCII letters and digits (bytes of
# other scripts count as letters).
_TOKEN = re.compile(r"[A-Za-z0-9\u0080-\U0010ffff]+")


def search_sql(text: str, status: str = "") -> str:
    """The trace search for this text: its words, whole and in any order, case aside, all
    in the question or all in the answer, found through the indexes. A text with no word
    in it (only punctuation) is looked for as a substring, reading every row's text."""
    condition = "true"
    if text:
        # Matching the text as typed too would read the text of every row with its words.
        found = _WORDS if _TOKEN.search(text) else _PHRASE
        condition = " OR ".join(found.format(column=c) for c in ("question", "answer"))
    matching = _MATCHING.replace("STATUS", _STATUS if status else "").replace("TEXT", condition)
    return _SEARCH.replace("MATCHING", matching)


class ConsoleQueries:
    """Reads for the web console's trace, overview and alert pages."""

    store: AnalyticsStore

    async def search_traces(
        self,
        start: datetime,
        end: datetime,
        *,
        tenant: str = "",
        status: str = "",
        prompt: str = "",
        label: str = "",
        mode: str = "",
        text: str = "",
        conversation: str = "",
        limit: int = 100,
        probes: bool = False,
    ) -> Rows:
        """Question traces started in [start, end), newest first. `prompt`: a prompt id
        or the start of a version hash; `text`: words of the question or of the answer,
        case aside (`search_sql`); `conversation`: the turns of that conversation."""
        window = report_window(timedelta(0), tenant, probes)
        return await self.store.query(
            search_sql(text, status),
            {
                **window,
                "start": when(start),
                "end": when(end),
                "status": status,
                "prompt": prompt,
                "label": label,
                "mode": mode,
                "text": text,
                "conversation": conversation,
                "limit": limit,
            },
        )

    async def conversations(
        self, since: timedelta, tenant: str = "", limit: int = 100, probes: bool = False
    ) -> Rows:
        """Conversations with a turn in the window, the latest active first: turns in the
        window, failed turns, first and last turn, and the last question. From trace_search,
        ordered by time: the window is a range of it."""
        return await self.store.query(
            """
            SELECT conversation_id, tenant, count() AS turns, countIf(status = 'error') AS failed,
                   min(started_at) AS first_turn, max(started_at) AS last_turn,
                   argMax(question, started_at) AS last_question
            FROM trace_search
            WHERE stage = 'prompting' AND conversation_id != ''
              AND started_at >= {since:DateTime64(3, 'UTC')}
              AND (empty({tenant:String}) OR tenant = {tenant:String}) AND tenant != {hide:String}
            GROUP BY conversation_id, tenant
            ORDER BY last_turn DESC LIMIT {limit:UInt32}
            """,
            {**report_window(since, tenant, probes), "limit": limit},
        )

    async def trace_rows(self, trace_id: str) -> tuple[Rows, Rows]:
        """Every telemetry row (less the query vector) and every feedback row of a trace."""
        stages = await self.store.query(
            """
            SELECT * EXCEPT (query_vector) FROM telemetry FINAL WHERE trace_id = {trace:String}
            ORDER BY started_at, ended_at
            """,
            {"trace": trace_id},
        )
        feedback = await self.store.query(
            "SELECT * FROM feedback FINAL WHERE trace_id = {trace:String} ORDER BY occurred_at",
            {"trace": trace_id},
        )
        return stages, feedback

    async def end_to_end(self, since: timedelta, tenant: str = "", probes: bool = False) -> Rows:
        """Question traces in the window: how many, how many failed, and p50/p95/p99 from
        the first stage's start to the last stage's end (ms)."""
        return await self.store.query(
            """
            SELECT count() AS requests, countIf(failed) AS errors,
                   arrayMap(x -> round(x, 2), quantiles(0.5, 0.95, 0.99)(total_ms)) AS q
            FROM (
                SELECT trace_id, dateDiff('microsecond', min(started_at), max(ended_at)) / 1000 AS total_ms,
                       countIf(status = 'error') > 0 AS failed
                FROM telemetry
                WHERE started_at >= {since:DateTime64(3, 'UTC')} AND stage != 'indexing'
                  AND (empty({tenant:String}) OR tenant = {tenant:String}) AND tenant != {hide:String}
                GROUP BY trace_id
                HAVING countIf(stage = 'prompting') > 0
            )
            """,
            report_window(since, tenant, probes),
        )

    async def alert_events(self, since: timedelta) -> Rows:
        """Every event of the incidents raised in the window, oldest first, with the
        evidence: the value, the threshold, the p-value and the window it was judged on."""
        return await self.store.query(
            """
            SELECT alert_id, event_type, check_name, subject, value, threshold, p_value,
                   window_start, window_end, message, occurred_at
            FROM alerts FINAL
            WHERE alert_id IN (
                SELECT alert_id FROM alerts GROUP BY alert_id
                HAVING min(occurred_at) >= {since:DateTime64(3, 'UTC')})
            ORDER BY occurred_at
            """,
            {"since": when(utc_now() - since)},
        )
