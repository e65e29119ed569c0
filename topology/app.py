"""The faust app factory and composition root: one place builds the clients, the topics
and one agent per stage of the graph. No import-time globals."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, cast

import faust

from agents.deps import Dependencies
from agents.routing import Registry
from agents.runtime import Incoming, StageRunner
from connectors.following_towers import following
from connectors.kafka import KafkaSettings, Publisher
from connectors.llm import build_backend
from connectors.milvus_artifacts import MilvusArtifacts
from connectors.ports import Deltas
from schemas.errors import LLMOpsError
from topology.conversations import KeyedByText, announcer, conversations_table, sweep_idle
from topology.graph import STAGES, chained_stages
from topology.settings import Settings
from topology.stage_consumer import StageConsumer, StageConsumerService, consumer_config
from topology.topics import REGISTRY_TABLE, registry_topic
from topology.transport import PipelineApp
from topology.worker_metrics import WorkerMetrics, serve_metrics

log = logging.getLogger(__name__)


def build_dependencies(settings: Settings) -> Dependencies:
    # The towers follow the collection the store's name points at (an alias switch moves
    # them); the store checks each against the encoder its collection records.
    query, documents, store = following(settings.embedding, settings.milvus)
    return Dependencies(
        pipeline=settings.pipeline,
        embedder=query,
        document_embedder=documents,
        store=store,
        llm=build_backend(settings.llm),
        artifacts=MilvusArtifacts(settings.milvus, encoder=query),
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


def new_app(
    settings: Settings,
    app_id: str,
    *,
    fetch_max_wait_ms: int | None = None,
    idle_fetch_max_wait_ms: int | None = None,
    **options: Any,
) -> faust.App:
    """A faust app on our broker settings, group timeouts and acks. Topics are never
    declared here: the bootstrap step creates them. `fetch_max_wait_ms`,
    `idle_fetch_max_wait_ms`: instead of the worker's."""
    worker = settings.worker
    busy_wait = worker.fetch_max_wait_ms if fetch_max_wait_ms is None else fetch_max_wait_ms
    idle_wait = worker.idle_fetch_max_wait_ms if idle_fetch_max_wait_ms is None else idle_fetch_max_wait_ms
    # faust makes its data directory even for in-memory tables (without parents): keep it
    # out of the user's working directory.
    datadir = settings.stack.data_dir / "faust" / app_id
    datadir.parent.mkdir(parents=True, exist_ok=True)
    return PipelineApp(
        app_id,
        fetch_max_wait_ms=busy_wait,
        idle_fetch_max_wait_ms=idle_wait,
        store="memory://",
        datadir=str(datadir),
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


class _Worker(faust.Worker):
    """faust's Worker without its terminal spinner. To turn the spinner on every log
    record, faust sets the root logger to DEBUG whatever the log level, so aiokafka and
    faust built a debug record for every message sent: 12% of one hop's CPU (py-spy)."""

    def on_setup_root_logger(self, logger: Any, level: int) -> None:
        self.spinner = None
        super().on_setup_root_logger(logger, level)


def run_worker(app: faust.App, log_level: str) -> None:
    """Run `app` as a worker in this process until it is stopped."""
    _Worker(app, loglevel=log_level, quiet=True).execute_from_commandline()


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


def sender(publisher: Publisher, topic: str) -> Callable[[bytes, bytes], Awaitable[Awaitable[Any]]]:
    """Queue a message on `topic`; the awaitable it returns completes when the broker has
    it. The stages send through librdkafka (Publisher), not faust's aiokafka producer: a
    faust Topic.send cost about 100 us a message in Python, most of one hop (README)."""

    async def send(key: bytes, value: bytes) -> Awaitable[Any]:
        return await publisher.send(topic, key, value)

    return send


def stage_publisher(app: faust.App, settings: Settings) -> Publisher:
    """The app's producer for what its agents send, flushed and stopped with the app."""
    publisher = Publisher(settings.kafka, client_id=f"{app.conf.id}-stages")

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # mode stub: async receivers
    async def stop_publisher(sender: Any, *_: Any, **__: Any) -> None:
        await publisher.stop()

    return publisher


def create_app(settings: Settings, deps: Dependencies | None = None) -> faust.App:
    deps = deps or build_dependencies(settings)
    app = new_app(settings, settings.worker.app_id, web_enabled=False, topic_disable_leader=True)

    deps.registry = Registry(registry_table(app, settings))
    deps.conversations = KeyedByText(conversations_table(app, settings), settings.kafka.partitions)
    deps.conversation = settings.conversation
    sweep_idle(app, deps.conversations, settings.conversation)
    publisher, names = stage_publisher(app, settings), settings.kafka.topics
    llm = settings.llm
    deps.deltas = Deltas(sender(publisher, names.responses), llm.delta_tokens, llm.delta_ms)
    runtime, worker = settings.worker.runtime, settings.worker
    metrics = None
    if worker.metrics_port:
        metrics = WorkerMetrics([s.name for s in STAGES], lambda: publisher.outstanding)
        serve_metrics(app, metrics, worker.metrics_host, worker.metrics_port)
    stage_consumer = None
    if worker.stage_consumer == "librdkafka":
        stage_consumer = librdkafka_stages(settings, ready=deps.ready)
        cast(PipelineApp, app).on_app_start.append(stage_consumer.start)
        app.service(StageConsumerService(stage_consumer))  # type: ignore[arg-type]  # an instance works too
    runners: dict[str, StageRunner] = {}
    chains = chained_stages(STAGES) if worker.chain_stages else {}
    for stage in reversed(STAGES):  # a chained stage's successor first
        runners[stage.name] = StageRunner(
            name=stage.name,
            input_model=stage.input_model,
            handler=stage.handler,
            deps=deps,
            emit=sender(publisher, getattr(names, stage.produces)),
            dead_letter=sender(publisher, names.deadletter),
            reply=sender(publisher, getattr(names, stage.replies_to)),
            settings=runtime,
            telemetry=sender(publisher, names.telemetry),
            telemetry_settings=settings.telemetry,
            decoder=stage.decoder,
            announce=announcer(stage, publisher, names, settings.telemetry),
            observer=metrics,
            then=runners[chains[stage.name]] if stage.name in chains else None,
            topic=getattr(names, stage.consumes),
        )
    for stage in STAGES:
        runner = runners[stage.name]
        if stage_consumer is not None and stage.keeps is None:  # a table stays with faust
            stage_consumer.add(stage.name, getattr(names, stage.consumes), runner.dispatch)
            continue
        register(
            app,
            stage.name,
            raw_topic(app, settings, stage.consumes),
            runner.process,
            batch_max=runtime.batch_max,
            batch_within_s=runtime.batch_within_s,
            ready=deps.ready,
        )

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # mode stub: async receivers
    async def close_clients(sender: Any, *_: Any, signal: Any, **__: Any) -> None:
        await deps.close()

    return app


def librdkafka_stages(settings: Settings, ready: Callable[[], Awaitable[None]]) -> StageConsumer:
    """The worker's one librdkafka consumer for the stages, in the group `<app_id>-stages`."""
    worker = settings.worker
    config = consumer_config(
        settings.kafka, worker, worker.stages_group(), fetch_max_wait_ms=worker.fetch_max_wait_ms
    )
    return StageConsumer(
        config,
        batch_max=worker.runtime.batch_max,
        in_flight=worker.stage_in_flight,
        ready=ready,
        backoff=worker.runtime.backoff,
        idle_probe_ms=worker.idle_fetch_max_wait_ms,
        ahead=worker.batches_ahead,
    )


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


def register(
    app: faust.App,
    name: str,
    source: faust.TopicT,
    process: Callable[[list[Incoming]], Awaitable[object]],
    *,
    batch_max: int,
    batch_within_s: float,
    ready: Callable[[], Awaitable[None]],
) -> None:
    """The one way an agent is made, for stages and sinks alike: once `ready` returns,
    micro-batches of `source` go to `process`, each acknowledged only after it returns."""

    async def agent(stream: faust.StreamT) -> None:
        await ready()
        await acked_batches(stream, batch_max, batch_within_s, process)

    agent.__name__ = agent.__qualname__ = name.replace("-", "_")
    app.agent(source, name=name)(agent)


def leader_timer(
    app: faust.App,
    name: str,
    every_s: float,
    step: Callable[[], Awaitable[object]],
    ready: Callable[[], Awaitable[None]],
) -> None:
    """Run `step` every `every_s` seconds on the group leader only, once `ready`
    returns. One error policy for every timer: a round that fails is logged (a store or
    broker fault as a warning, anything else with its traceback) and the next round tries
    again; nothing stops the timer."""

    async def tick() -> None:
        await ready()
        try:
            await step()
        except LLMOpsError as exc:
            log.warning("%s: round skipped (the next one retries): %s", name, str(exc)[:300])
        except Exception:
            log.exception("%s: round failed (the next one retries)", name)

    tick.__name__ = tick.__qualname__ = name.replace("-", "_")
    app.timer(interval=every_s, on_leader=True, name=name)(tick)


async def acked_batches(
    stream: faust.StreamT, most: int, within: float, process: Callable[[list[Incoming]], Awaitable[object]]
) -> None:
    """Hand the stream to `process` in micro-batches of at most `most` events, acknowledging
    a batch only once `process` returns: faust commits offsets up to acknowledged events, so
    what a crash or a rebalance interrupts is delivered again. (take_events acks its batch
    in a `finally`: a rebalance that cancelled an agent mid-batch committed events it never
    handled, and a question was lost in the failover test.)

    A batch starts with its first event and waits at most `within` after it for more.
    faust's noack_take instead woke every `within` whether or not events came, which kept
    an idle worker busy. A reader task takes the events off the stream (acks off: they are
    acked here) while a batch is processed, at most `most` ahead."""
    ahead: asyncio.Queue[faust.EventT] = asyncio.Queue(most)
    acks = stream.enable_acks
    stream.enable_acks = False  # as faust's take does; events skipped in a rebalance are still acked
    reader = asyncio.ensure_future(_read(stream, ahead))
    try:
        while batch := await _next_batch(ahead, reader, most, within):
            await process([incoming(e) for e in batch])
            for event in batch:
                await stream.ack(event)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)  # what ended it is raised above
        stream.enable_acks = acks


