"""The ports: every interface the agents use, and the value types that cross it.

Agents import connectors only through this module (tests/unit/test_import_rules.py holds
that), so a handler depends on what a client does, never on which client does it. The
concrete adapters (`connectors.llm`, `connectors.milvus`, `connectors.embedder`,
`connectors.clickhouse`, ...) satisfy these Protocols structurally and take their value
types from here. This module imports nothing of ours but `schemas`."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from schemas.queries import RetrievalMode
from schemas.telemetry import StageCompleted

# --- embedding --------------------------------------------------------------------------


class Embedder(Protocol):
    name: str
    dim: int

    def open(self) -> None: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]: ...


# --- passages (Milvus) ------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    id: str
    tenant: str
    doc_id: str
    chunk: int
    title: str
    text: str
    vector: Sequence[float]


@dataclass(frozen=True)
class Hit:
    id: str
    doc_id: str
    chunk: int
    title: str
    text: str
    score: float  # the mode's own: inner product (dense), BM25 (bm25) or fused RRF (hybrid)


@dataclass(frozen=True)
class Found:
    """One query's passages, best first, and each leg's own top scores (best first, as
    many as passages were asked for); a leg that did not run has none."""

    hits: list[Hit]
    dense_scores: list[float] = field(default_factory=list)
    bm25_scores: list[float] = field(default_factory=list)


class PassageStore(Protocol):
    def open(self) -> None: ...

    def close(self) -> None: ...

    def upsert(self, chunks: Sequence[Chunk]) -> None: ...

    def delete_documents(self, tenant: str, doc_ids: Sequence[str], keep: Sequence[int] = ()) -> None:
        """Delete the chunks of these documents of one tenant: all, or those numbered
        keep[i] and beyond."""

    def search(
        self,
        vectors: Sequence[Sequence[float]],
        tenant: str,
        top_k: int,
        *,
        texts: Sequence[str] = (),
        mode: RetrievalMode = "dense",
        encoder: str | None = None,
    ) -> list[Found]: ...


# --- prompt artifacts (Milvus) ----------------------------------------------------------


@dataclass(frozen=True)
class Artifact:
    id: str
    tenant: str
    prompt: str
    artifact_set: str
    text: str
    input: str
    output: str
    tags: list[str]
    vector: Sequence[float]


@dataclass(frozen=True)
class ArtifactHit:
    id: str
    text: str
    input: str
    output: str
    score: float  # inner product of the question's and the artifact's text embeddings


class ArtifactStore(Protocol):
    def open(self) -> None: ...

    def close(self) -> None: ...

    def upsert_artifacts(self, artifacts: Sequence[Artifact]) -> None: ...

    def delete_artifacts(
        self, tenant: str, prompt: str, artifact_set: str = "", ids: Sequence[str] = ()
    ) -> int:
        """Delete a prompt's artifacts of one tenant (of the set, and/or these ids; with
        neither, all); how many."""

    def search_artifacts(
        self, vectors: Sequence[Sequence[float]], tenant: str, prompt: str, artifact_set: str, k: int
    ) -> list[list[ArtifactHit]]:
        """For each vector, the `k` artifacts of the tenant's prompt and set nearest to it."""


# --- generation (LLM backends) ----------------------------------------------------------


@dataclass(frozen=True)
class Source:
    id: str
    title: str
    text: str


@dataclass(frozen=True)
class RenderedPrompt:
    system: str
    user: str
    question: str
    sources: Sequence[Source]
    temperature: float
    max_tokens: int
    model: str | None = None  # None: the backend's configured model
    seed: int | None = None


@dataclass(frozen=True)
class Generation:
    text: str
    model: str
    citations: list[str]
    usage_details: dict[str, int] = field(default_factory=dict)
    ttft_ms: float | None = None  # streamed answers only: time to the first token
    tokens_per_s: float | None = None  # streamed answers only: output tokens after the first


class Backend(Protocol):
    name: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def generate(self, prompt: RenderedPrompt) -> Generation: ...


@dataclass(frozen=True)
class TokenCount:
    counts: list[int]
    counted_by: str  # "server" (the model's own tokenizer) or the approximation used


@runtime_checkable
class Budgeted(Protocol):
    """A backend whose prompt has a token budget (0: none), counted its own way."""

    max_prompt_tokens: int

    async def count_tokens(self, texts: Sequence[str]) -> TokenCount: ...


# Receives the answer's text piece by piece while the server writes it.
OnText = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class Deltas:
    """Where the generation stage sends ResponseDelta pieces (the responses topic: `send`
    queues a keyed message and returns an awaitable the broker's ack completes), and how
    it groups them: a piece per `every_tokens` text pieces from the server (about a token
    each) or per `every_ms`, whichever comes first; never one message per token."""

    send: Callable[[bytes, bytes], Awaitable[Awaitable[Any]]]
    every_tokens: int = 16
    every_ms: float = 250.0


