"""The one settings tree: environment variables prefixed LLMOPS_, nested with `__`
(LLMOPS_KAFKA__BOOTSTRAP_SERVERS, LLMOPS_MILVUS__URI, LLMOPS_LLM__BASE_URL, ...).
Each section is owned by the module that uses it; this file only composes them."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agents.config import PipelineSettings
from agents.conversation import ConversationSettings
from agents.feedback import FeedbackSettings
from agents.lag import LagSettings
from agents.monitor import MonitorSettings
from agents.runtime import RuntimeSettings
from agents.sink import SinkSettings
from agents.telemetry import ModelPrice, TelemetrySettings
from connectors.analytics import ServiceSettings
from connectors.clickhouse import ClickHouseSettings
from connectors.client import ClientSettings
from connectors.embedder import EmbeddingSettings
from connectors.kafka import KafkaSettings
from connectors.llm import LLMSettings
from connectors.local_llm import LocalLLMSettings
from connectors.milvus import MilvusSettings
from connectors.otlp import OtlpSettings
from connectors.webhook import WebhookSettings
from topology.metrics import MetricsSettings


class WorkerSettings(BaseModel):
    """faust worker tuning. The group timeouts decide how fast a worker joins: with
    faust's defaults a worker joined Tansu's group after 30 s, with these after 5 s."""

    model_config = ConfigDict(frozen=True)

    app_id: str = Field(default="llmops", description="faust app id = consumer group id.")
    rebalance_timeout_s: float = 6.0
    session_timeout_s: float = 10.0
    heartbeat_interval_s: float = 1.0
    fetch_max_wait_ms: int = Field(
        default=10,
        ge=1,
        description="Longest a fetch waits for data. Tansu holds fetches this long even when "
        "data arrives, so every hop can cost this much there; Kafka answers at once.",
    )
    idle_fetch_max_wait_ms: int = Field(
        default=100,
        ge=1,
        description="Longest a fetch waits once no event came for a second: an idle worker "
        "and its broker wake up less. The stage consumer then pauses and asks the log ends "
        "this often instead of fetching (only if longer than fetch_max_wait_ms). The first "
        "event after a quiet second can wait this long.",
    )
    log_level: str = "WARNING"
    runtime: RuntimeSettings = RuntimeSettings()
    stage_consumer: Literal["librdkafka", "faust"] = Field(
        default="librdkafka",
        description="What reads the topics of the stages that keep no table: one librdkafka "
        "consumer per worker in the group `<app_id>-stages` (offsets stored once a batch's "
        "outputs are acknowledged), or faust's agents in the group `<app_id>`. Switching "
        "an existing deployment starts the other group at the earliest offsets.",
    )
    batches_ahead: int = Field(
        default=2,
        ge=1,
        description="Batches a stage read by the librdkafka stage consumer goes on from while "
        "their outputs wait for the broker's acknowledgement (offsets are still stored only "
        "after it, in order); 1 waits for each batch's before handling the next. With chained "
        "stages a batch's outputs include the whole chain's, so this also bounds the chains "
        "running at once; what queues while they do joins the next batch.",
    )
    stage_in_flight: int = Field(
        default=512,
        ge=1,
        description="Messages the librdkafka stage consumer hands to the stages and they "
        "have not finished; beyond it the consumer pauses its partitions (backpressure).",
    )
    chain_stages: bool = Field(
        default=True,
        description="A stage that keeps no table hands its outputs to the next such stage "
        "in the same worker directly (one batch goes prompting to generation with no broker "
        "hop between; offsets are stored once the answers are acknowledged). Off: every "
        "stage's output goes through its topic (prompts, embeddings, contexts), for "
        "whoever reads those topics; each hop then costs a produce, a fetch and a decode.",
    )
    metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Serve this worker's own /metrics on this port (0: off). Workers that "
        "share a host need a port each.",
    )
    metrics_host: str = Field(
        default="127.0.0.1", description="Bind address of the worker's /metrics (0.0.0.0 in a container)."
    )

    def stages_group(self) -> str:
        """The consumer group that reads the stages' topics (the conversation stage's
        turns stay in faust's group, `app_id`)."""
        return f"{self.app_id}-stages" if self.stage_consumer == "librdkafka" else self.app_id


class StackSettings(BaseModel):
    """The embedded stack that `llmops up` and `make demo` start."""

    model_config = ConfigDict(frozen=True)

    data_dir: Path = Field(
        default=Path(".llmops"), description="Milvus Lite data and logs of the local stack."
    )
    broker: Literal["tansu", "kafka"] = Field(
        default="tansu",
        description="tansu: the embedded broker, topics in memory, slower as they fill "
        "(docs/scaling.md); kafka: Apache Kafka on one node (java 17 and mvn; its jars are "
        "fetched once), its topics under data_dir/kafka. Both start with empty topics.",
    )
    broker_port: int = Field(default=9092, ge=0, le=65535, description="0 picks a free port.")
    milvus_port: int = Field(default=19530, ge=0, le=65535, description="0 picks a free port.")
    milvus_blas_threads: int = Field(
        default=1,
        ge=0,
        description="OpenBLAS threads of the Milvus Lite server (its exact search is a numpy "
        "product); 0 leaves it to the environment (OpenBLAS's default: a thread per core). An "
        "idle OpenBLAS thread spins between products, so at a steady query rate a second one "
        "never slept (docs/scaling.md).",
    )
    ready_timeout_s: float = Field(default=120.0, gt=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LLMOPS_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    kafka: KafkaSettings = KafkaSettings()
    milvus: MilvusSettings = MilvusSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    llm: LLMSettings = LLMSettings()
    local_llm: LocalLLMSettings = LocalLLMSettings()
    pipeline: PipelineSettings = PipelineSettings()
    conversation: ConversationSettings = ConversationSettings()
    client: ClientSettings = ClientSettings()
    worker: WorkerSettings = WorkerSettings()
    stack: StackSettings = StackSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    clickhouse: ClickHouseSettings = ClickHouseSettings()
    analytics: ServiceSettings = ServiceSettings()
    sink: SinkSettings = SinkSettings()
    feedback: FeedbackSettings = FeedbackSettings()
    monitor: MonitorSettings = MonitorSettings()
    lag: LagSettings = LagSettings()
    metrics: MetricsSettings = MetricsSettings()
    otlp: OtlpSettings = OtlpSettings()
    webhook: WebhookSettings = WebhookSettings()

    @field_validator("telemetry")
    @classmethod
    def _price_the_local_model(cls, telemetry: TelemetrySettings, info: ValidationInfo) -> TelemetrySettings:
        """The local model's row in the price table, from its own section (a row for the
        same name in LLMOPS_TELEMETRY__PRICES wins)."""
        local = info.data.get("local_llm")
        if not isinstance(local, LocalLLMSettings) or local.served_name() in telemetry.prices:
            return telemetry
        row = ModelPrice(input_per_mtok=local.input_per_mtok, output_per_mtok=local.output_per_mtok)
        return telemetry.model_copy(update={"prices": {**telemetry.prices, local.served_name(): row}})
