"""What the runtime records on a worker's own /metrics (topology/worker_metrics.py), with
fake topics: one outcome per event (and one "retried" per retry), one batch size per
micro-batch, one handler time per handler call; every stage's series exists at 0 from
the start, and the Publisher gauge is read at scrape time."""

from __future__ import annotations

import dataclasses

from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agents.runtime import per_event
from schemas import PromptAssembled, QueryReceived
from schemas.errors import TransientError
from tests.agents.test_runtime import assemble, message, query, runner
from topology.worker_metrics import WorkerMetrics


def events(metrics: WorkerMetrics, stage: str, outcome: str) -> float | None:
    labels = {"stage": stage, "outcome": outcome}
    return metrics.registry.get_sample_value("llmops_worker_events_total", labels)


async def test_each_event_counts_once_by_outcome_and_each_retry_once():
    flaky = {"t2": 1}  # fails once, then passes

    async def handler(event: QueryReceived, deps: object) -> PromptAssembled | None:
        if event.question == "none":
            return None
        if event.question == "down":
            raise TransientError("always down")
        if flaky.get(event.trace_id):
            flaky[event.trace_id] -= 1
            raise TransientError("down once")
        return await assemble(event, deps)

    metrics = WorkerMetrics(["prompting", "retrieval"])
    stage, out, dlq, _ = runner(per_event(handler), attempts=3)
    stage = dataclasses.replace(stage, observer=metrics)
    batch = [
        message(query("t1")),  # ok
        message(query("t2")),  # retried once, then ok
        message(query("t3", "none")),  # ok, nothing emitted
        message(query("t4", "bad")),  # permanent: dead-lettered at once
        message(query("t5", "down")),  # retried twice, dead-lettered on the third try
        message(b"\x00garbage"),  # undecodable: dead-lettered unread
    ]
    await stage.process(batch)
    assert len(out.sent) == 2 and len(dlq.sent) == 3
    assert events(metrics, "prompting", "ok") == 3
    assert events(metrics, "prompting", "retried") == 3
    assert events(metrics, "prompting", "dead_lettered") == 3
    sample = metrics.registry.get_sample_value
    assert sample("llmops_worker_batch_size_count", {"stage": "prompting"}) == 1
    assert sample("llmops_worker_batch_size_sum", {"stage": "prompting"}) == 6
    assert sample("llmops_worker_batch_size_bucket", {"stage": "prompting", "le": "4.0"}) == 0
    assert sample("llmops_worker_batch_size_bucket", {"stage": "prompting", "le": "8.0"}) == 1
    # Three tries: all five decoded events, then t2 and t5, then t5.
    assert sample("llmops_worker_handler_duration_seconds_count", {"stage": "prompting"}) == 3
    # Another stage's series are there, untouched.
    assert events(metrics, "retrieval", "ok") == 0
    assert sample("llmops_worker_batch_size_count", {"stage": "retrieval"}) == 0

    await stage.process([message(query("t6"))])
    assert events(metrics, "prompting", "ok") == 4
    assert sample("llmops_worker_batch_size_count", {"stage": "prompting"}) == 2


def test_the_exposition_has_the_worker_families_with_stage_and_outcome_labels_only():
    waiting = [7]
    metrics = WorkerMetrics(["prompting"], outstanding=lambda: waiting[0])
    metrics.outcome("prompting", "ok")
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())}
    assert {
        "llmops_worker_events",
        "llmops_worker_batch_size",
        "llmops_worker_handler_duration_seconds",
        "llmops_worker_publisher_outstanding_messages",
    } <= families.keys()
    assert any(name.startswith("process_") for name in families)
    assert not [name for name in families if name.endswith("_created")]
    labels = {k for f in families.values() for s in f.samples for k in s.labels}
    assert labels <= {"stage", "outcome", "le"}
    [gauge] = families["llmops_worker_publisher_outstanding_messages"].samples
    assert gauge.value == 7
    waiting[0] = 0
    assert metrics.registry.get_sample_value("llmops_worker_publisher_outstanding_messages") == 0
