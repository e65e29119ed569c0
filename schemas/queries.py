"""The events of one question's trip: received, prompt assembled, embedded, context
retrieved, answered (or failed). Each stage's output carries what later stages need, so
no stage has to look anything up by trace id."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from schemas.envelope import Event, Frozen, Identifier

Question = Annotated[str, StringConstraints(min_length=1, max_length=32_000)]
# Per-stage handler latency in milliseconds, extended by each hop.
Timings = dict[str, float]
# How retrieval ranks passages: embeddings, BM25 full text, or both fused by rank.
RetrievalMode = Literal["dense", "bm25", "hybrid"]
# How HyDE shapes the search vector: not at all, the hypothetical passage's embedding
# alone, or the normalised mean of it and the question's embedding.
HydeMode = Literal["off", "replace", "average"]


class QueryReceived(Event):
    """A client asked a question. Published by clients on the queries topic."""

    event_type: Literal["QueryReceived"] = "QueryReceived"
    question: Question
    top_k: int | None = Field(default=None, ge=1, le=100)
    user: Identifier | None = None
    retrieval_mode: RetrievalMode | None = Field(
        default=None, description="Overrides the prompt's retrieval mode for this query."
    )
    prompt_ref: Identifier | None = Field(
        default=None,
        description="A prompt label or version to answer with (replays, evaluations); "
        "otherwise the served label, split by its experiment.",
    )


class PromptSpec(Frozen):
    """Which template answers the question, with its variables and generation settings.
    The final prompt is rendered once, in generation, when the context is known."""

    template_id: Identifier
    template_version: Identifier
    system: str
    template: str
    variables: dict[str, str]
    retrieval_text: str = Field(min_length=1)
    top_k: int = Field(ge=1, le=100)
    # Events from before retrieval modes existed were all dense.
    retrieval_mode: RetrievalMode = "dense"
    temperature: float = Field(ge=0.0, le=2.0)
    max_tokens: int = Field(ge=1)
    model: str | None = Field(default=None, description="None: the worker's configured model.")
    seed: int | None = None
    # Which registry label served it, and the experiment arm when traffic was split.
    label: str = ""
    experiment: str = ""
    arm: str = ""
    # HyDE: how the search vector uses the hypothetical passage prompting wrote (if any).
    hyde: HydeMode = "off"
    hyde_passage: str = ""
    # What writing the HyDE passage took: the model that wrote it and its tokens.
    hyde_model: str = ""
    hyde_usage: dict[str, int] = Field(default_factory=dict)


class PromptAssembled(Event):
    event_type: Literal["PromptAssembled"] = "PromptAssembled"
    prompt: PromptSpec
    latency_ms: Timings = Field(default_factory=dict)


class QueryEmbedded(Event):
    event_type: Literal["QueryEmbedded"] = "QueryEmbedded"
    prompt: PromptSpec
    vector: list[float] = Field(min_length=1)
    embedding_model: Identifier
    input_tokens: int = Field(default=0, ge=0)
    latency_ms: Timings = Field(default_factory=dict)


class Passage(Frozen):
    id: Identifier
    doc_id: Identifier
    title: str
    text: str
    chunk: int = Field(ge=0)
    score: float


class ContextRetrieved(Event):
    event_type: Literal["ContextRetrieved"] = "ContextRetrieved"
    prompt: PromptSpec
    passages: list[Passage]
    # Each search leg's own top scores, best first (a leg that did not run has none):
    # with hybrid the passages' scores are fused ranks, these say how close each leg came.
    dense_scores: list[float] = Field(default_factory=list)
    bm25_scores: list[float] = Field(default_factory=list)
    latency_ms: Timings = Field(default_factory=dict)


class ResponseGenerated(Event):
    """The answer, the passages it was grounded on and what it cost."""

    event_type: Literal["ResponseGenerated"] = "ResponseGenerated"
    question: Question
    answer: str
    citations: list[Identifier]
    passages: list[Passage]
    model: Identifier
    template_id: Identifier
    template_version: Identifier
    retrieval_mode: RetrievalMode = "dense"
    temperature: float | None = None
    seed: int | None = None
    label: str = ""
    experiment: str = ""
    arm: str = ""
    usage_details: dict[str, int] = Field(default_factory=dict)
    latency_ms: Timings = Field(default_factory=dict)


class RequestFailed(Event):
    """A query or document was dead-lettered: the client gets this, not a timeout."""

    event_type: Literal["RequestFailed"] = "RequestFailed"
    stage: Identifier
    error_type: Identifier
    reason: str
    latency_ms: Timings = Field(default_factory=dict)
