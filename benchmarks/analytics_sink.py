"""The analytics sink into chDB, and the report queries at scale.

    python -m benchmarks.analytics_sink [--events N] [--single N] [--rows N] [--days D] [--runs 3]
        [--rate 88] [--windows 1,3] [--steady-seconds 30]

1. Sink throughput: StageCompleted events written through the sink's own path
   (`insert_new`: the idempotency lookup, then the insert), in batches of the sink's
   default size, against one insert per event, in the same run. Also the batched path
   without the lookup, to show what idempotency costs.
2. Report queries at --rows telemetry rows (spread over --days, generated in SQL so the
   materialized views fill as in production): the latency of each named query, and the
   per-stage percentiles computed from the raw table as the baseline the rollup replaces.
3. A steady rate: --rate events a second (88: the telemetry of 20 answers a second) written
   through `insert_new` in one batch per window, for each of --windows (the sink's
   `batch_within_s`; the first is the baseline), --steady-seconds each: the process's CPU
   (all its threads, chDB's background merges included) per event and in cores. It runs
   first, before the other parts leave merges behind.

Prints JSON and a table; medians of --runs runs. Needs no data directory: the events are
synthetic; chDB writes to a temporary directory (--workdir to keep it)."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

from agents import telemetry
from agents.sink import SinkSettings
from benchmarks.console_search import cpu_s
from connectors.analytics import Analytics
from connectors.clickhouse import AnalyticsStore, ChdbStore, ClickHouseSettings
from connectors.migrations import apply
from schemas import StageCompleted, utc_now
from topology.report import text_table

STAGES = ("prompting", "embedding", "retrieval", "generation")


def events(n: int, payloads: bool = False) -> list[StageCompleted]:
    """`payloads`: with what the pipeline's rows carry besides (the question, the embedding's
    query vector, the rendered prompt and passage texts)."""
    now = utc_now()
    out = []
    for i in range(n):
        stage = STAGES[i % 4]
        out.append(
            StageCompleted(
                trace_id=f"{uuid.uuid4().hex}" if stage == "prompting" else out[-1].trace_id,
                tenant=f"tenant-{i % 7}",
                producer=stage,
                stage=stage,
                started_at=now,
                ended_at=now + timedelta(milliseconds=i % 90),
                latency_ms=float(i % 90),
                status="ok",
                model="gpt-4o-mini" if stage == "generation" else "",
                input_tokens=600 if stage == "generation" else 0,
                output_tokens=80 if stage == "generation" else 0,
                cost_usd=0.000138 if stage == "generation" else 0.0,
                passage_ids=["a1b2c3", "d4e5f6", "a7b8c9", "d0e1f2"] if stage == "retrieval" else [],
                passage_scores=[0.71, 0.66, 0.61, 0.58] if stage == "retrieval" else [],
                answer="An answer of about the usual length, with one citation [1]."
                if stage == "generation"
                else "",
            )
        )
        if payloads:
            out[-1] = out[-1].model_copy(update=_payloads(i, stage))
    return out


def _payloads(i: int, stage: str) -> dict:
    fields: dict = {"question": "What is the role of the question in these rows?"}
    if stage == "embedding":
        fields["query_vector"] = [((i * 31 + k) % 997) / 997 for k in range(384)]
    if stage == "generation":
        fields["rendered_prompt"] = "Answer from the passages.\n" + "A passage of the corpus. " * 60
        fields["passage_texts"] = {p: "A passage of the corpus. " * 15 for p in ("a1b2c3", "d4e5f6")}
    return fields


async def fresh(store: AnalyticsStore, settings: ClickHouseSettings, database: str) -> None:
    await store.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    await store.command(f"USE {database}")
    await apply(store, settings.ddl_dir)


async def throughput(
    store: AnalyticsStore, settings: ClickHouseSettings, batch: list, size: int, dedup: bool
) -> float:
    await fresh(store, settings, f"bench_{uuid.uuid4().hex[:8]}")
    rows = await telemetry.rows(batch, store)
    started = time.perf_counter()
    for i in range(0, len(rows), size):
        chunk = rows[i : i + size]
        if dedup:
            await Analytics(store).insert_new("telemetry", chunk)
        else:
            await store.insert("telemetry", chunk)
    elapsed = time.perf_counter() - started
    stored = (await store.query("SELECT count() FROM telemetry")).rows[0][0]
    assert stored == len(rows), (stored, len(rows))
    return len(rows) / elapsed


FILL = """
INSERT INTO telemetry (event_id, trace_id, tenant, stage, producer, started_at, ended_at, latency_ms,
    status, error_class, model, template_id, template_version, input_tokens, output_tokens, cost_usd,
    priced, passage_ids, passage_scores, answer)
