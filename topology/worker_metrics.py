"""A pipeline worker's own `/metrics`: what only the worker process sees (the analytics
process's `/metrics` counts stored telemetry; topology/metrics.py). Events per stage and
outcome, micro-batch sizes, handler time per call, messages its Publisher has sent that
the broker has not acknowledged yet, and `process_*`. Off unless
`LLMOPS_WORKER__METRICS_PORT` is set: workers that share a host need a port each. The
only label values are the stage names and the three outcomes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

import faust
from mode import Service
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)

from topology.metrics import STAGE_SECONDS

OUTCOMES = ("ok", "retried", "dead_lettered")
# Powers of two up to twice the largest batch a stage or sink takes by default.
BATCH_SIZES = tuple(float(2**i) for i in range(13))  # 1 ... 4096


class WorkerMetrics:
    """One registry per app (several apps may live in one test process); a StageObserver
    for agents/runtime.py. `outstanding`: the Publisher's unacknowledged messages, read
    at scrape time."""

    def __init__(self, stages: Iterable[str], outstanding: Callable[[], int] | None = None) -> None:
        # No `_created` series (as on the analytics process): they double the series.
        disable_created_metrics()
        self.registry = r = CollectorRegistry()
        self.events = Counter(
            "llmops_worker_events",
            'Events a stage handled, by outcome: "ok", "dead_lettered", or "retried" once per '
            "retry (so ok + dead_lettered is the events handled).",
            ("stage", "outcome"),
            registry=r,
        )
        self.batch_size = Histogram(
            "llmops_worker_batch_size",
            "Messages per micro-batch a stage took.",
            ("stage",),
            buckets=BATCH_SIZES,
            registry=r,
        )
        self.handler_seconds = Histogram(
            "llmops_worker_handler_duration_seconds",
            "Time of one handler call over a micro-batch (each retry is a call).",
            ("stage",),
            buckets=STAGE_SECONDS,
            registry=r,
        )
        self.outstanding = Gauge(
            "llmops_worker_publisher_outstanding_messages",
            "Messages the worker has sent that the broker has not acknowledged yet.",
            registry=r,
        )
        if outstanding is not None:
            self.outstanding.set_function(outstanding)
        # Every series exists from the start, at 0, so rate() sees the first event; the
        # children are looked up once (labels() takes a lock per call).
        names = tuple(stages)
        self._events = {(s, o): self.events.labels(s, o) for s in names for o in OUTCOMES}
        self._sizes = {s: self.batch_size.labels(s) for s in names}
        self._seconds = {s: self.handler_seconds.labels(s) for s in names}
        ProcessCollector(registry=r)

    def batch(self, stage: str, events: int) -> None:
        child = self._sizes.get(stage)
        (self.batch_size.labels(stage) if child is None else child).observe(events)

    def handled(self, stage: str, seconds: float) -> None:
        child = self._seconds.get(stage)
        (self.handler_seconds.labels(stage) if child is None else child).observe(seconds)

    def outcome(self, stage: str, outcome: str) -> None:
        child = self._events.get((stage, outcome))
        (self.events.labels(stage, outcome) if child is None else child).inc()


class MetricsServer(Service):
    """prometheus_client's HTTP server (a thread) on `host:port`, for as long as the app
    runs. A port already taken fails the worker's start."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._registry, self._host, self._port = registry, host, port
        self._server: Any = None

    async def on_start(self) -> None:
        self._server, _ = start_http_server(self._port, self._host, registry=self._registry)

    async def on_stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await asyncio.to_thread(server.shutdown)  # waits up to its 0.5 s poll
            server.server_close()


def serve_metrics(app: faust.App, metrics: WorkerMetrics, host: str, port: int) -> None:
    """Serve `metrics` on `host:port` while `app` runs."""
    app.service(MetricsServer(metrics.registry, host, port))  # type: ignore[arg-type]  # an instance works too
