"""The analytics process's sink on a real broker and real chDB, run in this process so
the test can take the store down: nothing is committed while it is down, every event
lands exactly once when it is back, and a full redelivery changes no count."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from agents.runtime import Backoff
from connectors.clickhouse import AnalyticsStore, ChdbStore, ClickHouseSettings
from connectors.kafka import Publisher, TopicSpec, ensure_topics, librdkafka_config
from connectors.migrations import apply
from schemas import decode, encode, utc_now
from schemas.alerts import Alert, SloBreached
from tests.integration.analytics_fixtures import stage_event
from topology.analytics_app import create_analytics_app
from topology.settings import Settings
from topology.stack import LocalStack, free_port
from topology.topics import analytics_app_id, leader_topic, sinks_group

N = 300
# How long the store refuses writes in the outage test: longer than the group's session
# timeout (10 s), and long enough for the sink's retry delay (0.2 s doubling) to reach its
# 5 s cap and retry at it.
OUTAGE_S = 12


def isolated(stack: LocalStack, chdb_dir: Path, app_id: str) -> Settings:
    """The stack's broker, with topics, group, port and database of this test's own."""
    uid = uuid.uuid4().hex[:8]
    base = stack.settings
    topics = base.kafka.topics.model_copy(
        update={
            "telemetry": f"telemetry-{uid}",
            "feedback": f"feedback-{uid}",
            "deadletter": f"dead-{uid}",
            # Shared, the alerts topic handed this test another test's alert (stored elsewhere).
            "alerts": f"alerts-{uid}",
        }
    )
    return base.model_copy(
        update={
            "kafka": base.kafka.model_copy(update={"topics": topics}),
            "worker": base.worker.model_copy(update={"app_id": app_id}),
            "analytics": base.analytics.model_copy(update={"port": free_port()}),
            "clickhouse": ClickHouseSettings(path=chdb_dir, database=f"sink_{uid}"),
            "sink": base.sink.model_copy(
                update={"batch_max": 50, "batch_within_s": 0.2, "backoff": Backoff(first_s=0.2, max_s=5.0)}
            ),
        }
    )


def committed(settings: Settings, app_id: str) -> int:
    """Offsets the sinks' group has committed on the telemetry topic, summed."""
    topic = settings.kafka.topics.telemetry
    consumer = Consumer(librdkafka_config(settings.kafka, **{"group.id": sinks_group(app_id)}))
    try:
        parts = [TopicPartition(topic, p) for p in range(settings.kafka.partitions)]
        return sum(max(tp.offset, 0) for tp in consumer.committed(parts, timeout=10))
    finally:
        consumer.close()


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.3)


async def count(store: AnalyticsStore, sql: str) -> int:
    return int((await store.query(sql)).rows[0][0] or 0)


async def run_sink(
    settings: Settings, store: AnalyticsStore, app_id: str, body: Callable[[], Awaitable[None]]
) -> None:
    app_settings = settings.model_copy(
        update={"worker": settings.worker.model_copy(update={"app_id": app_id})}
    )
    ensure_topics(settings.kafka, [TopicSpec(leader_topic(analytics_app_id(app_id)), 1, {})])
    app = create_analytics_app(app_settings, store)
    await app.start()
    try:
        await body()
    finally:
        await app.stop()


