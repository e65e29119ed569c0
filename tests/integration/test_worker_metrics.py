"""A pipeline worker's own `/metrics` (LLMOPS_WORKER__METRICS_PORT), read with
prometheus_client's parser: on the embedded stack, each query stage's "ok" counter and
batch-size sum move by exactly the questions asked, nothing is retried or dead-lettered,
and no label value is a trace id; the server stops with the app that runs it."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from connectors.client import Client
from tests.integration.conftest import stack_settings
from tests.integration.test_pipeline import docs, tenant
from topology.settings import Settings
from topology.stack import LocalStack, free_port
from topology.worker_metrics import MetricsServer, WorkerMetrics

QUESTIONS = 5
QUERY_STAGES = ("prompting", "embedding", "retrieval", "generation")
HEX_ID = re.compile(r"[0-9a-f]{16,}")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def metered(
    base_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LocalStack, str]]:
    """A stack of its own whose worker serves /metrics (the shared one's doesn't)."""
    port = free_port()
    settings = stack_settings(base_settings, tmp_path_factory.mktemp("worker-metrics"))
    with LocalStack(settings, env={"LLMOPS_WORKER__METRICS_PORT": str(port)}) as stack:
        yield stack, f"http://127.0.0.1:{port}/metrics"


async def scrape(url: str) -> Samples:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        text = await response.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


async def settled(url: str) -> Samples:
    """A scrape once the ok counters stand still for 2 s (the stack's readiness probes
    that lost the race may still be in the pipeline)."""
    last = await scrape(url)
    for _ in range(30):
        await asyncio.sleep(2)
        now = await scrape(url)
        if value(now, "llmops_worker_events_total") == value(last, "llmops_worker_events_total"):
            return now
        last = now
    raise AssertionError("the worker kept handling events for a minute")


async def test_a_workers_counters_move_by_exactly_the_questions_asked(metered: tuple[LocalStack, str]):
    stack, url = metered
    owner = tenant("wmetrics")
    async with Client(stack.settings) as client:
        await client.ingest(docs("lambda"), tenant=owner)
        before = await settled(url)
        questions = [f"What is a lambda, worker case {i}?" for i in range(QUESTIONS)]
        answers = await asyncio.gather(*(client.ask(q, tenant=owner, timeout=60) for q in questions))
    # Each stage counts an event before it emits it, so the answers mean every count is in.
    after = await scrape(url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    for stage in QUERY_STAGES:
        assert moved("llmops_worker_events_total", stage=stage, outcome="ok") == QUESTIONS, stage
        assert moved("llmops_worker_batch_size_sum", stage=stage) == QUESTIONS, stage
        assert 1 <= moved("llmops_worker_batch_size_count", stage=stage) <= QUESTIONS, stage
        assert moved("llmops_worker_handler_duration_seconds_count", stage=stage) >= 1, stage
    assert moved("llmops_worker_events_total", outcome="retried") == 0
    assert moved("llmops_worker_events_total", outcome="dead_lettered") == 0
    assert value(after, "llmops_worker_events_total", stage="indexing", outcome="ok") >= 1
    assert value(after, "llmops_worker_publisher_outstanding_messages") >= 0
    assert value(after, "process_cpu_seconds_total") > 0

    labels = {k: v for (_, ls) in after for k, v in ls}
    assert set(labels) <= {"stage", "outcome", "le"}
    values = {v for (_, ls) in after for _, v in ls}
    assert not values & {a.trace_id for a in answers}, "a trace id is a label value"
    assert not [v for v in values if HEX_ID.search(v)], "an id-like label value"


async def test_the_metrics_server_serves_while_its_service_runs():
    metrics = WorkerMetrics(["prompting"])
    metrics.outcome("prompting", "ok")
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    server = MetricsServer(metrics.registry, "127.0.0.1", port)
    await server.start()
    try:
        assert value(await scrape(url), "llmops_worker_events_total", stage="prompting", outcome="ok") == 1
    finally:
        began = time.monotonic()
        await server.stop()
    assert time.monotonic() - began < 2
    with pytest.raises(aiohttp.ClientConnectionError):
        await scrape(url)
