"""The web console's reads at scale: trace search by text, a trace's detail, and each
page's data queries, over synthetic telemetry in chDB.

    python -m benchmarks.console_search [--rows 1000000,10000000] [--runs 20] [--days 30]

Telemetry is generated in SQL (four stage rows per question trace, traces spread evenly
over --days ending now, in the order a sink would insert them) into a chDB store in a
temporary directory with every migration applied, 012's full-text indexes included. The
sizes in --rows grow one store: the first size is filled, measured, then topped up to the
next. Text: questions and answers from an English word list with a skewed (Zipf-like)
choice of words, one word in every other question ("account", the common word), a
ticket code in each question that recurs in a few traces only (the rare word).

For each size, each query runs --runs times (a different rare word each time) and the
table gives p50/p95 of wall and CPU time (the process's own CPU, user + system of every
thread from getrusage: chDB runs in this process). Searches run three ways in the same
store: as the console runs them (the indexes), the same SQL with `use_skip_indexes = 0`
(no index), and the substring scan the console used before migration 012; those two
comparisons run --compare-runs times (they are slow at scale). Prints JSON, then a table."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from connectors.analytics import Analytics
from connectors.analytics.console import search_sql
from connectors.clickhouse import ChdbStore, ClickHouseSettings
from connectors.migrations import apply
from schemas import utc_now
from topology.report import collect, text_table

WORDS = (
    "password reset login email invoice refund order delivery shipping address payment card "
    "subscription plan upgrade cancel trial billing receipt tax discount coupon warranty return "
    "exchange size color stock price phone app update install error crash slow sync backup file "
    "upload download share folder photo video music playlist offline download device tablet laptop "
    "printer wifi network router bluetooth battery charger screen camera speaker headphones watch "
    "settings profile privacy security notification language region timezone currency export import "
    "report dashboard chart team member role permission admin owner invite link access token key "
    "limit quota storage space memory performance latency timeout server outage status incident "
    "support ticket chat call agent hours weekend holiday store location pickup courier tracking "
    "package damaged missing late early schedule appointment booking reservation hotel flight "
    "seat baggage visa passport insurance claim policy coverage premium deductible doctor clinic"
).split()
OPENERS = ("How do I", "Why can't I", "Can I", "Where do I find", "What happens if I", "Is it possible to")
VERBS = ("change", "reset", "cancel", "update", "find", "delete", "export", "recover", "move", "check")

# Rows are numbered; four per trace (prompting, embedding, retrieval, generation). Trace k
# starts at a time that spreads the traces over the span evenly whatever their number, so
# every size has the same share of rows in any window. `first` numbers the rows already
# stored when topping up.
FILL = """
INSERT INTO telemetry (event_id, trace_id, tenant, stage, producer, started_at, ended_at, latency_ms,
    status, error_class, model, template_id, template_version, label, retrieval_mode, input_tokens,
    output_tokens, cost_usd, priced, passage_ids, passage_scores, dense_scores, question, answer,
    citations, conversation_id)
SELECT
    lower(hex(cityHash64(number, 'event'))) AS event_id,
    lower(hex(cityHash64(k, 'trace'))) AS trace_id,
    concat('tenant-', toString(k % 20)) AS tenant,
    ['prompting', 'embedding', 'retrieval', 'generation'][number % 4 + 1] AS stage,
    stage AS producer,
    now64(3) - toIntervalMillisecond((k * 2654435761) % {span_ms:UInt64})
        + toIntervalMillisecond([0, 2, 9, 25][number % 4 + 1]) AS started_at,
    started_at + toIntervalMillisecond(latency_ms) AS ended_at,
    toFloat64([1, 6, 14, 400][number % 4 + 1] + (number * 7919) % 97) AS latency_ms,
    if(number % 997 = 0, 'error', 'ok') AS status,
    if(status = 'error', 'TransientError', '') AS error_class,
    if(stage = 'generation', 'smollm2-135m', if(stage = 'embedding', 'all-MiniLM-L6-v2', '')) AS model,
    if(stage IN ('prompting', 'generation'), 'rag-answer', '') AS template_id,
    if(template_id != '', ['3f2a9c', '7b1e04'][k % 2 + 1], '') AS template_version,
    if(template_id != '', ['production', 'canary'][(k % 10 = 0) + 1], '') AS label,
    if(template_id != '', ['dense', 'hybrid', 'bm25'][k % 3 + 1], '') AS retrieval_mode,
    if(stage = 'generation', 400 + number % 400, 0) AS input_tokens,
    if(stage = 'generation', 50 + number % 100, 0) AS output_tokens,
    0.0 AS cost_usd,
    true AS priced,
    if(stage = 'retrieval', arrayMap(i -> concat('doc-', toString((k * 31 + i) % 50000)), range(4)), [])
        AS passage_ids,
    if(stage = 'retrieval', [0.71, 0.66, 0.61, 0.58], []) AS passage_scores,
    passage_scores AS dense_scores,
    if(stage IN ('prompting', 'generation'), concat(
        {openers:Array(String)}[k % length({openers:Array(String)}) + 1], ' ',
        {verbs:Array(String)}[intDiv(k, 7) % length({verbs:Array(String)}) + 1], ' my ',
        if(k % 2 = 0, 'account ', ''),
        arrayStringConcat(arrayMap(i -> {words:Array(String)}[
            toUInt32(pow((cityHash64(k, i) % 10000) / 10000, 3) * length({words:Array(String)})) + 1],
            range(3 + k % 4)), ' '),
        ' (ticket ', concat('tk', toString(k % {codes:UInt64})), ')?'), '') AS question,
    if(stage = 'generation', concat(
        'To ', {verbs:Array(String)}[intDiv(k, 7) % length({verbs:Array(String)}) + 1], ' it, ',
        arrayStringConcat(arrayMap(i -> {words:Array(String)}[
            toUInt32(pow((cityHash64(k, i, 'a') % 10000) / 10000, 2) * length({words:Array(String)})) + 1],
            range(20 + k % 20)), ' '),
        '. See the help page [1].'), '') AS answer,
    if(stage = 'generation', ['1'], []) AS citations,
    if(k % 5 = 0, concat('conv-', toString(intDiv(k, 20))), '') AS conversation_id
