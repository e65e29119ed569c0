"""The analytics process: the one owner of the analytics store. It runs the sinks and
the leader timers that topology/graph.py declares (SINKS, LEADER_TIMERS), and the query
service that other processes read through (a chDB directory opens in one process only).
Pipeline workers never open the store."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

import faust
from mode import Service

from agents.analytics_deps import AnalyticsDeps
from agents.experiments import ExperimentGuard
from agents.feedback import Linker
from agents.lag import LagWatch, Watched
from agents.monitor import Monitor
from agents.routing import Registry
from agents.runtime import Backoff, until_done
from agents.sink import SinkRunner
from connectors import registry_log, webhook
from connectors.analytics import Analytics
from connectors.clickhouse import open_store
from connectors.kafka import Publisher
from connectors.lag import KafkaOffsets
from connectors.migrations import apply
from connectors.ports import AnalyticsStore
from schemas import encode
from schemas.alerts import Alert
from topology.app import leader_timer, new_app, sender, stage_publisher
from topology.console import add_console
from topology.graph import LEADER_TIMERS, SINKS, STAGES
from topology.metrics import PipelineMetrics, add_metrics, providers
from topology.otlp_export import add_otlp_export
from topology.query_service import add_query_service
from topology.settings import Settings
from topology.stage_consumer import StageConsumer, StageConsumerService, consumer_config
from topology.topics import analytics_app_id, registry_topic, sinks_group
from topology.transport import PipelineApp

log = logging.getLogger(__name__)


class StoreService(Service):
    """Opens the analytics store when the app starts, applying pending DDL and running
    `after_open` (the monitor picks up its open incidents), retrying while the store is
    down (a ClickHouse server still starting, say); closes it when the app stops, if it
    is this service's to close. The sinks and timers wait for `ready`."""

    def __init__(
        self,
        store: AnalyticsStore,
        settings: Settings,
        *,
        owned: bool,
        after_open: Callable[[], Awaitable[None]],
        backoff: Backoff,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.store = store
        self._settings = settings
        self._owned = owned
        self._after_open = after_open
        self._backoff = backoff
        self._opened = asyncio.Event()

    @property
    def is_open(self) -> bool:
        return self._opened.is_set()

    async def ready(self) -> None:
        await self._opened.wait()

    async def on_start(self) -> None:
        # In the background: the app's start must not wait for a store that is down.
        self.add_future(self._open())

    async def on_stop(self) -> None:
        if self._owned:
            await self.store.close()

    async def _open(self) -> None:
        await until_done("analytics", "opening the store", self._open_and_migrate, self._backoff)
        self._opened.set()

    async def _open_and_migrate(self) -> None:
        await self.store.open()
        applied = await apply(self.store, self._settings.clickhouse.ddl_dir)
        if applied:
            log.warning("applied analytics DDL: %s", ", ".join(applied))
        await self._after_open()


def watched(settings: Settings) -> list[Watched]:
    """Whose consumer lag is sampled: every stage (a stage with a table in faust's group,
    the others in the stage consumer's) and every sink (the sinks' group), with the
    topic each reads."""
    names, app_id = settings.kafka.topics, settings.worker.app_id
    stages_group = settings.worker.stages_group()
    return [
        Watched(s.name, app_id if s.keeps else stages_group, getattr(names, s.consumes)) for s in STAGES
    ] + [Watched(s.name, sinks_group(app_id), getattr(names, s.consumes)) for s in SINKS]


def librdkafka_sinks(settings: Settings, ready: Callable[[], Awaitable[None]]) -> StageConsumer:
    """The analytics process's one librdkafka consumer for the sinks, in `sinks_group`: a
    batch waits up to `batch_within_s` to fill, and an idle consumer probes the log ends
    as often (the sinks' rows are that late anyway)."""
    sink, worker = settings.sink, settings.worker
    config = consumer_config(
        settings.kafka,
        worker,
        sinks_group(worker.app_id),
        fetch_max_wait_ms=sink.fetch_max_wait_ms,
        fetch_min_bytes=sink.fetch_min_bytes,
    )
    return StageConsumer(
        config,
        batch_max=sink.batch_max,
        # One batch being written and the next one filling.
        in_flight=2 * sink.batch_max,
        ready=ready,
        backoff=sink.backoff,
        idle_probe_ms=max(worker.idle_fetch_max_wait_ms, round(sink.batch_within_s * 1000)),
        fill_within_s=sink.batch_within_s,
    )


def build_analytics_deps(
    settings: Settings, data: Analytics, publisher: Publisher, metrics: PipelineMetrics | None = None
) -> AnalyticsDeps:
    """The monitor, the experiment guard and the feedback linker, on the store's port;
    alerts go out as events on the alerts topic (the alerts sink stores and delivers them)."""

    async def publish(alert: Alert) -> None:
        await publisher.publish(settings.kafka.topics.alerts, [(alert.alert_id.encode(), encode(alert))])

    registry_name = registry_topic(settings.worker.app_id)

    async def read_registry() -> Registry:
        return Registry(await asyncio.to_thread(registry_log.read_all, settings.kafka, registry_name))

    async def write_registry(records: Any) -> None:
        await registry_log.append(settings.kafka, registry_name, records)

    monitor = Monitor(data, settings.monitor, publish)
    offsets = KafkaOffsets(
        settings.kafka, client_id=f"{settings.worker.app_id}-lag", read_tail=settings.lag.read_tail
    )
    return AnalyticsDeps(
        data=data,
        feedback=settings.feedback,
        text=settings.telemetry.text,
        linker=Linker(data, settle_s=settings.feedback.settle_s),
        monitor=monitor,
        guard=ExperimentGuard(data, read_registry, write_registry, publish),
        deliver=functools.partial(webhook.deliver, settings.webhook),
        # Lag incidents share the monitor's book: one set of open incidents, picked up
        # from the alerts table after a restart.
        lag=LagWatch(
            offsets,
            data,
            settings.lag,
            watched(settings),
            monitor.book,
            publish,
            on_sample=metrics.lag_sampled if metrics is not None else None,
        ),
        metrics=metrics,
    )


async def _now() -> None:
    """Ready at once: the exporter needs no store."""


def create_analytics_app(settings: Settings, given_store: AnalyticsStore | None = None) -> faust.App:
    """`given_store`: an open store of the caller's, which the app uses and leaves open."""
    service = settings.analytics
    app = new_app(
        settings,
        analytics_app_id(settings.worker.app_id),
        # A sink waits this long to fill a batch anyway; an idle fetch may wait as long.
        fetch_max_wait_ms=settings.sink.fetch_max_wait_ms,
        idle_fetch_max_wait_ms=max(
            settings.worker.idle_fetch_max_wait_ms, round(settings.sink.batch_within_s * 1000)
        ),
        web_enabled=True,
        web_bind=service.host,
        web_host=service.host,
        web_port=service.port,
    )
    store = given_store if given_store is not None else open_store(settings.clickhouse)
    data = Analytics(store)
    publisher = stage_publisher(app, settings)
    metrics = (
        PipelineMetrics(providers(settings.llm.backend), settings.metrics.max_label_values)
        if settings.metrics.enabled
        else None
    )
    deps = build_analytics_deps(settings, data, publisher, metrics)
    opener = StoreService(
        store,
        settings,
        owned=given_store is None,
        after_open=deps.monitor.load,
        backoff=settings.sink.backoff,
    )
    app.service(opener)  # type: ignore[arg-type]  # an instance: faust starts it as given

    dead_letter = sender(publisher, settings.kafka.topics.deadletter)
    batching = settings.sink
    sinks = librdkafka_sinks(settings, opener.ready)
    cast(PipelineApp, app).on_app_start.append(sinks.start)
    app.service(StageConsumerService(sinks))  # type: ignore[arg-type]  # an instance works too
    for sink in SINKS:
        runner = SinkRunner(
            sink.name,
            sink.table,
            sink.input_model,
            functools.partial(sink.rows, deps),
            data,
            dead_letter,
            batching,
            after_write=functools.partial(sink.after_write, deps) if sink.after_write else None,
            after_new=functools.partial(sink.after_new, deps) if sink.after_new else None,
            key=sink.key,
            decoder=sink.decoder,
        )
        sinks.add(sink.name, getattr(settings.kafka.topics, sink.consumes), runner.dispatch)
    for timer in LEADER_TIMERS:
        if timer.enabled(settings):
            leader_timer(
                app, timer.name, timer.every(settings), functools.partial(timer.run, deps), opener.ready
            )
    exporter = add_otlp_export(app, settings, dead_letter, _now) if settings.otlp.endpoint else None

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # mode stub: async receivers
    async def close_clients(sender: Any, *_: Any, **__: Any) -> None:
        if deps.lag is not None:
            await deps.lag.offsets.close()
        if exporter is not None:
            await asyncio.to_thread(exporter.close)

    add_query_service(app, store, lambda: opener.is_open)
    if metrics is not None:
        add_metrics(app, metrics)
    add_console(app, settings, data, lambda: opener.is_open)
    return app
