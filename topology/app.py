"""The faust app factory and composition root: one place builds the clients, the topics
and one agent per stage of the graph. No import-time globals."""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, cast

import faust

from agents.deps import Dependencies
from agents.registry import Registry
from agents.runtime import Incoming, StageRunner
from connectors.embedder import OnnxEmbedder
from connectors.kafka import KafkaSettings
from connectors.llm import build_backend
from connectors.milvus import MilvusStore
from topology.graph import STAGES, Stage
from topology.settings import Settings
from topology.topics import REGISTRY_TABLE, registry_topic
from topology.transport import PipelineApp


def build_dependencies(settings: Settings) -> Dependencies:
    return Dependencies(
        pipeline=settings.pipeline,
        embedder=OnnxEmbedder(settings.embedding),
        store=MilvusStore(settings.milvus),
        llm=build_backend(settings.llm),
    )


def faust_broker_options(kafka: KafkaSettings) -> dict[str, Any]:
    """faust's view of the same Kafka settings, SASL/SSL included."""
    options: dict[str, Any] = {
        "broker": ";".join(f"kafka://{hp.strip()}" for hp in kafka.bootstrap_servers.split(",")),
    }
    if kafka.security_protocol == "PLAINTEXT":
        return options
    context = None
    if "SSL" in kafka.security_protocol:
        context = ssl.create_default_context(cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None)
    if kafka.sasl_mechanism:
        password = kafka.sasl_password.get_secret_value() if kafka.sasl_password else ""
        options["broker_credentials"] = faust.SASLCredentials(
            username=kafka.sasl_username,
            password=password,
            mechanism=kafka.sasl_mechanism,
            ssl_context=context,
        )
    elif context is not None:
        options["broker_credentials"] = faust.SSLCredentials(context)
    return options


def new_app(settings: Settings, app_id: str, **options: Any) -> faust.App:
    """A faust app on our broker settings, group timeouts and acks. Topics are never
    declared here: the bootstrap step creates them."""
    worker = settings.worker
    return PipelineApp(
        app_id,
        fetch_max_wait_ms=worker.fetch_max_wait_ms,
        store="memory://",
        topic_allow_declare=False,
        topic_replication_factor=settings.kafka.replication_factor,
        consumer_auto_offset_reset="earliest",
        broker_rebalance_timeout=worker.rebalance_timeout_s,
        broker_session_timeout=worker.session_timeout_s,
        broker_heartbeat_interval=worker.heartbeat_interval_s,
        producer_acks=-1,
        **faust_broker_options(settings.kafka),
        **options,
    )


def raw_topic(app: faust.App, settings: Settings, field: str) -> faust.TopicT:
    """A topic of TopicNames as bytes in and out: our runtime decodes, so a bad message
    can't crash an agent."""
    return app.topic(
        getattr(settings.kafka.topics, field),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.kafka.partitions,
    )


def sender(t: faust.TopicT) -> Callable[[bytes, bytes], Awaitable[Awaitable[Any]]]:
    async def send(key: bytes, value: bytes) -> Awaitable[Any]:
        return await t.send(key=key, value=value)

    return send


def create_app(settings: Settings, deps: Dependencies | None = None) -> faust.App:
    deps = deps or build_dependencies(settings)
    app = new_app(settings, settings.worker.app_id, web_enabled=False, topic_disable_leader=True)

    def topic(field: str) -> faust.TopicT:
        return raw_topic(app, settings, field)

    deps.registry = Registry(registry_table(app, settings))
    deadletter = topic("deadletter")
    telemetry = topic("telemetry")
    for stage in STAGES:
        register(
            app,
            stage,
            StageRunner(
                name=stage.name,
                input_model=stage.input_model,
                handler=stage.handler,
                deps=deps,
                emit=sender(topic(stage.produces)),
                dead_letter=sender(deadletter),
                reply=sender(topic(stage.replies_to)),
                settings=settings.worker.runtime,
                telemetry=sender(telemetry),
                telemetry_settings=settings.telemetry,
            ),
            topic(stage.consumes),
        )

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # mode stub: async receivers
    async def close_clients(sender: Any, *_: Any, signal: Any, **__: Any) -> None:
        await deps.close()

    return app


def registry_table(app: faust.App, settings: Settings) -> Any:
    """Every worker holds the whole registry topic in memory and follows it: the CLI
    writes a label, the next request in every worker reads it. The topic is the table's
    changelog; synchronize_all_active_partitions makes each worker of the group read its
    one partition (faust otherwise leaves it to one member, as for any table)."""
    changelog = app.topic(
        registry_topic(settings.worker.app_id),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=1,
        # As faust's own changelogs: never acked, so never committed by the group (its
        # compacted holes would read as unhandled events; see topology/transport.py).
        acks=False,
    )
    return app.GlobalTable(
        REGISTRY_TABLE,
        partitions=1,
        changelog_topic=changelog,
        key_type=bytes,
        value_type=bytes,
        synchronize_all_active_partitions=True,
        # faust's own advice for GlobalTables shared by several app instances.
        recovery_buffer_size=1,
    )


def register(app: faust.App, stage: Stage, runner: StageRunner, source: faust.TopicT) -> None:
    runtime = runner.settings

    async def agent(stream: faust.StreamT) -> None:
        await runner.deps.ready()
        await acked_batches(
            stream, runtime.batch_max, runtime.batch_within_s, runner.handle, runtime.batches_in_flight
        )

    agent.__name__ = stage.name
    app.agent(source, name=stage.name)(agent)


Handle = Callable[[list[Incoming]], Awaitable[Awaitable[object]]]


async def acked_batches(
    stream: faust.StreamT, most: int, within: float, handle: Handle, in_flight: int
) -> None:
    """Hand the stream to `handle` in micro-batches and acknowledge each batch once what
    `handle` returned completes (its outputs are on the broker): faust commits offsets up
    to acknowledged events, so what a crash or a rebalance interrupts is delivered again.
    (take_events acks its batch in a `finally`: a rebalance that cancelled an agent
    mid-batch committed events it never handled, and a question was lost in the failover
    test.) Up to `in_flight` batches wait for the broker while the next is handled: the
    outputs stay in order, since `handle` queues them in order, and a commit stops at the
    first batch still waiting."""
    batches = cast(Any, stream).noack_take(most, within=within)
    waiting: deque[asyncio.Future[None]] = deque()
    try:
        async for events in batches:
            delivered = await handle([incoming(e) for e in events])
            waiting.append(asyncio.ensure_future(_ack_when(stream, events, delivered)))
            while waiting and (waiting[0].done() or len(waiting) > in_flight):
                await waiting.popleft()  # raises what a failed delivery raised, as before
        while waiting:
            await waiting.popleft()
    finally:
        for ack in waiting:
            ack.cancel()


async def _ack_when(stream: faust.StreamT, events: list[faust.EventT], delivered: Awaitable[object]) -> None:
    await delivered
    for event in events:
        await stream.ack(event)


def completed(process: Callable[[list[Incoming]], Awaitable[object]]) -> Handle:
    """`process` as a Handle, for work that is finished (stored) when it returns."""

    async def handle(batch: list[Incoming]) -> Awaitable[object]:
        await process(batch)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    return handle


def incoming(event: faust.EventT) -> Incoming:
    m = event.message
    return Incoming(topic=m.topic, partition=m.partition, offset=m.offset, key=m.key, value=m.value)