FROM (SELECT number, intDiv(number, 4) AS k FROM numbers({first:UInt64}, {rows:UInt64}))
"""

FEEDBACK = """
INSERT INTO feedback (event_id, trace_id, tenant, occurred_at, name, data_type, score, category, comment,
    user, trace_seen, template_id, template_version, model, revision)
SELECT lower(hex(cityHash64(number, 'feedback'))), lower(hex(cityHash64(number * 10, 'trace'))),
    concat('tenant-', toString(number * 10 % 20)),
    now64(3) - toIntervalMillisecond((number * 10 * 2654435761) % {span_ms:UInt64}) + toIntervalSecond(5),
    'user', 'BOOLEAN', toFloat64(number % 3 != 0), '', if(number % 7 = 0, 'could be clearer', ''), '',
    true, 'rag-answer', ['3f2a9c', '7b1e04'][number * 10 % 2 + 1], 'smollm2-135m', 0
FROM numbers({first:UInt64}, {rows:UInt64})
"""

ALERTS = """
INSERT INTO alerts (event_id, alert_id, event_type, check_name, subject, value, threshold,
    p_value, window_start, window_end, message, occurred_at)
SELECT lower(hex(cityHash64(number, 'alert'))), concat('alert-', toString(intDiv(number, 2))),
    ['SloBreached', 'AlertResolved'][number % 2 + 1], 'slo_p95', 'generation', 1200, 1000, NULL,
    now64(3) - toIntervalHour(number + 1), now64(3) - toIntervalHour(number), 'p95 above the SLO',
    now64(3) - toIntervalHour(number)
FROM numbers(200)
"""


def cpu_s() -> float:
    """This process's CPU time (user + system, every thread: chDB runs in-process)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def measure(call: Callable[[int], Awaitable[Any]], runs: int) -> dict[str, float]:
    await call(-1)  # warm: the first read of a part's marks is not what a user waits for
    wall, cpu = [], []
    for n in range(runs):
        w, c = time.perf_counter(), cpu_s()
        await call(n)
        wall.append((time.perf_counter() - w) * 1000)
        cpu.append((cpu_s() - c) * 1000)
    return {
        "p50_ms": round(statistics.median(wall), 1),
        "p95_ms": round(percentile(wall, 0.95), 1),
        "cpu_p50_ms": round(statistics.median(cpu), 1),
        "cpu_p95_ms": round(percentile(cpu, 0.95), 1),
    }