@runtime_checkable
class Streaming(Protocol):
    """A backend that can hand the answer over while it is written (`streams`: whether
    it is configured to)."""

    streams: bool

    async def generate_streaming(self, prompt: RenderedPrompt, on_text: OnText) -> Generation: ...


# --- analytics (ClickHouse / chDB) ------------------------------------------------------


@dataclass(frozen=True)
class Rows:
    columns: list[str]
    types: list[str]
    rows: list[list[Any]]

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]

    def to_json(self) -> dict[str, Any]:
        return {"columns": self.columns, "types": self.types, "rows": self.rows}

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> Rows:
        return cls(list(payload["columns"]), list(payload["types"]), [list(r) for r in payload["rows"]])

    @classmethod
    def parse(cls, raw: bytes | str) -> Rows:
        """Rows from ClickHouse's JSONCompact output (both backends produce it)."""
        if not raw.strip():
            return cls([], [], [])
        doc = json.loads(raw)
        meta = doc.get("meta", [])
        return cls([m["name"] for m in meta], [m["type"] for m in meta], doc.get("data", []))


class AnalyticsStore(Protocol):
    backend: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> Rows: ...

    async def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None: ...

    async def insert(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None: ...


# --- analytics: what the agents ask of the store (connectors.analytics.Analytics) -------
# The statements live in the connector; the agents keep the statistics and the decisions.


@dataclass(frozen=True)
class Window:
    """A span of time, start included, end excluded."""

    start: datetime
    end: datetime


@dataclass(frozen=True)
class Moments:
    """A value's mean, sample variance and count in a window and in its reference; for
    rates, the rows per side (`total`) and those that raise a flag (`hits`)."""

    mean: float
    variance: float
    n: int
    ref_mean: float
    ref_variance: float
    ref_n: int
    total: int = 0
    ref_total: int = 0
    hits: int = 0
    ref_hits: int = 0


@dataclass(frozen=True)
class StageLoad:
    """One stage in one window: events, failed events and p95 latency (ms)."""

    stage: str
    events: int
    errors: int
    p95_ms: float


@dataclass(frozen=True)
class AlertState:
    """Where an incident stands in the alerts table: its last event and when."""

    alert_id: str
    check: str
    subject: str
    last_event_type: str
    at: datetime


@dataclass(frozen=True)
class TraceFacts:
    """What served a trace, from its telemetry (for linking feedback to it)."""

    template_id: str
    template_version: str
    model: str


# Which per-stage value the monitor compares: retrieval (dense top-1 similarity; flag:
# nothing found) or response (answer length; flag: an answer that cites).
Measure = Literal["retrieval", "response"]


class MonitorReads(Protocol):
    async def query_vectors(self, window: Window, n: int) -> np.ndarray: ...

    async def stage_moments(self, measure: Measure, window: Window, reference: Window) -> Moments: ...

    async def stage_loads(self, window: Window) -> list[StageLoad]: ...

    async def spend_by_tenant(self, day_of: datetime) -> dict[str, float]: ...

    async def rating_moments(self, window: Window, reference: Window) -> dict[str, Moments]: ...

    async def alert_states(self) -> list[AlertState]: ...


class FeedbackLinks(Protocol):
    async def trace_facts(self, trace_ids: Sequence[str]) -> dict[tuple[str, str], TraceFacts]: ...

    async def link_feedback(self, trace_ids: Sequence[str], settle_s: int) -> None: ...


class SinkWrites(Protocol):
    async def insert_new(
        self, table: str, rows: Sequence[Mapping[str, Any]], key: str = "trace_id"
    ) -> list[Mapping[str, Any]]: ...


class ExperimentReads(Protocol):
    async def experiment_arms(self, experiment: str, since: datetime) -> Rows: ...


class AnalyticsPort(MonitorReads, FeedbackLinks, SinkWrites, ExperimentReads, Protocol):
    """Everything the analytics agents ask of the store."""


# --- consumer lag (agents.lag; connectors.lag reads the broker) ----------------------------


@dataclass(frozen=True)
class PartitionOffsets:
    """One partition of a topic a consumer group reads: where the log starts and ends,
    and the group's committed offset (None: the group committed none)."""

    group: str
    topic: str
    partition: int
    start: int
    end: int
    committed: int | None


class OffsetReads(Protocol):
    async def offsets(self, groups: Mapping[str, Sequence[str]]) -> list[PartitionOffsets]:
        """Every partition of each group's topics ({group: [topic, ...]})."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class PartitionLag:
    stage: str
    group: str
    topic: str
    partition: int
    end: int
    committed: int  # -1: none committed (the lag then counts from the log's start)
    lag: int


class LagWrites(Protocol):
    async def store_lag(self, sampled_at: datetime, rows: Sequence[PartitionLag]) -> None: ...


class TelemetryMetrics(Protocol):
    """The process's metrics (Prometheus), fed by the telemetry sink and the lag watch."""

    def observe(self, events: Sequence[StageCompleted]) -> None: ...

    def lag_sampled(self, rows: Sequence[PartitionLag]) -> None: ...