SELECT
    toString(generateUUIDv4()) AS event_id,
    concat('trace-', toString(intDiv(number, 4))) AS trace_id,
    concat('tenant-', toString(intDiv(number, 4) % 20)) AS tenant,
    ['prompting', 'embedding', 'retrieval', 'generation'][number % 4 + 1] AS stage,
    stage AS producer,
    now64(3) - toIntervalMillisecond(intDiv(number, 4) * {spread_ms:UInt64}) AS started_at,
    started_at + toIntervalMillisecond(latency_ms) AS ended_at,
    (number * 7919) % 250 + [1, 10, 15, 5][number % 4 + 1] AS latency_ms,
    if(number % 997 = 0, 'error', 'ok') AS status,
    if(status = 'error', 'TransientError', '') AS error_class,
    if(stage = 'generation', ['gpt-4o-mini', 'gpt-4o'][number % 2 + 1], '') AS model,
    'rag-answer' AS template_id,
    toString(number % 3 + 1) AS template_version,
    if(stage = 'generation', 400 + number % 400, 0) AS input_tokens,
    if(stage = 'generation', 50 + number % 100, 0) AS output_tokens,
    if(stage = 'generation', (input_tokens * 0.15 + output_tokens * 0.6) / 1e6, 0) AS cost_usd,
    true AS priced,
    if(stage = 'retrieval', ['p1', 'p2', 'p3', 'p4'], []) AS passage_ids,
    if(stage = 'retrieval', [0.7, 0.6, 0.5, 0.4], []) AS passage_scores,
    if(stage = 'generation', 'An answer of about the usual length, with one citation [1].', '') AS answer
FROM numbers({rows:UInt64})
"""

FEEDBACK = """
INSERT INTO feedback (event_id, trace_id, tenant, occurred_at, name, data_type, score, category, comment,
    user, trace_seen, template_id, template_version, model, revision)
SELECT toString(generateUUIDv4()), concat('trace-', toString(number * 10)),
    concat('tenant-', toString(number * 10 % 20)), now64(3) - toIntervalSecond(number % 604800), 'user',
    'BOOLEAN', toFloat64(number % 3 != 0), '', '', '', true, 'rag-answer', toString(number % 3 + 1),
    'gpt-4o-mini', 0
FROM numbers({rows:UInt64})
"""

RAW_BASELINE = """
SELECT stage, count() AS events, countIf(status = 'error') AS errors,
       quantiles(0.5, 0.95, 0.99)(latency_ms) AS q
FROM telemetry WHERE started_at >= now64(3) - toIntervalDay(1) GROUP BY stage ORDER BY stage
"""


async def steady(
    store: AnalyticsStore, settings: ClickHouseSettings, rate: float, window_s: float, seconds: float
) -> dict:
    """One batch of `rate * window_s` events every `window_s`, as the sink writes at a
    steady rate; the process's CPU over the run."""
    await fresh(store, settings, f"bench_{uuid.uuid4().hex[:8]}")
    size = max(1, round(rate * window_s))
    batches = max(1, round(seconds / window_s))
    written = [await telemetry.rows(events(size, payloads=True), store) for _ in range(batches)]
    analytics = Analytics(store)
    await analytics.insert_new("telemetry", written.pop())  # the first insert opens the tables
    cpu, started = cpu_s(), time.monotonic()
    for i, rows in enumerate(written):
        await analytics.insert_new("telemetry", rows)
        await asyncio.sleep(max(0.0, started + (i + 1) * window_s - time.monotonic()))
    cpu, elapsed = cpu_s() - cpu, time.monotonic() - started
    return {
        "window_s": window_s,
        "inserts": len(written),
        "events": size * len(written),
        "cpu_ms_per_event": cpu * 1000 / (size * len(written)),
        "cores": cpu / elapsed,
    }


async def timed(fn, runs: int) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


