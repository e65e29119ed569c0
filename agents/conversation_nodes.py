"""The LM nodes of a conversation's turn and the earlier turns as prompt text.

Inside prompting, before the answer: summarize keeps the remembered turns within the token
budget and folds the rest into the rolling summary; condense rewrites a follow-up into a
standalone question for retrieval. Generation shows the earlier turns in the answer prompt
(`with_history`). Each node that called an LM has its own telemetry row (`node_row`).

They live apart from the conversation stage (agents.conversation) because they run in
other stages, with an LLM, on the memory the stage attached to the turn; the stage itself
only orders a conversation's turns and keeps that memory."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from string import Template
from typing import Any

from agents.telemetry import TelemetrySettings, priced, redact
from connectors.ports import Budgeted, RenderedPrompt
from schemas import PermanentError, PromptAssembled, PromptSpec, QueryReceived
from schemas.conversations import Turn
from schemas.prompts import PromptVersion
from schemas.telemetry import StageCompleted

CONDENSE = "condense"
SUMMARIZE = "summarize"
# Shown before the earlier turns when the template does not place $history itself.
HISTORY_HEADER = "Earlier in this conversation:\n"
# How a backend with no tokenizer of its own counts, as connectors.llm falls back to.
CHARS_PER_TOKEN = 4


# --- the LM nodes (run inside prompting) -----------------------------------------------------


@dataclass(frozen=True)
class Condensed:
    text: str  # what retrieval searches with
    model: str = ""  # the LM that wrote it; empty when no LM ran
    usage: dict[str, int] | None = None
    ms: float = 0.0


def turn_text(turn: Turn) -> str:
    return f"User: {turn.question}\nAssistant: {turn.answer}"


def history_text(turns: Sequence[Turn], summary: str = "") -> str:
    lines = [f"Summary of earlier turns: {summary}"] if summary else []
    return "\n".join([*lines, *(turn_text(t) for t in turns)])


async def turn_tokens(turns: Sequence[Turn], llm: Any) -> list[int]:
    """Each turn's tokens as the prompt shows it, counted as the prompt budget counts: by
    a budgeted backend (the LLM server's tokenizer, or its approximation), else
    characters / CHARS_PER_TOKEN."""
    texts = [turn_text(t) for t in turns]
    if isinstance(llm, Budgeted):
        return list((await llm.count_tokens(texts)).counts)
    return [-(-len(text) // CHARS_PER_TOKEN) for text in texts]


def over_budget(counts: Sequence[int], budget: int) -> int:
    """How many of the oldest turns (token `counts`, oldest first) leave so that the rest
    fit in `budget` tokens. The last turn always stays: a follow-up leans on it most, and
    extractive condense needs its question. 0: no limit."""
    if budget <= 0:
        return 0
    kept, total = 0, 0
    for count in reversed(counts):
        if kept and total + count > budget:
            break
        kept, total = kept + 1, total + count
    return len(counts) - kept


async def condense(
    prompt: PromptVersion,
    query: QueryReceived,
    question: str,
    deps: Any,
    summary: str | None = None,
    history: Sequence[Turn] | None = None,
) -> Condensed:
    """The follow-up as a standalone question, from the earlier turns (`history`: those
    within the token budget; default all the memory). No memory (a first turn), or
    condense off: the question as it is. With the extractive backend (no LM): the previous
    question prepended, which carries its topic words into retrieval but resolves nothing
    else."""
    turns = list(query.memory if history is None else history)
    if not turns or not prompt.condense:
        return Condensed(question)
    if deps.llm.name == "extractive":
        return Condensed(f"{turns[-1].question} {question}")
    try:
        instruction = Template(prompt.condense_instruction).substitute(
            history=history_text(turns, query.summary if summary is None else summary),
            question=question,
        )
    except (KeyError, ValueError) as exc:
        raise PermanentError(f"prompt {prompt.version}: condense instruction: {exc!r}") from exc
    started = time.perf_counter()
    written = await deps.llm.generate(
        RenderedPrompt(
            system="",
            user=instruction,
            question=question,
            sources=[],
            temperature=prompt.condense_temperature,
            max_tokens=prompt.condense_max_tokens,
            model=prompt.condense_model or prompt.model,
            seed=prompt.condense_seed,
        )
    )
    # A small model may wrap its answer in lines or quotes; an empty rewrite keeps the question.
    text = " ".join(written.text.split()).strip("\"' ") or question
    ms = (time.perf_counter() - started) * 1000
    return Condensed(text, written.model, dict(written.usage_details), round(ms, 3))


@dataclass(frozen=True)
class Summarized:
    text: str  # the rolling summary the answer prompt shows
    # Turns it took in, the unsummarized ones first, then remembered ones over the token
    # budget (TurnCompleted.summarized); 0: the summary as it was.
    taken: int = 0
    kept: list[Turn] = field(default_factory=list)  # the remembered turns the prompts show
    model: str = ""
    usage: dict[str, int] | None = None
    ms: float = 0.0


async def summarize(prompt: PromptVersion, query: QueryReceived, deps: Any) -> Summarized:
    """Keep the remembered turns within `conversation.memory_tokens` (the newest that
    fit; the last always) and fold the rest, with the turns that left the memory by
    count, into the rolling summary. Nothing to fold, summarize off, or the extractive
    backend (no LM): the summary as it was, and the turns over the budget are not shown
    (with extractive there is no summary: the oldest turns are dropped)."""
    budget: int = deps.conversation.memory_tokens  # ConversationSettings.memory_tokens
    memory = list(query.memory)
    leaving = 0
    if memory and budget:
        leaving = over_budget(await turn_tokens(memory, deps.llm), budget)
    kept, folding = memory[leaving:], [*query.unsummarized, *memory[:leaving]]
    if not folding or not prompt.summarize or deps.llm.name == "extractive":
        return Summarized(query.summary, kept=kept)
    try:
        instruction = Template(prompt.summarize_instruction).substitute(
            summary=query.summary or "(none yet)", turns=history_text(folding)
        )
    except (KeyError, ValueError) as exc:
        raise PermanentError(f"prompt {prompt.version}: summarize instruction: {exc!r}") from exc
    started = time.perf_counter()
    written = await deps.llm.generate(
        RenderedPrompt(
            system="",
            user=instruction,
            question=query.question,
            sources=[],
            temperature=prompt.summarize_temperature,
            max_tokens=prompt.summarize_max_tokens,
            model=prompt.summarize_model or prompt.model,
            seed=prompt.summarize_seed,
        )
    )
    ms = round((time.perf_counter() - started) * 1000, 3)
    text = " ".join(written.text.split()) or query.summary
    return Summarized(text, len(folding), kept, written.model, dict(written.usage_details), ms)


def with_history(spec: PromptSpec, template: str, rendered: str) -> str:
    """The answer prompt with the earlier turns verbatim: where the template places
    $history, there; otherwise before the rest."""
    if not (spec.history or spec.summary) or "history" in Template(template).get_identifiers():
        return rendered
    return f"{HISTORY_HEADER}{history_text(spec.history, spec.summary)}\n\n{rendered}"


# --- each node's own telemetry row ---------------------------------------------------------


def node_row(
    assembled: PromptAssembled,
    node: str,
    model: str,
    usage: dict[str, int],
    ms: float,
    telemetry: TelemetrySettings,
) -> StageCompleted:
    """An LM node's own StageCompleted (condense, summarize): model, tokens, latency, cost."""
    spec = assembled.prompt
    ended = assembled.occurred_at
    tokens_in, tokens_out = usage.get("input", 0), usage.get("output", 0)
    cost, known = priced(telemetry.prices, model, tokens_in, tokens_out)
    return StageCompleted(
        trace_id=assembled.trace_id,
        tenant=assembled.tenant,
        producer="prompting",
        stage=node,
        started_at=ended - timedelta(milliseconds=ms),
        ended_at=ended,
        latency_ms=ms,
        status="ok",
        model=model,
        served=spec.served,
        conversation_id=spec.conversation_id or "",
        input_tokens=tokens_in,
        output_tokens=tokens_out,
        cost_usd=cost,
        priced=known,
        question=redact(spec.retrieval_text, telemetry.text),
    )
