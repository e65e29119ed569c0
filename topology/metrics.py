"""Prometheus `/metrics` on the analytics process, fed from the telemetry its sink stores:
the sink hands each batch's new events (each event id once) to `observe`, and each lag
sample to `lag_sampled`. Names follow Prometheus conventions, and the OpenTelemetry GenAI
metrics where one exists (semantic-conventions-genai, Development status), in their
Prometheus form: `gen_ai.client.operation.duration` (s) is
`gen_ai_client_operation_duration_seconds`, `gen_ai.client.token.usage` ({token}) is
`gen_ai_client_token_usage`, attribute `gen_ai.request.model` is label
`gen_ai_request_model`. Label values are bounded: stages, statuses, error classes and
token types are few by construction; tenants and models keep their first
`max_label_values` values each and count the rest as `_other`. No trace id, question or
answer is ever a label."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import faust
from faust.web import Request, Response, View
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from pydantic import BaseModel, ConfigDict, Field

from connectors.ports import PartitionLag
from schemas import StageCompleted

# The GenAI conventions' boundaries for durations (s) and token counts.
GENAI_SECONDS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
GENAI_TOKENS = tuple(float(4**i) for i in range(14))  # 1, 4, 16, ... 67108864
# Stages: the same, with finer steps below 10 ms, where prompting and retrieval live.
STAGE_SECONDS = (0.001, 0.0025, 0.005, *GENAI_SECONDS)
# A stage's GenAI operation (gen_ai.operation.name's well-known values).
OPERATIONS = {"generation": "chat", "embedding": "embeddings", "retrieval": "retrieval"}
OTHER = "_other"


class MetricsSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    enabled: bool = Field(default=True, description="Serve /metrics on the analytics process's web port.")
    max_label_values: int = Field(
        default=100, ge=1, description="Tenants (and models) beyond this many are counted as `_other`."
    )


class Bounded:
    """The first `most` distinct values pass; later ones become `_other`."""

    def __init__(self, most: int) -> None:
        self._most = most
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= self._most:
            return OTHER
        self._seen.add(value)
        return value


class LagCollector(Collector):
    """The last lag sample, read at scrape time (a stage that stops being sampled goes)."""

    def __init__(self) -> None:
        self.rows: Sequence[PartitionLag] = ()

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "llmops_consumer_lag_messages",
            "Messages a stage's consumer group has not committed yet (end minus committed offset).",
            labels=("stage", "topic", "partition"),
        )
        for r in self.rows:
            gauge.add_metric((r.stage, r.topic, str(r.partition)), r.lag)
        yield gauge


class PipelineMetrics:
    """One registry per process (no module-level state). `providers`: each GenAI stage's
    gen_ai.provider.name (from the settings: what the stages were configured with)."""

    def __init__(self, providers: Mapping[str, str], max_label_values: int = 100) -> None:
        # No `_created` series beside every counter and histogram: they double the series
        # and no dashboard reads them. (A process-wide switch; this is the process's one
        # registry.)
        disable_created_metrics()
        self.registry = CollectorRegistry()
        self._providers = dict(providers)
        self._tenant, self._model = Bounded(max_label_values), Bounded(max_label_values)
        r = self.registry
        self.stage_duration = Histogram(
            "llmops_stage_duration_seconds",
            "Time a stage spent on one event.",
            ("stage", "status"),
            buckets=STAGE_SECONDS,
            registry=r,
        )
        self.requests = Counter("llmops_stage_requests", "Events a stage handled.", ("stage",), registry=r)
        self.errors = Counter(
            "llmops_stage_errors",
            "Events a stage failed, by error class.",
            ("stage", "error_type"),
            registry=r,
        )
        self.dead_letters = Counter(
            "llmops_dead_letters",
            "Events a stage dead-lettered (every failure the runtime reports is one).",
            ("stage",),
            registry=r,
        )
        genai = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model")
        self.operation = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "GenAI operation duration.",
            (*genai, "error_type"),
            buckets=GENAI_SECONDS,
            registry=r,
        )
        self.token_usage = Histogram(
            "gen_ai_client_token_usage",
            "Number of input and output tokens used.",
            (*genai, "gen_ai_token_type"),
            buckets=GENAI_TOKENS,
            registry=r,
        )
        self.first_chunk = Histogram(
            "gen_ai_client_operation_time_to_first_chunk_seconds",
            "Time to receive the first chunk of a streamed answer.",
            genai,
            buckets=GENAI_SECONDS,
            registry=r,
        )
        self.tokens = Counter(
            "llmops_tokens", "Tokens used, per tenant and model.", ("tenant", "model", "type"), registry=r
        )
        self.cost = Counter(
            "llmops_cost_usd", "Cost in USD, per tenant and model.", ("tenant", "model"), registry=r
        )
        self.lag = LagCollector()
        r.register(self.lag)
        ProcessCollector(registry=r)

    def observe(self, events: Sequence[StageCompleted]) -> None:
        """Count stored telemetry events. The sink passes only events new to the store,
        each event id once; any other caller's repeats count once too."""
        for e in {e.event_id: e for e in events}.values():
            seconds = e.latency_ms / 1000
            self.stage_duration.labels(e.stage, e.status).observe(seconds)
            self.requests.labels(e.stage).inc()
            if e.status == "error":
                self.errors.labels(e.stage, e.error_class or OTHER).inc()
                self.dead_letters.labels(e.stage).inc()
            operation = OPERATIONS.get(e.stage)
            if operation is not None:
                self._observe_genai(e, operation, seconds)
            if e.input_tokens or e.output_tokens or e.cost_usd:  # as ClickHouse's cost_days sums
                tenant, model = self._tenant(e.tenant), self._model(e.model)
                self.cost.labels(tenant, model).inc(e.cost_usd)
                for kind, count in (("input", e.input_tokens), ("output", e.output_tokens)):
                    if count:
                        self.tokens.labels(tenant, model, kind).inc(count)

    def _observe_genai(self, e: StageCompleted, operation: str, seconds: float) -> None:
        genai = (operation, self._providers.get(e.stage, OTHER), self._model(e.model))
        self.operation.labels(*genai, e.error_class if e.status == "error" else "").observe(seconds)
        if e.status == "error":
            return
        # Usage as reported (none reported: none recorded); embeddings have input only.
        for kind, count in (("input", e.input_tokens), ("output", e.output_tokens)):
            if count:
                self.token_usage.labels(*genai, kind).observe(count)
        if e.ttft_ms is not None:
            self.first_chunk.labels(*genai).observe(e.ttft_ms / 1000)

    def lag_sampled(self, rows: Sequence[PartitionLag]) -> None:
        self.lag.rows = tuple(rows)

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """The registry in the format the scraper asked for, and its content type."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


def providers(llm_backend: str) -> dict[str, str]:
    """gen_ai.provider.name per GenAI stage: `openai` is the conventions' own value (any
    OpenAI-compatible server); the others are ours, under our prefix."""
    return {
        "generation": "openai" if llm_backend == "openai" else f"llmops.{llm_backend}",
        "embedding": "llmops.onnxruntime",
        "retrieval": "milvus",
    }


def add_metrics(app: faust.App, metrics: PipelineMetrics) -> None:
    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            body, content_type = metrics.exposition(request.headers.get("Accept", ""))
            # aiohttp refuses a charset inside content_type=; the header carries it whole.
            return self.bytes(body, headers={"Content-Type": content_type})
