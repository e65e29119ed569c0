"""`/metrics` of the analytics process on the embedded stack, read with prometheus_client's
own parser: the per-stage counters and the GenAI duration histogram move by exactly the
questions asked, a redelivered telemetry event counts once, the lag gauge is there per
stage and partition, and no label value is a trace id or a question."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from connectors.analytics import Analytics
from connectors.client import Client
from connectors.kafka import Publisher
from schemas import StageCompleted, encode, new_id, utc_now
from tests.integration.test_pipeline import docs, tenant
from topology.stack import LocalStack

QUESTIONS = 6
QUERY_STAGES = ("prompting", "embedding", "retrieval", "generation")
HEX_ID = re.compile(r"[0-9a-f]{16,}")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(stack: LocalStack) -> tuple[Samples, str]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{stack.settings.analytics.url}/metrics") as response:
            assert response.status == 200
            text = await response.text()
            content_type = response.headers["Content-Type"]
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, content_type


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum over the series of `name` whose labels include `labels` (0 when none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


async def settled(stack: LocalStack) -> tuple[Samples, str]:
    """A scrape once the counters stand still for 3 s (the stack's readiness probes, and
    earlier tests' traffic, may still be arriving)."""
    last, content_type = await scrape(stack)
    for _ in range(20):
        await asyncio.sleep(3)
        now, content_type = await scrape(stack)
        if value(now, "llmops_stage_requests_total") == value(last, "llmops_stage_requests_total"):
            return now, content_type
        last = now
    raise AssertionError("telemetry kept arriving for a minute")


async def until(what: str, check: Callable[[], Awaitable[Any]], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = await check()
        if found:
            return found
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f}s"
        await asyncio.sleep(0.5)


async def test_metrics_count_each_request_once_with_bounded_labels(tansu_stack: LocalStack):
    stack, owner = tansu_stack, tenant("metrics")
    before, content_type = await settled(stack)
    assert content_type.startswith("text/plain; version=0.0.4")
    async with Client(stack.settings) as client:
        await client.ingest(docs("lambda"), tenant=owner)
        questions = [f"What is a lambda, case {i}?" for i in range(QUESTIONS)]
        answers = await asyncio.gather(*(client.ask(q, tenant=owner, timeout=60) for q in questions))
    traces = {a.trace_id for a in answers}

    async def counted() -> Samples | None:
        now, _ = await scrape(stack)
        moved = value(now, "llmops_stage_requests_total", stage="generation") - value(
            before, "llmops_stage_requests_total", stage="generation"
        )
        return now if moved >= QUESTIONS else None

    await until("the generation counter moving by the questions asked", counted, 30)
    await asyncio.sleep(3)  # the sink's next batches: nothing more may arrive
    after, _ = await scrape(stack)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    for stage in QUERY_STAGES:
        assert moved("llmops_stage_requests_total", stage=stage) == QUESTIONS, stage
        assert moved("llmops_stage_duration_seconds_count", stage=stage, status="ok") == QUESTIONS, stage
    assert moved("llmops_stage_errors_total") == 0 and moved("llmops_dead_letters_total") == 0
    chat = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "llmops.extractive"}
    assert moved("gen_ai_client_operation_duration_seconds_count", **chat) == QUESTIONS
    assert (
        moved("gen_ai_client_operation_duration_seconds_count", gen_ai_operation_name="embeddings")
        == QUESTIONS
    )
    # Tokens per tenant equal ClickHouse's sums for the tenant (extractive counts words).
    analytics = await Analytics.connect(stack.settings.clickhouse, stack.settings.analytics)
    try:
        stored = await analytics.query(
            "SELECT sum(input_tokens) AS i, sum(output_tokens) AS o, "
            "sumIf(input_tokens, stage = 'generation') AS chat_in FROM telemetry WHERE tenant = {t:String}",
            {"t": owner},
        )
    finally:
        await analytics.close()
    [sums] = stored.dicts()
    assert sums["chat_in"] > 0
    assert value(after, "llmops_tokens_total", tenant=owner, type="input") == sums["i"]
    assert value(after, "llmops_tokens_total", tenant=owner, type="output") == sums["o"]
    assert moved("gen_ai_client_token_usage_sum", gen_ai_token_type="input", **chat) == sums["chat_in"]
    assert moved("gen_ai_client_token_usage_count", gen_ai_token_type="output", **chat) == QUESTIONS

    labels = {v for (_, ls) in after for _, v in ls}
    assert not labels & traces, "a trace id is a label value"
    assert not [v for v in labels if HEX_ID.search(v)], "an id-like label value"
    assert not labels & set(questions)

    await redelivered_once(stack)

    async def lag_sampled() -> Samples | None:
        now, _ = await scrape(stack)
        found = {dict(ls)["stage"] for (n, ls) in now if n == "llmops_consumer_lag_messages"}
        return now if set(QUERY_STAGES) <= found else None

    lag = await until("the consumer lag gauge", lag_sampled, 30)
    partitions = {dict(ls)["partition"] for (n, ls) in lag if n == "llmops_consumer_lag_messages"}
    assert partitions == {str(p) for p in range(stack.settings.kafka.partitions)}


async def redelivered_once(stack: LocalStack) -> None:
    """One telemetry event published twice (as a redelivery would) counts once."""
    before, _ = await scrape(stack)
    trace, now = new_id(), utc_now()

    def event(stage: str) -> StageCompleted:
        return StageCompleted(
            trace_id=trace,
            tenant="metrics-dup",
            producer=stage,
            stage=stage,
            started_at=now - timedelta(milliseconds=5),
            ended_at=now,
            latency_ms=5.0,
            status="ok",
        )

    twice, after = event("dupcheck"), event("dupsentinel")
    publisher = Publisher(stack.settings.kafka, client_id="metrics-test")
    await publisher.start()
    try:
        topic = stack.settings.kafka.topics.telemetry
        # One key: one partition, so the sentinel is stored after both copies.
        await publisher.publish(
            topic, [(trace.encode(), encode(twice))] * 2 + [(trace.encode(), encode(after))]
        )
    finally:
        await publisher.stop()

    async def sentinel() -> Samples | None:
        now_samples, _ = await scrape(stack)
        return now_samples if value(now_samples, "llmops_stage_requests_total", stage="dupsentinel") else None

    seen = await until("the sentinel telemetry event", sentinel, 30)
    assert (
        value(seen, "llmops_stage_requests_total", stage="dupcheck")
        - value(before, "llmops_stage_requests_total", stage="dupcheck")
        == 1
    )
