"""The events of one question's trip: received, prompt assembled, embedded, context
retrieved, answered (or failed). Each stage's output carries what later stages need, so
no stage has to look anything up by trace id."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints
from pydantic.json_schema import SkipJsonSchema

from schemas.conversations import ConversationId, Turn, Variables
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
    conversation_id: ConversationId | None = Field(
        default=None,
        description="A turn of this conversation of the tenant: answered with its memory, "
        "after the conversation's previous turn.",
    )
    variables: Variables = Field(
        default_factory=dict, description="User metadata the prompt's template renders ($name)."
    )
    memory: list[Turn] = Field(
        default_factory=list,
        description="Set by the conversation stage: the conversation's last turns, oldest first.",
    )
    summary: str = Field(default="", description="Set by the conversation stage: the rolling summary.")
    unsummarized: list[Turn] = Field(
        default_factory=list, description="Set by the conversation stage: older turns not in the summary yet."
    )


class Served(Frozen):
    """What served one request: the prompt version and the settings it answers with, the
    registry label and experiment arm that chose it, and how retrieval searches. Prompting
    fixes it once; every later event of the request, and its telemetry, carries it as is."""

    prompt: Identifier = Field(description="The prompt's name, e.g. rag-answer.")
    version: Identifier = Field(description="The prompt version: the hash of its content.")
    label: str = Field(
        default="", description="The registry label that served it; empty if pinned by version."
    )
    experiment: str = ""
    arm: str = Field(default="", description="The experiment arm (a label) the user was assigned.")
    model: str | None = Field(default=None, description="The model the prompt asks for; None: the worker's.")
    temperature: float | None = Field(
        default=None, ge=0.0, le=2.0, description="None only where version 1 did not record it."
    )
    seed: int | None = None
    # Events from before retrieval modes existed were all dense, and before HyDE all off.
    retrieval_mode: RetrievalMode = "dense"
    hyde: HydeMode = Field(default="off", description="How the search vector uses the hypothetical passage.")
    # Prompt artifacts (schemas/artifacts.py): the set the prompt version pins and the
    # artifacts prompting put into the prompt, most similar first; empty where none.
    artifact_set: str = ""
    artifact_ids: list[Identifier] = Field(default_factory=list)


# Version 1 carried Served's fields flat, with the prompt as template_id@template_version.
_RENAMED_SINCE_V1 = {"template_id": "prompt", "template_version": "version"}


def served_from_v1(fields: dict[str, Any], names: Iterable[str]) -> dict[str, Any] | None:
    """Take the named version 1 fields out of `fields` as a Served value. Version 1 wrote
    "" where a fact was unknown (telemetry before prompting); those are left out, so
    nothing at all is no Served (None) and the rest take Served's defaults."""
    taken = {_RENAMED_SINCE_V1.get(name, name): fields.pop(name) for name in names if name in fields}
    known = {name: value for name, value in taken.items() if value != ""}
    return known or None


class PromptSpec(Frozen):
    """Which template answers the question, with its variables and generation settings.
    The final prompt is rendered once, in generation, when the context is known."""

    served: Served
    system: str
    template: str
    variables: dict[str, str]
    retrieval_text: str = Field(min_length=1)
    top_k: int = Field(ge=1, le=100)
    max_tokens: int = Field(ge=1)
    # HyDE: the hypothetical passage prompting wrote (if any), for embedding to search with.
    hyde_passage: str = ""
    # What writing the HyDE passage took: the model that wrote it and its tokens.
    hyde_model: str = ""
    hyde_usage: dict[str, int] = Field(default_factory=dict)
    # Conversations: the turns the answer prompt shows, and what condensing the follow-up
    # into `retrieval_text` took (the condense node's model, tokens and time).
    conversation_id: ConversationId | None = None
    history: list[Turn] = Field(default_factory=list)
    condense_model: str = ""
    condense_usage: dict[str, int] = Field(default_factory=dict)
    condense_ms: float = Field(default=0.0, ge=0)
    # The rolling summary the answer prompt shows, and what writing it took (summarize node);
    # `summarized`: how many unsummarized turns it took in (0: the summary is unchanged).
    summary: str = ""
    summarized: int = Field(default=0, ge=0)
    summarize_model: str = ""
    summarize_usage: dict[str, int] = Field(default_factory=dict)
    summarize_ms: float = Field(default=0.0, ge=0)
    # Prompt artifacts: how many prompting puts into `$examples` (0: off).
    artifacts_k: int = Field(default=0, ge=0, le=20)


