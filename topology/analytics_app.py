"""The analytics process: the one owner of the analytics store. It runs the telemetry
sink, the feedback agent, the timer that links early feedback to its trace, and the
query service that other processes read through (a chDB directory opens in one process
only). Pipeline workers never open the store."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import faust
from faust.web import Request, Response, View

from agents import feedback, telemetry
from agents.experiments import ExperimentGuard
from agents.monitor import Monitor, slack_payload
from agents.registry import Registry
from agents.sink import SinkRunner, until_done
from connectors import registry
from connectors.analytics import Analytics, read_only
from connectors.clickhouse import AnalyticsStore, QueryFailed, StoreUnavailable, open_store
from connectors.migrations import apply
from connectors.webhook import post
from schemas import encode
from schemas.alerts import Alert
from schemas.errors import LLMOpsError
from schemas.feedback import FeedbackReceived
from schemas.telemetry import StageCompleted
from topology.app import acked_batches, new_app, raw_topic, sender, stage_publisher
from topology.settings import Settings
from topology.topics import analytics_app_id, registry_topic

log = logging.getLogger(__name__)


def create_analytics_app(settings: Settings, given_store: AnalyticsStore | None = None) -> faust.App:
    owned = given_store is None  # a store passed in is the caller's to close
    store: AnalyticsStore = given_store if given_store is not None else open_store(settings.clickhouse)
    service = settings.analytics
    app = new_app(
        settings,
        analytics_app_id(settings.worker.app_id),
        web_enabled=True,
        web_bind=service.host,
        web_host=service.host,
        web_port=service.port,
    )

    def topic(field: str) -> faust.TopicT:
        return raw_topic(app, settings, field)

    publisher = stage_publisher(app, settings)
    dead_letter = sender(publisher, settings.kafka.topics.deadletter)

    async def feedback_rows(events: Any, s: AnalyticsStore) -> Any:
        return await feedback.rows(events, s, settings.feedback, settings.telemetry.text)

    async def announce(alert: Alert) -> None:
        await publisher.publish(settings.kafka.topics.alerts, [(alert.alert_id.encode(), encode(alert))])
        await post(settings.webhook, slack_payload(alert))

    monitor = Monitor(store, settings.monitor, announce)

    registry_topic_name = registry_topic(settings.worker.app_id)

    async def read_registry() -> Registry:
        return Registry(await asyncio.to_thread(registry.read_all, settings.kafka, registry_topic_name))

    guard = ExperimentGuard(
        Analytics(store),
        read_registry,
        lambda records: registry.append(settings.kafka, registry_topic_name, records),
        announce,
    )
    linker = feedback.Linker(store, settle_s=settings.feedback.settle_s)
    opening = asyncio.Lock()
    opened = False

    async def open_and_migrate() -> None:
        await store.open()
        applied = await apply(store, settings.clickhouse.ddl_dir)
        if applied:
            log.warning("applied analytics DDL: %s", ", ".join(applied))
        await monitor.load()

    async def ready() -> None:
        """Open the store and apply pending DDL, once, retrying while the store is down
        (a ClickHouse server still starting, say); the sinks and timers await this."""
        nonlocal opened
        async with opening:
            if not opened:
                await until_done("analytics", "opening the store", open_and_migrate, settings.sink)
                opened = True

    @app.task
    async def open_at_start() -> None:
        await ready()

    register_sink(
        app,
        SinkRunner(
            "telemetry-sink",
            "telemetry",
            StageCompleted,
            telemetry.rows,
            store,
            dead_letter,
            settings.sink,
            after_write=linker.telemetry_stored,
        ),
        topic("telemetry"),
        ready,
    )
    register_sink(
        app,
        SinkRunner(
            feedback.STAGE,
            "feedback",
            FeedbackReceived,
            feedback_rows,
            store,
            dead_letter,
            settings.sink,
            after_write=linker.feedback_stored,
        ),
        topic("feedback"),
        ready,
    )

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def close_store(sender: Any, *_: Any, **__: Any) -> None:
        if owned:
            await store.close()

    # The sweep for feedback no targeted link caught; on the group leader only, so with
    # several analytics processes (a ClickHouse server) one sweeps.
    @app.timer(interval=settings.feedback.link_every_s, on_leader=True)
    async def link_feedback() -> None:
        await ready()
        try:
            await linker.link(sweep=True)
        except (StoreUnavailable, QueryFailed) as exc:
            log.warning("linking feedback failed (the next sweep retries): %s", str(exc)[:300])

    # Drift, SLO and budget checks, once per closed window, on the group leader only.
    @app.timer(interval=max(1.0, min(30.0, settings.monitor.window_s / 5)), on_leader=True)
    async def run_monitor() -> None:
        if not settings.monitor.enabled:
            return
        await ready()
        try:
            await monitor.tick()
        except Exception:  # a store, broker or webhook fault: log it; the next tick retries
            log.exception("monitor: window not evaluated")

    # Experiments: roll a worse arm back, on the group leader only.
    @app.timer(interval=settings.monitor.experiments_every_s, on_leader=True)
    async def guard_experiments() -> None:
        if not settings.monitor.enabled:
            return
        await ready()
        try:
            await guard.check()
        except LLMOpsError as exc:  # the store or the broker is away: the next tick retries
            log.warning("experiment guard: not checked: %s", str(exc)[:300])
        except Exception:
            log.exception("experiment guard: not checked")

    @app.page("/health/")
    class Health(View):
        async def get(self, request: Request) -> Response:
            if not opened:
                return self.error(503, "the analytics store is not open yet")
            return self.json({"ok": True, "backend": store.backend})

    @app.page("/sql/")
    class Sql(View):
        async def post(self, request: Request) -> Response:
            if not opened:
                return self.error(503, "the analytics store is not open yet")
            try:
                body = await request.json()
                sql, parameters = body["sql"], body.get("parameters") or {}
                rows = await store.query(read_only(sql), parameters)
            except (KeyError, TypeError, ValueError) as exc:
                return self.error(400, f"expected JSON {{'sql': ..., 'parameters': {{...}}}}: {exc}")
            except QueryFailed as exc:
                return self.error(400, str(exc))
            except StoreUnavailable as exc:
                return self.error(503, str(exc))
            return self.json(rows.to_json())

    return app


def register_sink(
    app: faust.App, runner: SinkRunner, source: faust.TopicT, ready: Callable[[], Awaitable[None]]
) -> None:
    """An agent that writes batches and acknowledges each batch only after it is stored."""
    settings = runner.settings

    async def agent(stream: faust.StreamT) -> None:
        await ready()
        await acked_batches(stream, settings.batch_max, settings.batch_within_s, runner.process)

    agent.__name__ = runner.name.replace("-", "_")
    app.agent(source, name=runner.name)(agent)