# The search as the console ran it before migration 012: on telemetry (ordered by
# trace_id), the text as a substring of each question and answer in the window.
_OLD_WINDOW = "started_at >= {start:DateTime64(3, 'UTC')} AND started_at < {end:DateTime64(3, 'UTC')}"
_OLD_MATCHING = f"""
SELECT trace_id FROM telemetry
WHERE stage = 'prompting' AND {_OLD_WINDOW}
  AND (empty({{tenant:String}}) OR tenant = {{tenant:String}}) AND tenant != {{hide:String}}
  AND (empty({{prompt:String}}) OR template_id = {{prompt:String}}
       OR startsWith(template_version, {{prompt:String}}))
  AND (empty({{label:String}}) OR label = {{label:String}})
  AND (empty({{mode:String}}) OR retrieval_mode = {{mode:String}})
  AND (empty({{conversation:String}}) OR conversation_id = {{conversation:String}})
  AND (empty({{text:String}}) OR trace_id IN (
        SELECT trace_id FROM telemetry
        WHERE {_OLD_WINDOW} AND (positionCaseInsensitiveUTF8(question, {{text:String}}) > 0
                             OR positionCaseInsensitiveUTF8(answer, {{text:String}}) > 0)))
  AND (empty({{status:String}})
       OR (trace_id IN (SELECT trace_id FROM telemetry WHERE {_OLD_WINDOW} AND status = 'error'))
          = ({{status:String}} = 'error'))
ORDER BY started_at DESC LIMIT {{limit:UInt32}}
"""  # noqa: S608  (constant SQL; values are bound)
BEFORE_012 = f"""
SELECT trace_id, tenant, min(started_at) AS first_started,
       round(dateDiff('microsecond', min(started_at), max(ended_at)) / 1000, 2) AS total_ms,
       if(countIf(status = 'error') > 0, 'error', 'ok') AS outcome,
       anyIf(template_id, template_id != '') AS prompt_id,
       anyIf(template_version, template_version != '') AS prompt_version,
       anyIf(label, label != '') AS served_label, anyIf(experiment, experiment != '') AS experiment_name,
       anyIf(arm, arm != '') AS experiment_arm, anyIf(retrieval_mode, retrieval_mode != '') AS mode,
       anyIf(question, question != '') AS asked, anyIf(answer, answer != '') AS answered,
       anyIf(conversation_id, conversation_id != '') AS conversation,
       round(sum(cost_usd), 6) AS cost, groupUniqArray(stage) AS stages
FROM telemetry
WHERE trace_id IN ({_OLD_MATCHING}) AND {_OLD_WINDOW}
GROUP BY trace_id, tenant
ORDER BY first_started DESC
"""  # noqa: S608  (constant SQL; values are bound)


