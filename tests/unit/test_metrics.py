"""The analytics process's metrics without a server: counts per event id, bounded label
values, the lag gauge, and an exposition prometheus_client's own parser reads."""

from __future__ import annotations

from datetime import timedelta

from prometheus_client.parser import text_string_to_metric_families

from connectors.ports import PartitionLag
from schemas import StageCompleted, utc_now
from topology.metrics import OTHER, Bounded, PipelineMetrics, providers


def event(stage: str, tenant: str = "acme", **facts: object) -> StageCompleted:
    now = utc_now()
    return StageCompleted(
        trace_id="0" * 32,
        tenant=tenant,
        producer=stage,
        stage=stage,
        started_at=now - timedelta(milliseconds=800),
        ended_at=now,
        latency_ms=800.0,
        status="ok",
        **facts,  # type: ignore[arg-type]
    )


def samples(metrics: PipelineMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    body, content_type = metrics.exposition("")
    assert content_type.startswith("text/plain; version=0.0.4")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def test_bounded_keeps_the_first_values_and_folds_the_rest():
    bound = Bounded(2)
    assert [bound(v) for v in ("a", "b", "c", "a", "d")] == ["a", "b", OTHER, "a", OTHER]


def test_each_event_counts_once_with_genai_names_and_no_trace_id():
    metrics = PipelineMetrics(providers("openai"), max_label_values=1)
    chat = event("generation", model="m", input_tokens=300, output_tokens=40, cost_usd=0.5, ttft_ms=250.0)
    failed = event("retrieval").model_copy(update={"status": "error", "error_class": "TransientError"})
    metrics.observe([chat, chat, event("generation", tenant="other", model="m", input_tokens=1), failed])
    metrics.lag_sampled([PartitionLag("prompting", "g", "q", 3, 10, 4, 6)])
    found = samples(metrics)

    def at(name: str, **labels: str) -> float:
        return found[(name, frozenset(labels.items()))]

    assert at("llmops_stage_requests_total", stage="generation") == 2
    assert at("llmops_stage_errors_total", stage="retrieval", error_type="TransientError") == 1
    assert at("llmops_dead_letters_total", stage="retrieval") == 1
    genai = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "openai", "gen_ai_request_model": "m"}
    assert at("gen_ai_client_token_usage_sum", gen_ai_token_type="input", **genai) == 301
    assert at("gen_ai_client_operation_time_to_first_chunk_seconds_count", **genai) == 1
    # The second tenant is past the bound: counted, as _other.
    assert at("llmops_tokens_total", tenant=OTHER, model="m", type="input") == 1
    assert at("llmops_cost_usd_total", tenant="acme", model="m") == 0.5
    assert at("llmops_consumer_lag_messages", stage="prompting", topic="q", partition="3") == 6
    assert not [name for name, _ in found if name.endswith("_created")]
    assert not [v for _, labels in found for _, v in labels if v == "0" * 32]