async def _read(stream: faust.StreamT, into: asyncio.Queue[faust.EventT]) -> None:
    async for _ in stream:
        if stream.current_event is not None:
            await into.put(stream.current_event)


async def _next_batch(
    ahead: asyncio.Queue[faust.EventT], reader: asyncio.Future[None], most: int, within: float
) -> list[faust.EventT]:
    """The next batch; empty once the stream has ended. Raises what ended the reader."""
    if ahead.empty():
        first = asyncio.ensure_future(ahead.get())
        try:
            await asyncio.wait((first, reader), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled: the agent stops
            first.cancel()
            raise
        if not first.done():  # the stream ended or failed, and nothing is left
            first.cancel()
            reader.result()
            return []
        batch = [first.result()]
    else:
        batch = [ahead.get_nowait()]
    deadline = asyncio.get_running_loop().time() + within
    while len(batch) < most:
        if not ahead.empty():
            batch.append(ahead.get_nowait())
            continue
        if reader.done():
            break
        try:
            async with asyncio.timeout_at(deadline):
                batch.append(await ahead.get())
        except TimeoutError:
            break
    return batch


def incoming(event: faust.EventT) -> Incoming:
    m = event.message
    return Incoming(topic=m.topic, partition=m.partition, offset=m.offset, key=m.key, value=m.value)