async def test_a_store_outage_delays_rows_but_loses_and_doubles_none(kafka_stack, chdb_dir):
    settings = isolated(kafka_stack, chdb_dir, f"sink-{uuid.uuid4().hex[:6]}")
    topics = settings.kafka.topics
    ensure_topics(
        settings.kafka,
        [
            TopicSpec(t, settings.kafka.partitions, {})
            for t in (topics.telemetry, topics.feedback, topics.deadletter)
        ],
    )
    store = ChdbStore(settings.clickhouse)
    await store.open()
    await apply(store, settings.clickhouse.ddl_dir)
    events = [stage_event(f"trace-{i % 37}", "generation", float(i % 50), model="gpt") for i in range(N)]
    first_group = settings.worker.app_id

    async def outage_then_recovery() -> None:
        await store.command("DETACH TABLE telemetry")  # the store refuses every write
        publisher = Publisher(settings.kafka, client_id="test-sink")
        await publisher.start()
        await publisher.publish(topics.telemetry, [(e.trace_id.encode(), encode(e)) for e in events])
        await publisher.stop()
        await asyncio.sleep(OUTAGE_S)  # the sink keeps trying and backing off meanwhile
        assert committed(settings, first_group) == 0, "offsets committed for rows not stored"
        await store.command("ATTACH TABLE telemetry")
        back = time.monotonic()
        await until(lambda: _equals(store, "SELECT count() FROM telemetry", N))
        print(f"store outage {OUTAGE_S}s: all {N} rows stored {time.monotonic() - back:.1f}s after it ended")
        await until(lambda: _committed_all(settings, first_group))

    try:
        await run_sink(settings, store, first_group, outage_then_recovery)
        assert await count(store, "SELECT count() FROM telemetry") == N
        assert await count(store, "SELECT sum(events) FROM stage_minutes") == N

        # A new group reads the topic from the start: every event delivered again.
        second_group = f"{first_group}-again"

        async def redelivery() -> None:
            await until(lambda: _committed_all(settings, second_group))

        await run_sink(settings, store, second_group, redelivery)
        assert await count(store, "SELECT count() FROM telemetry") == N
        assert await count(store, "SELECT sum(events) FROM stage_minutes") == N
        assert await count(store, "SELECT sum(events) FROM cost_days") == N
    finally:
        await store.command(f"DROP DATABASE IF EXISTS {settings.clickhouse.database}")
        await store.close()


async def _equals(store: AnalyticsStore, sql: str, expected: int) -> bool:
    return await count(store, sql) == expected


async def _at_least(store: AnalyticsStore, sql: str, expected: int) -> bool:
    return await count(store, sql) >= expected


async def _committed_all(settings: Settings, app_id: str) -> bool:
    return await asyncio.to_thread(committed, settings, app_id) == N


async def test_the_monitor_on_the_leader_publishes_alerts(tansu_stack, chdb_dir):
    settings = isolated(tansu_stack, chdb_dir, f"monitor-{uuid.uuid4().hex[:6]}")
    settings = settings.model_copy(
        update={
            "monitor": settings.monitor.model_copy(
                update={"window_s": 2, "grace_s": 1.5, "slo_p95_ms": {"retrieval": 50.0}, "slo_min_events": 5}
            )
        }
    )
    topics = settings.kafka.topics
    names = (topics.telemetry, topics.feedback, topics.deadletter, topics.alerts)
    ensure_topics(settings.kafka, [TopicSpec(t, settings.kafka.partitions, {}) for t in names])
    store = ChdbStore(settings.clickhouse)
    await store.open()
    await apply(store, settings.clickhouse.ddl_dir)
    found: list[Alert] = []

    async def slow_retrieval_then_alert() -> None:
        publisher = Publisher(settings.kafka, client_id="test-monitor")
        await publisher.start()
        deadline = time.monotonic() + 60
        consumer = Consumer(librdkafka_config(settings.kafka, **{"group.id": f"t-{uuid.uuid4().hex}"}))
        consumer.assign([TopicPartition(topics.alerts, p, 0) for p in range(settings.kafka.partitions)])
        try:
            while not found and time.monotonic() < deadline:
                slow = [stage_event(f"slow-{uuid.uuid4().hex[:6]}", "retrieval", 400.0) for _ in range(10)]
                slow = [e.model_copy(update={"started_at": utc_now(), "ended_at": utc_now()}) for e in slow]
                await publisher.publish(topics.telemetry, [(e.trace_id.encode(), encode(e)) for e in slow])
                for message in await asyncio.to_thread(consumer.consume, 50, 0.5):
                    if message.error() is None:
                        found.append(decode(message.value(), SloBreached))
        finally:
            consumer.close()
            await publisher.stop()
        # The monitor only publishes; the alerts sink, a consumer like any other, stores it.
        stored_sql = "SELECT count() FROM alerts WHERE check_name = 'latency_slo'"
        await until(lambda: _at_least(store, stored_sql, 1))

    try:
        await run_sink(settings, store, settings.worker.app_id, slow_retrieval_then_alert)
        assert found and found[0].check == "latency_slo" and found[0].subject == "retrieval"
        stored = (await store.query("SELECT count() FROM alerts WHERE check_name = 'latency_slo'")).rows
        assert stored[0][0] >= 1
    finally:
        await store.command(f"DROP DATABASE IF EXISTS {settings.clickhouse.database}")
        await store.close()
