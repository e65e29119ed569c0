"""Counting what a fault left behind, for the crash tests and `make chaos`
(benchmarks/chaos.py): read a topic from its start to its end and count what each message
names, how many members of the worker group hold partitions of the queries topic, and the
raw analytics rows (no FINAL, so a duplicate shows) of a tenant's feedback (and its rows
after FINAL) and of a set of
traces' telemetry."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable

from confluent_kafka import Consumer, Message, TopicPartition

from connectors.analytics import Analytics
from connectors.kafka import librdkafka_config
from schemas import ResponseGenerated, decode
from topology.stack import LocalStack


def on_topic(stack: LocalStack, topic: str, pick: Callable[[Message], str | None]) -> Counter[str]:
    """Read `topic` from the start to its end; count what `pick(message)` names (messages
    with a key only)."""
    consumer = Consumer(librdkafka_config(stack.settings.kafka, **{"group.id": f"t-{uuid.uuid4().hex}"}))
    counts: Counter[str] = Counter()
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions
        }
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        done: set[int] = {p for p, end in ends.items() if end == 0}
        while len(done) < len(partitions):
            for message in consumer.consume(500, timeout=1.0):
                partition, offset = message.partition(), message.offset()
                if message.error() is not None or partition is None or offset is None:
                    continue
                if offset + 1 >= ends[partition]:
                    done.add(partition)
                if message.key() and (name := pick(message)) is not None:
                    counts[name] += 1
    finally:
        consumer.close()
    return counts


def responses_on_topic(stack: LocalStack, traces: set[str]) -> Counter[str]:
    """How many ResponseGenerated each of `traces` has on the responses topic."""
    return on_topic(
        stack,
        stack.settings.kafka.topics.responses,
        lambda m: (
            decode(m.value() or b"", ResponseGenerated).trace_id
            if (m.key() or b"").decode() in traces and b'"ResponseGenerated"' in (m.value() or b"")
            else None
        ),
    )


def members_with_queries(stack: LocalStack) -> int:
    """How many members of the worker group hold partitions of the queries topic."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(librdkafka_config(stack.settings.kafka))
    group = stack.settings.worker.stages_group()
    description = admin.describe_consumer_groups([group])[group].result(timeout=10)
    queries = stack.settings.kafka.topics.queries
    return sum(any(tp.topic == queries for tp in m.assignment.topic_partitions) for m in description.members)


async def stored(stack: LocalStack, owner: str, traces: list[str]) -> dict[str, int]:
    """Raw rows (no FINAL: duplicates would show) for this tenant's feedback and these traces'
    telemetry; and the tenant's feedback after FINAL (one row per rating) with how many of
    those are linked to their trace."""
    analytics = await Analytics.connect(stack.settings.clickhouse, stack.settings.analytics)
    try:
        [feedback] = (
            await analytics.query(
                "SELECT count() AS rows, uniqExact(event_id) AS events FROM feedback "
                "WHERE tenant = {t:String}",
                {"t": owner},
            )
        ).dicts()
        # A rating stored before its trace's telemetry is stored again, linked to the trace,
        # as a higher revision: FINAL counts each rating once, the raw rows both revisions.
        [final] = (
            await analytics.query(
                "SELECT count() AS rows, countIf(trace_seen) AS linked FROM feedback FINAL "
                "WHERE tenant = {t:String}",
                {"t": owner},
            )
        ).dicts()
        [telemetry] = (
            await analytics.query(
                "SELECT count() AS rows, uniqExact(event_id) AS events, "
                "uniqExactIf(trace_id, stage = 'generation' AND status = 'ok') AS answered "
                "FROM telemetry WHERE has({traces:Array(String)}, trace_id)",
                {"traces": traces},
            )
        ).dicts()
    finally:
        await analytics.close()
    return {
        "feedback_rows": feedback["rows"],
        "feedback_events": feedback["events"],
        "feedback_final_rows": final["rows"],
        "feedback_linked": final["linked"],
        "telemetry_rows": telemetry["rows"],
        "telemetry_events": telemetry["events"],
        "traces_answered": telemetry["answered"],
    }