async def fill(store: ChdbStore, first: int, rows: int, span_ms: int, codes: int) -> float:
    started = time.perf_counter()
    chunk = 2_000_000
    for at in range(first, first + rows, chunk):
        size = min(chunk, first + rows - at)
        await store.command(
            FILL,
            {
                "first": at,
                "rows": size,
                "span_ms": span_ms,
                "codes": codes,
                "words": list(WORDS),
                "openers": list(OPENERS),
                "verbs": list(VERBS),
            },
        )
        await store.command(FEEDBACK, {"first": at // 40, "rows": size // 40, "span_ms": span_ms})
        print(f"  filled {at + size:,} rows ({time.perf_counter() - started:.0f} s)", flush=True)
    return time.perf_counter() - started


async def settled(store: ChdbStore, limit_s: float = 300) -> float:
    """Wait for the merges and mutations the fill started (they run in this process, so
    their CPU would count against the queries); returns the seconds waited."""
    started = time.perf_counter()
    while time.perf_counter() - started < limit_s:
        busy = await store.query(
            "SELECT (SELECT count() FROM system.merges) "
            "+ (SELECT count() FROM system.mutations WHERE NOT is_done)"
        )
        if not busy.rows[0][0]:
            break
        await asyncio.sleep(1)
    return time.perf_counter() - started


async def at_size(
    data: Analytics, rows: int, runs: int, compare_runs: int, days: float, codes: int
) -> dict[str, Any]:
    store = data.store
    end = utc_now() + timedelta(seconds=1)
    found = await store.query(
        "SELECT trace_id FROM telemetry WHERE stage = 'generation' "
        "AND started_at >= now64(3) - INTERVAL 1 DAY LIMIT 200"
    )
    trace_ids = [r[0] for r in found.rows]
    rng = random.Random(7)
    rare = [f"tk{rng.randrange(codes)}" for _ in range(runs + 1)]

    def search(
        text: str | list[str],
        since: timedelta,
        sql: Callable[[str], str] = search_sql,
        extra: str = "",
        tenant: str = "",
    ) -> Callable[[int], Awaitable[Any]]:
        async def call(n: int) -> Any:
            word = text if isinstance(text, str) else text[n]
            return await store.query(
                sql(word) + extra,
                {
                    "start": _when(end - since),
                    "end": _when(end),
                    "tenant": tenant,
                    "hide": "llmops-probe",
                    "status": "",
                    "prompt": "",
                    "label": "",
                    "mode": "",
                    "text": word,
                    "conversation": "",
                    "limit": 100,
                },
            )

        return call

    def no_index(text: str) -> str:
        return search_sql(text)

    day, month = timedelta(days=1), timedelta(days=days)
    cases: dict[str, Callable[[int], Awaitable[Any]]] = {
        "traces page, no text (24h)": search("", day),
        "search rare word (24h)": search(rare, day),
        "search rare word (all)": search(rare, month),
        "search medium word (all)": search("invoice", month),
        "search common word (24h)": search("account", day),
        "search common word (all)": search("account", month),
        "search three words (all)": search("reset my account", month),
        "search common word, one tenant (all)": search("account", month, tenant="tenant-7"),
        "search rare word (all), no index": search(rare, month, no_index, " SETTINGS use_skip_indexes = 0"),
        "search common word (all), no index": search(
            "account", month, no_index, " SETTINGS use_skip_indexes = 0"
        ),
        "search rare word (all), substring (before 012)": search(rare, month, lambda _: BEFORE_012),
        "search common word (all), substring (before 012)": search("account", month, lambda _: BEFORE_012),
        "trace detail": lambda n: data.trace_rows(trace_ids[n % len(trace_ids)]),
        "overview page (1h)": lambda n: _overview(data, timedelta(hours=1)),
        "overview page (24h)": lambda n: _overview(data, day),
        "conversations page (24h)": lambda n: data.conversations(day),
        "conversation's traces": lambda n: data.search_traces(
            end - month, end, conversation=f"conv-{(n + 1) * 37}", limit=1000
        ),
        "alerts page (7d)": lambda n: asyncio.gather(
            data.alerts(timedelta(days=7)), data.alert_events(timedelta(days=7))
        ),
    }
    results = {}
    for name, call in cases.items():
        comparison = "no index" in name or "substring" in name
        results[name] = await measure(call, compare_runs if comparison else runs)
        print(f"  {name}: {results[name]}", flush=True)
    counts = await store.query(
        "SELECT countIf(hasAllTokens(lower(question), 'account')) AS common, "
        "countIf(hasAllTokens(lower(question), {rare:String})) AS rare, "
        "countIf(started_at >= now64(3) - INTERVAL 1 DAY) AS last_day "
        "FROM telemetry WHERE stage = 'prompting'",
        {"rare": rare[0]},
    )
    return {"rows": rows, "matches": counts.dicts()[0], "queries": results}


async def _overview(data: Analytics, since: timedelta) -> None:
    await asyncio.gather(collect(data, since), data.end_to_end(since))


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


async def main(args: argparse.Namespace) -> dict[str, Any]:
    sizes = sorted(int(s) for s in args.rows.split(","))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="llmops-console-bench-"))
    store = ChdbStore(ClickHouseSettings(path=workdir / "chdb", database="bench"))
    await store.open()
    data = Analytics(store)
    span_ms = int(args.days * 86_400_000)
    # Each ticket code recurs in about `--rare` traces at the largest size.
    codes = max(1, sizes[-1] // 4 // args.rare)
    out: dict[str, Any] = {"days": args.days, "runs": args.runs, "workdir": str(workdir), "sizes": []}
    try:
        await apply(store, Path(__file__).parents[1] / "connectors" / "ddl")
        await store.command(ALERTS)
        stored = 0
        for size in sizes:
            fill_s = await fill(store, stored, size - stored, span_ms, codes)
            settle_s = await settled(store)
            stored = size
            parts = await store.query("SELECT count() FROM system.parts WHERE active AND table = 'telemetry'")
            result = await at_size(data, size, args.runs, args.compare_runs, args.days, codes)
            result.update(fill_s=round(fill_s, 1), settle_s=round(settle_s, 1), parts=parts.rows[0][0])
            out["sizes"].append(result)
    finally:
        await store.close()
    return out


def table(result: dict[str, Any]) -> str:
    sizes = result["sizes"]
    header = ["query", *(f"{s['rows'] / 1e6:g}M p50 / p95 ms (cpu p95)" for s in sizes)]
    rows = []
    for name in sizes[0]["queries"]:
        cells = [name]
        for s in sizes:
            q = s["queries"][name]
            cells.append(f"{q['p50_ms']:.0f} / {q['p95_ms']:.0f} ({q['cpu_p95_ms']:.0f})")
        rows.append(cells)
    return text_table(header, rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", default="1000000", help="Telemetry rows, comma-separated sizes.")
    parser.add_argument("--runs", type=int, default=20, help="Samples of each query per size.")
    parser.add_argument("--compare-runs", type=int, default=5, help="Samples of the no-index comparisons.")
    parser.add_argument("--days", type=float, default=30.0, help="Span the traces are spread over.")
    parser.add_argument("--rare", type=int, default=10, help="Traces per rare word at the largest size.")
    parser.add_argument("--workdir", type=Path, default=None, help="Keep the chDB directory here.")
    result = asyncio.run(main(parser.parse_args()))
    print(json.dumps(result, indent=2))
    print(table(result))
