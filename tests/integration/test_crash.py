"""Crashes on real Apache Kafka: SIGKILL the worker and the analytics process mid-stream
and restart them; kill one of two workers for good. Every query gets exactly one answer
at the client (at-least-once inside, deduplicated by trace id at the edge), ClickHouse
holds every feedback event once and every telemetry event once."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
from confluent_kafka import Consumer, TopicPartition

from connectors.client import Client
from connectors.kafka import librdkafka_config
from schemas import QueryReceived, ResponseGenerated, decode
from tests.integration.test_pipeline import docs, tenant
from topology.faults import members_with_queries, on_topic, responses_on_topic, stored
from topology.stack import LocalStack

QUERIES, FEEDBACK, RATE_PER_S = 60, 60, 15.0


async def steady(count: int, send) -> list:  # type: ignore[no-untyped-def]
    """Start `send(i)` at RATE_PER_S; return what each returned (or raised)."""
    tasks = []
    for i in range(count):
        tasks.append(asyncio.create_task(send(i)))
        await asyncio.sleep(1 / RATE_PER_S)
    return await asyncio.gather(*tasks, return_exceptions=True)


async def settled(stack: LocalStack, owner: str, traces: list[str], timeout: float = 90) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        counts = await stored(stack, owner, traces)
        if counts["feedback_rows"] >= FEEDBACK and counts["traces_answered"] == len(traces):
            await asyncio.sleep(3)  # and whatever a redelivery would still add
            return await stored(stack, owner, traces)
        assert time.monotonic() < deadline, counts
        await asyncio.sleep(1)


async def test_killed_worker_and_analytics_lose_and_double_nothing(kafka_stack: LocalStack):
    stack, owner = kafka_stack, tenant("crash")
    async with Client(stack.settings) as client:
        await client.ingest(docs("lambda", "with"), tenant=owner)

        async def ask(i: int) -> ResponseGenerated:
            return await client.ask(f"What is a lambda? ({i})", tenant=owner, timeout=240)

        async def rate(i: int) -> None:
            await client.feedback(f"crash-trace-{i}", i % 2 == 0, tenant=owner)

        async def crash() -> dict[str, float]:
            await asyncio.sleep(1.5)
            await asyncio.to_thread(stack.stop_process, "worker", signal.SIGKILL)
            await asyncio.sleep(0.5)
            await asyncio.to_thread(stack.stop_process, "analytics", signal.SIGKILL)
            began = time.monotonic()
            await asyncio.to_thread(stack.start_analytics)
            analytics_s = time.monotonic() - began
            await asyncio.to_thread(stack.start_worker)
            return {"analytics_back_s": analytics_s, "worker_back_s": time.monotonic() - began}

        answers, ratings, timings = await asyncio.gather(
            steady(QUERIES, ask), steady(FEEDBACK, rate), crash()
        )
    failed = [a for a in answers + ratings if isinstance(a, BaseException)]
    assert not failed, failed[:3]
    traces = [a.trace_id for a in answers]
    assert len(set(traces)) == QUERIES and all(a.question.startswith("What is a lambda?") for a in answers)

    on_topic = await asyncio.to_thread(responses_on_topic, stack, set(traces))
    assert set(on_topic) == set(traces)
    counts = await settled(stack, owner, traces)
    assert counts["feedback_rows"] == counts["feedback_events"] == FEEDBACK
    assert counts["telemetry_rows"] == counts["telemetry_events"]
    assert counts["traces_answered"] == QUERIES
    print(
        f"crash: {QUERIES} queries answered once each at the client; responses on the topic "
        f"{sum(on_topic.values())} ({sum(n - 1 for n in on_topic.values())} redelivered inside); "
        f"{counts}; restart {timings}"
    )


async def test_one_of_two_workers_killed_the_other_takes_over(kafka_stack: LocalStack):
    stack, owner = kafka_stack, tenant("failover")
    await asyncio.to_thread(stack.start_worker, "worker-2")
    deadline = time.monotonic() + 60
    while await asyncio.to_thread(members_with_queries, stack) < 2:
        assert time.monotonic() < deadline, "the second worker never got a partition"
        await asyncio.sleep(1)
    async with Client(stack.settings) as client:
        await client.ingest(docs("lambda"), tenant=owner)

        async def ask(i: int) -> ResponseGenerated:
            return await client.ask(f"What is a lambda? ({i})", tenant=owner, timeout=120)

        async def kill_one() -> float:
            await asyncio.sleep(1.5)
            began = time.monotonic()
            # The newcomer dies: the stack is left as the other tests expect it ("worker").
            await asyncio.to_thread(stack.stop_process, "worker-2", signal.SIGKILL)
            while await asyncio.to_thread(members_with_queries, stack) != 1:
                await asyncio.sleep(0.5)
            return time.monotonic() - began

        answers, taken_over_s = await asyncio.gather(steady(QUERIES, ask), kill_one())
    failed = [a for a in answers if isinstance(a, BaseException)]
    if failed:
        lost = {f"What is a lambda? ({i})" for i, a in enumerate(answers) if isinstance(a, BaseException)}
        pytest.fail(f"{len(failed)} of {QUERIES} unanswered: {failed[:3]}; " + await lost_where(stack, lost))
    assert len({a.trace_id for a in answers}) == QUERIES
    async with Client(stack.settings) as client:  # the survivor serves alone now: every partition is its
        assert (await client.ask("What is a lambda?", tenant=owner, timeout=60)).passages
    print(f"failover: {QUERIES} of {QUERIES} answered; one member left {taken_over_s:.1f}s after the kill")


async def lost_where(stack: LocalStack, questions: set[str]) -> str:
    """Where the unanswered questions' traces stopped: how many of them reached each topic."""
    topics = stack.settings.kafka.topics
    queries = await asyncio.to_thread(
        on_topic,
        stack,
        topics.queries,
        lambda m: m.key().decode() if decode(m.value(), QueryReceived).question in questions else None,
    )
    traces = set(queries)
    reached = {
        name: len(
            await asyncio.to_thread(
                on_topic,
                stack,
                getattr(topics, name),
                lambda m: m.key().decode() if m.key().decode() in traces else None,
            )
        )
        for name in ("prompts", "embeddings", "contexts", "responses", "deadletter")
    }
    where = await asyncio.to_thread(positions, stack, traces)
    return (
        f"their traces on each topic: queries {len(traces)}, "
        + ", ".join(f"{k} {v}" for k, v in reached.items())
        + f"; {where}"
    )


def positions(stack: LocalStack, traces: set[str]) -> str:
    """The lost traces' partition:offset on the queries and prompts topics, against the
    worker group's committed offsets there."""
    topics = stack.settings.kafka.topics
    group_id = stack.settings.worker.stages_group()
    group = Consumer(librdkafka_config(stack.settings.kafka, **{"group.id": group_id}))
    found: dict[str, list[str]] = {}
    committed: dict[str, list[int]] = {}
    try:
        for topic in (topics.queries, topics.prompts):
            partitions = sorted(group.list_topics(topic, timeout=10).topics[topic].partitions)
            tps = group.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
            committed[topic] = [tp.offset for tp in tps]
            at = on_topic(
                stack,
                topic,
                lambda m: f"{m.partition()}:{m.offset()}" if m.key().decode() in traces else None,
            )
            found[topic] = sorted(at)
    finally:
        group.close()
    return f"at partition:offset {found}; group committed {committed}"