async def main(args: argparse.Namespace) -> dict:
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="llmops-bench-"))
    settings = ClickHouseSettings(path=workdir / "chdb", database="bench")
    store = ChdbStore(settings)
    await store.open()
    batch_size = SinkSettings().batch_max
    try:
        # First: the other parts' background merges would otherwise be counted in it.
        windows = [float(w) for w in args.windows.split(",")]
        steady_runs = [await steady(store, settings, args.rate, w, args.steady_seconds) for w in windows]
        batch = events(args.events)
        single = batch[: args.single]
        sink = {"batched": [], "batched_no_dedup": [], "one_per_event": []}
        for _ in range(args.runs):
            sink["batched"].append(await throughput(store, settings, batch, batch_size, dedup=True))
            sink["batched_no_dedup"].append(await throughput(store, settings, batch, batch_size, dedup=False))
            sink["one_per_event"].append(await throughput(store, settings, single, 1, dedup=True))
        sink_median = {k: statistics.median(v) for k, v in sink.items()}

        await fresh(store, settings, "bench_report")
        started = time.perf_counter()
        spread_ms = int(args.days * 86_400_000 / (args.rows / 4))
        await store.command(FILL, {"rows": args.rows, "spread_ms": spread_ms})
        await store.command(FEEDBACK, {"rows": args.rows // 40})
        fill_s = time.perf_counter() - started
        analytics = Analytics(store)
        day, week = timedelta(days=1), timedelta(days=7)
        queries = {
            "latency (rollup, 24h)": lambda: analytics.latency(day),
            "latency (raw table, 24h, baseline)": lambda: store.query(RAW_BASELINE),
            # The buckets the report picks for a day of data (about 60 points per line).
            "latency over time (rollup, 24h)": lambda: analytics.latency_over_time(day, 1440),
            "cost per tenant and model (7d)": lambda: analytics.cost(week),
            "feedback per prompt version (7d)": lambda: analytics.feedback(week),
            "feedback over time (7d)": lambda: analytics.feedback_over_time(week, 3 * 3600),
            "slowest traces (24h)": lambda: analytics.slowest(day, 10),
            "one trace": lambda: analytics.trace("trace-12345"),
        }
        query_ms = {name: await timed(fn, args.runs) for name, fn in queries.items()}
        rollup_rows = (await store.query("SELECT count() FROM stage_minutes")).rows[0][0]
    finally:
        await store.close()
    return {
        "sink_events_per_s": sink_median,
        "sink_runs": sink,
        "batch_size": batch_size,
        "batched_vs_one_per_event": sink_median["batched"] / sink_median["one_per_event"],
        "idempotency_cost": 1 - sink_median["batched"] / sink_median["batched_no_dedup"],
        "telemetry_rows": args.rows,
        "feedback_rows": args.rows // 40,
        "days": args.days,
        "stage_minutes_rows": rollup_rows,
        "fill_s": fill_s,
        "query_ms_median": query_ms,
        "rollup_vs_raw_latency_query": query_ms["latency (raw table, 24h, baseline)"]
        / query_ms["latency (rollup, 24h)"],
        "steady_rate": args.rate,
        "steady": steady_runs,
        "steady_cpu_vs_first_window": [
            r["cpu_ms_per_event"] / steady_runs[0]["cpu_ms_per_event"] for r in steady_runs
        ],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=20_000, help="events per batched run")
    parser.add_argument("--single", type=int, default=1_000, help="events per one-insert-per-event run")
    parser.add_argument("--rows", type=int, default=1_000_000, help="telemetry rows for the query timings")
    parser.add_argument("--days", type=float, default=1.0, help="the telemetry rows span this many days")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, help="keep chDB data here")
    parser.add_argument("--rate", type=float, default=88.0, help="events a second for the steady-rate part")
    parser.add_argument(
        "--windows",
        default="1,3",
        help="batch windows in seconds for the steady-rate part; the first is the baseline",
    )
    parser.add_argument("--steady-seconds", type=float, default=30.0, help="length of each steady-rate run")
    result = asyncio.run(main(parser.parse_args()))
    print(json.dumps(result, indent=2))
    s = result["sink_events_per_s"]
    print()
    print(
        text_table(
            ("sink into chDB", "events/s"),
            [
                [f"batched ({result['batch_size']}/insert, with idempotency lookup)", round(s["batched"])],
                ["batched, no lookup", round(s["batched_no_dedup"])],
                ["one insert per event, with lookup", round(s["one_per_event"])],
            ],
        )
    )
    print(f"batched / one-per-event: {result['batched_vs_one_per_event']:.0f}x")
    print()
    print(
        text_table(
            (f"report query at {result['telemetry_rows']:,} telemetry rows", "median ms"),
            [[k, round(v, 1)] for k, v in result["query_ms_median"].items()],
        )
    )
    print()
    print(
        text_table(
            (
                f"steady {result['steady_rate']:g} events/s, window s",
                "inserts",
                "CPU ms/event",
                "cores",
                "vs first",
            ),
            [
                [
                    r["window_s"],
                    r["inserts"],
                    round(r["cpu_ms_per_event"], 3),
                    round(r["cores"], 3),
                    f"{x:.2f}x",
                ]
                for r, x in zip(result["steady"], result["steady_cpu_vs_first_window"], strict=True)
            ],
        )
    )
