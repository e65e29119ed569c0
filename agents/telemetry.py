"""StageCompleted events: what a stage did with one event, built from the event it
took, what it made of it (an output event or an exception) and when. Stage facts come
from the output's type, so handlers record nothing themselves."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas import (
    ContextRetrieved,
    Event,
    PromptAssembled,
    PromptSpec,
    QueryEmbedded,
    ResponseGenerated,
)
from schemas.telemetry import StageCompleted

log = logging.getLogger(__name__)


class ModelPrice(BaseModel):
    model_config = ConfigDict(frozen=True)

    input_per_mtok: float = Field(default=0.0, ge=0, description="USD per million input tokens.")
    output_per_mtok: float = Field(default=0.0, ge=0, description="USD per million output tokens.")


# List prices (USD per million tokens) as published by the vendors in 2026; local models
# cost nothing per token. Override or extend with LLMOPS_TELEMETRY__PRICES='{"m": {...}}'.
DEFAULT_PRICES = {
    "extractive": ModelPrice(),
    "all-MiniLM-L6-v2": ModelPrice(),
    "gpt-4o-mini": ModelPrice(input_per_mtok=0.15, output_per_mtok=0.60),
    "gpt-4o": ModelPrice(input_per_mtok=2.50, output_per_mtok=10.00),
    "gpt-4.1-mini": ModelPrice(input_per_mtok=0.40, output_per_mtok=1.60),
}


TextMode = Literal["keep", "hash", "drop"]


class TelemetrySettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    enabled: bool = Field(default=True, description="Emit StageCompleted for every event of every stage.")
    text: TextMode = Field(
        default="keep",
        description="Question, answer and feedback comments in analytics: as they are, as a SHA-256 "
        "(equal texts still group together), or not at all.",
    )
    vector_sample: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="Share of traces whose query embedding is kept for drift checks (1.5 KB each on disk).",
    )
    prices: dict[str, ModelPrice] = Field(default_factory=lambda: dict(DEFAULT_PRICES))
    keep_payloads: bool = Field(
        default=True,
        description="Keep the generation's rendered prompt and the text of each passage sent (the "
        "console's trace page shows them); only while `text` is keep. Off: neither is stored.",
    )
    payload_max_chars: int = Field(
        default=8_000, ge=0, description="Kept payloads are cut to this many characters each."
    )


def priced(
    prices: dict[str, ModelPrice], model: str, input_tokens: int, output_tokens: int
) -> tuple[float, bool]:
    """(cost in USD, whether the model has a price); an unknown model costs 0, flagged."""
    price = prices.get(model)
    if price is None:
        return 0.0, False
    return (input_tokens * price.input_per_mtok + output_tokens * price.output_per_mtok) / 1e6, True


def redact(text: str, mode: TextMode) -> str:
    """What analytics keeps of a user's or model's text under the `text` setting."""
    if not text or mode == "keep":
        return text
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest() if mode == "hash" else ""


def sampled(trace_id: str, share: float) -> bool:
    """Deterministic per trace, so a trace is in or out whichever worker records it."""
    return int(hashlib.blake2b(trace_id.encode(), digest_size=4).hexdigest(), 16) < share * 2**32


def facts(source: Event | None, output: Event | None) -> dict[str, object]:
    """Model, tokens, prompt and stage facts, from whichever events carry them."""
    found: dict[str, object] = {}
    for event in (source, output):
        # A model's fields are in its __dict__; getattr of a missing one goes through
        # pydantic's __getattr__ and an exception, most of this function's cost.
        fields = vars(event) if event is not None else {}
        prompt = fields.get("prompt")
        if isinstance(prompt, PromptSpec):
            found["served"] = prompt.served
            if prompt.conversation_id:
                found["conversation_id"] = prompt.conversation_id
        conversation = fields.get("conversation_id")  # a conversation's turn events
        if isinstance(conversation, str):
            found["conversation_id"] = conversation
    match output:
        case PromptAssembled(prompt=p):
            found["question"] = p.variables.get("question", "")
            found["memory_turns"] = len(p.history)  # a turn that used the conversation's memory
            if p.hyde_model:  # the LLM call that wrote the HyDE passage
                found.update(
                    model=p.hyde_model,
                    input_tokens=p.hyde_usage.get("input", 0),
                    output_tokens=p.hyde_usage.get("output", 0),
                )
        case QueryEmbedded():
            found.update(model=output.embedding_model, input_tokens=output.input_tokens)
            found["query_vector"] = output.vector
        case ContextRetrieved(passages=passages):
            found.update(
                passage_ids=[p.id for p in passages],
                passage_scores=[p.score for p in passages],
                dense_scores=list(output.dense_scores),
                bm25_scores=list(output.bm25_scores),
            )
        case ResponseGenerated():
            found.update(
                model=output.model,
                served=output.served,
                input_tokens=output.usage_details.get("input", 0),
                output_tokens=output.usage_details.get("output", 0),
                question=output.question,
                answer=output.answer,
                citations=list(output.citations),
                context_passages=output.context.passages_sent,
                context_passages_cut=output.context.passages_cut,
                context_tokens=output.context.tokens_sent,
                context_tokens_cut=output.context.tokens_cut,
                tokens_counted_by=output.context.counted_by,
                ttft_ms=output.ttft_ms,
                tokens_per_s=output.tokens_per_s,
            )
    return found


def payloads(output: Event | None, limit: int) -> dict[str, object]:
    """The generation's prompt as the model got it and the text of each passage sent, each
    cut to `limit` characters."""
    if not isinstance(output, ResponseGenerated):
        return {}
    return {
        "rendered_prompt": output.rendered_prompt[:limit],
        "passage_texts": {p.id: p.text[:limit] for p in output.passages},
    }


def stage_completed(
    stage: str,
    source: Event | None,
    outcome: Event | BaseException | None,
    started_at: datetime,
    ended_at: datetime,
    trace_id: str,
    tenant: str,
    settings: TelemetrySettings,
) -> StageCompleted:
    output = outcome if isinstance(outcome, Event) else None
    found = facts(source, output)
    if "query_vector" in found and not sampled(trace_id, settings.vector_sample):
        del found["query_vector"]
    for field in ("question", "answer"):
        if field in found:
            found[field] = redact(str(found[field]), settings.text)
    if settings.keep_payloads and settings.text == "keep":
        found.update(payloads(output, settings.payload_max_chars))
    model = str(found.get("model", ""))
    tokens_in, tokens_out = int(found.get("input_tokens", 0)), int(found.get("output_tokens", 0))  # type: ignore[call-overload]
    cost, known = priced(settings.prices, model, tokens_in, tokens_out) if model else (0.0, True)
    if not known:
        log.debug("no price for model %r: cost recorded as 0, priced=false", model)
    return StageCompleted(
        trace_id=trace_id,
        tenant=tenant,
        producer=stage,
        stage=stage,
        started_at=started_at,
        ended_at=ended_at,
        latency_ms=max((ended_at - started_at).total_seconds() * 1000, 0.0),
        status="error" if isinstance(outcome, BaseException) else "ok",
        error_class=type(outcome).__name__ if isinstance(outcome, BaseException) else "",
        cost_usd=cost,
        priced=known,
        **found,
    )


# Envelope fields the telemetry table has no column for.
_NOT_STORED = {"event_type", "schema_version", "occurred_at"}
# The telemetry table's columns for what served the request: "" before prompting.
_SERVED_COLUMNS = {
    "template_id": "prompt",
    "template_version": "version",
    "retrieval_mode": "retrieval_mode",
    "label": "label",
    "experiment": "experiment",
    "arm": "arm",
    "hyde": "hyde",
    "artifact_set": "artifact_set",
}


def row(event: StageCompleted) -> dict[str, Any]:
    """The event as it is, with `served` spread into its columns (rows go in by name)."""
    served = event.served
    columns = {column: getattr(served, key) if served else "" for column, key in _SERVED_COLUMNS.items()}
    columns["artifact_ids"] = list(served.artifact_ids) if served else []  # prompt artifacts used
    return {**event.model_dump(exclude=_NOT_STORED | {"served"}), **columns}


async def rows(events: Sequence[StageCompleted], store: object) -> list[dict[str, Any]]:
    """Telemetry rows (the sink's RowBuilder)."""
    return [row(event) for event in events]