_SPEC_V1 = (
    "template_id",
    "template_version",
    "label",
    "experiment",
    "arm",
    "model",
    "temperature",
    "seed",
    "retrieval_mode",
    "hyde",
)


class _CarriesPromptSpec(Event):
    @classmethod
    def upgrade(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        prompt = data.get("prompt")
        if version < 2 and isinstance(prompt, dict):
            prompt = dict(prompt)
            served = served_from_v1(prompt, _SPEC_V1)  # takes its fields out of `prompt`
            data["prompt"] = {**prompt, "served": served}
        return data


class PromptAssembled(_CarriesPromptSpec):
    event_type: Literal["PromptAssembled"] = "PromptAssembled"
    prompt: PromptSpec
    latency_ms: Timings = Field(default_factory=dict)


class QueryEmbedded(_CarriesPromptSpec):
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


class ContextRetrieved(_CarriesPromptSpec):
    event_type: Literal["ContextRetrieved"] = "ContextRetrieved"
    prompt: PromptSpec
    passages: list[Passage]
    # Each search leg's own top scores, best first (a leg that did not run has none):
    # with hybrid the passages' scores are fused ranks, these say how close each leg came.
    dense_scores: list[float] = Field(default_factory=list)
    bm25_scores: list[float] = Field(default_factory=list)
    latency_ms: Timings = Field(default_factory=dict)


class ContextBudget(Frozen):
    """How the retrieved passages were fitted into the prompt's token budget: what was
    sent, what was cut (dropped, or truncated at a sentence end), and how tokens were
    counted. All zero and `counted_by` empty where the backend takes no budget."""

    passages_sent: int = Field(default=0, ge=0)
    passages_cut: int = Field(default=0, ge=0, description="Dropped or truncated passages.")
    tokens_sent: int = Field(default=0, ge=0, description="The passages' tokens in the prompt.")
    tokens_cut: int = Field(default=0, ge=0, description="The passages' tokens left out.")
    counted_by: str = Field(
        default="",
        description="server: the model's own tokenizer (llama.cpp /tokenize); chars/4: an "
        "approximation, for servers that do not tokenize; empty: no budget.",
    )


class ResponseDelta(Event):
    """A piece of an answer while it is written, on the responses topic keyed by the trace
    id, so it reaches a client before the answer's ResponseGenerated (same partition).
    Pieces of one generation carry one `stream_id` and numbered `seq` from 0; a retried
    generation streams again under a new `stream_id`. Only clients that stream read
    these; the ResponseGenerated that follows is the whole answer."""

    event_type: Literal["ResponseDelta"] = "ResponseDelta"
    stream_id: Identifier
    seq: int = Field(ge=0)
    text: str


class ResponseGenerated(Event):
    """The answer, the passages it was grounded on and what it cost."""

    event_type: Literal["ResponseGenerated"] = "ResponseGenerated"
    question: Question
    answer: str
    citations: list[Identifier]
    passages: list[Passage] = Field(description="The passages as the model saw them (after the budget).")
    model: Identifier = Field(description="The model that answered, as its server names it.")
    served: Served
    usage_details: dict[str, int] = Field(default_factory=dict)
    latency_ms: Timings = Field(default_factory=dict)
    context: ContextBudget = Field(default_factory=ContextBudget)
    ttft_ms: float | None = Field(
        default=None, ge=0, description="Time to the first token; None unless streamed."
    )
    tokens_per_s: float | None = Field(
        default=None, ge=0, description="Output tokens per second after the first; None unless streamed."
    )
    # The prompt as the model got it, for the generation stage's own telemetry (kept there
    # when allowed); never serialized, so neither topics nor clients carry it.
    rendered_prompt: SkipJsonSchema[str] = Field(default="", exclude=True)

    @classmethod
    def upgrade(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        if version < 2:
            # Version 1 responses did not say which model the prompt asked for, nor its
            # HyDE mode: they read as Served's defaults (None, "off").
            names = ("template_id", "template_version", "label", "experiment", "arm", "temperature", "seed")
            data["served"] = served_from_v1(data, (*names, "retrieval_mode"))
        return data


class RequestFailed(Event):
    """A query or document was dead-lettered: the client gets this, not a timeout."""

    event_type: Literal["RequestFailed"] = "RequestFailed"
    stage: Identifier
    error_type: Identifier
    reason: str
    latency_ms: Timings = Field(default_factory=dict)
