"""What every stage records about every event it handled: one StageCompleted per event
per stage, on the telemetry topic. The analytics sink stores each as one row, `served`
spread into its columns (agents.telemetry.rows)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, Field

from schemas.envelope import Event, Identifier
from schemas.queries import Served, served_from_v1


class StageCompleted(Event):
    """`trace_id` is the request's; `event_id` is this event's own (the sink's
    idempotency key). Token, model and stage facts are empty where a stage has none."""

    event_type: Literal["StageCompleted"] = "StageCompleted"
    stage: Identifier
    started_at: AwareDatetime
    ended_at: AwareDatetime
    latency_ms: float = Field(ge=0)
    status: Literal["ok", "error"]
    error_class: str = ""
    # The stage's model as its server names it (OpenAI-compatible servers put the version
    # in the name, e.g. gpt-4o-mini-2024-07-18); the prompt version is in `served`.
    model: str = ""
    served: Served | None = Field(default=None, description="What served the request; None before prompting.")
    conversation_id: str = Field(default="", description="The conversation of the request, or empty.")
    memory_turns: int = Field(
        default=0, ge=0, description="prompting: the conversation's earlier turns its prompts showed."
    )
    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)
    cost_usd: float = Field(default=0.0, ge=0)
    priced: bool = Field(default=True, description="False when the model has no price in the table.")
    # Stage facts. retrieval: the top-k passages; generation: the answer and citations.
    passage_ids: list[str] = Field(default_factory=list)
    passage_scores: list[float] = Field(default_factory=list)
    # retrieval: each search leg's own top scores (passage_scores are fused ranks in hybrid).
    dense_scores: list[float] = Field(default_factory=list)
    bm25_scores: list[float] = Field(default_factory=list)
    question: str = ""
    answer: str = ""
    citations: list[str] = Field(default_factory=list)
    # embedding: the query's vector, for the sampled share of traces (drift checks).
    query_vector: list[float] = Field(default_factory=list)
    # generation: the prompt budget (schemas.queries.ContextBudget) and streaming speed.
    context_passages: int = Field(default=0, ge=0)
    context_passages_cut: int = Field(default=0, ge=0)
    context_tokens: int = Field(default=0, ge=0)
    context_tokens_cut: int = Field(default=0, ge=0)
    tokens_counted_by: str = ""
    ttft_ms: float | None = Field(default=None, ge=0)
    tokens_per_s: float | None = Field(default=None, ge=0)
    # generation: for the console's trace page, the prompt as the model got it and the
    # text of each passage sent, by id; cut, or empty (agents.telemetry's settings).
    rendered_prompt: str = ""
    passage_texts: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def upgrade(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        if version < 2:
            flat = ("template_id", "template_version", "label", "experiment", "arm", "retrieval_mode", "hyde")
            data["served"] = served_from_v1(data, flat)
        return data
