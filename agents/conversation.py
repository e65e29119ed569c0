"""Conversations: the conversation stage keeps each conversation's memory and order, the
condense node rewrites a follow-up into a standalone question, and a prompt's declared
user variables are checked before any work is spent.

The conversation stage reads the turns topic, keyed by `conversation_key`: a turn's
QueryReceived from the client, and the TurnCompleted that the last stage a turn reached
announces. One worker owns a conversation's partition, so its state (a faust table with
a changelog, given to the stage as a mapping) sees the conversation's events in order. A
turn starts when the previous one is over and goes on to the queries topic with the
last turns attached; other conversations never wait. Questions without a conversation
never pass here (no extra hop for them)."""

from __future__ import annotations

import time
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from string import Template
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from agents.telemetry import TelemetrySettings, priced, redact
from connectors.ports import Budgeted, RenderedPrompt
from schemas import (
    ContextRetrieved,
    Event,
    InvalidEvent,
    PermanentError,
    PromptAssembled,
    PromptSpec,
    QueryReceived,
    ResponseGenerated,
    utc_now,
)
from schemas.codec import describe
from schemas.conversations import (
    RESERVED_VARIABLES,
    ConversationState,
    Turn,
    TurnCompleted,
    conversation_key,
)
from schemas.prompts import PromptVersion
from schemas.telemetry import StageCompleted

STAGE = "conversation"
CONDENSE = "condense"
SUMMARIZE = "summarize"
# Shown before the earlier turns when the template does not place $history itself.
HISTORY_HEADER = "Earlier in this conversation:\n"
# How a backend with no tokenizer of its own counts, as connectors.llm falls back to.
CHARS_PER_TOKEN = 4


class ConversationSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    memory_turns: int = Field(
        default=4, ge=1, le=50, description="Turns a conversation remembers and the answer prompt shows."
    )
    memory_tokens: int = Field(
        default=256,
        ge=0,
        description="Tokens the remembered turns may take in a prompt, counted as the prompt budget counts "
        "(the LLM server's tokenizer, else characters / 4). Older turns beyond it leave for the rolling "
        "summary (summarize node); the last turn always stays. 0: no token limit.",
    )
    retention_s: float = Field(
        default=7 * 24 * 3600.0,
        gt=0,
        description="A conversation idle this long is forgotten: its next turn starts afresh, and the sweep "
        "deletes it from the table (a tombstone in the changelog).",
    )
    sweep_every_s: float = Field(
        default=600.0, gt=0, description="How often each worker deletes its idle conversations."
    )
    turn_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="A turn unanswered this long no longer holds up the next turn of its conversation.",
    )


# --- the conversation stage --------------------------------------------------------------

_turn_events: TypeAdapter[QueryReceived | TurnCompleted] = TypeAdapter(QueryReceived | TurnCompleted)


def decode_turn_event(data: bytes | None) -> Event:
    """The turns topic carries two kinds of event: a turn asked, a turn over."""
    if data is None:
        raise InvalidEvent("empty message where a QueryReceived or TurnCompleted was expected")
    try:
        return _turn_events.validate_json(data)
    except ValidationError as exc:
        raise InvalidEvent(describe(exc, "QueryReceived or TurnCompleted")) from exc


def conversation_of(event: Event | None) -> str | None:
    """The conversation id an event of the query path belongs to, if any."""
    if isinstance(event, QueryReceived):
        return event.conversation_id
    spec = getattr(event, "prompt", None)
    return spec.conversation_id if isinstance(spec, PromptSpec) else None


def step(
    state: ConversationState | None,
    event: QueryReceived | TurnCompleted,
    settings: ConversationSettings,
    now: datetime,
) -> tuple[ConversationState | None, QueryReceived | None]:
    """The conversation's next state and the turn to start now, if any. Redelivered
    events change nothing (a redelivered in-flight question is sent again, since the crash
    may have come before it went out)."""
    if isinstance(event, TurnCompleted):
        if state is None or event.trace_id != state.in_flight:
            return state, None  # a duplicate, or a turn given up on (turn_timeout_s)
        return _start_next(_idle(_remember(state, event, settings), now), settings, now)
    assert event.conversation_id is not None
    if state is None or (
        state.in_flight is None and now - state.updated_at > timedelta(seconds=settings.retention_s)
    ):
        state = ConversationState(tenant=event.tenant, conversation_id=event.conversation_id, updated_at=now)
    if (state.tenant, state.conversation_id) != (event.tenant, event.conversation_id):
        raise PermanentError("conversation key collision")  # unreachable: conversation_key is injective
    if event.trace_id == state.in_flight:
        return state, _with_memory(event, state, settings)
    if event.trace_id in {t.trace_id for t in state.turns} or event.trace_id in _pending_ids(state):
        return state, None
    queued = state.model_copy(
        update={"pending": [*state.pending, event.model_dump_json()], "updated_at": now}
    )
    if state.in_flight is not None and state.in_flight_since is not None:
        if now - state.in_flight_since <= timedelta(seconds=settings.turn_timeout_s):
            return queued, None
        queued = _idle(queued, now)  # the turn in flight is given up on
    return _start_next(queued, settings, now)


def expired(memory: MutableMapping[str, bytes], settings: ConversationSettings, now: datetime) -> list[str]:
    """The conversations idle for longer than the retention, with no turn in flight or
    waiting: the sweep deletes them (a tombstone in the changelog, so compaction drops
    them and no recovery reads them again)."""
    idle = timedelta(seconds=settings.retention_s)
    found = []
    for key, stored in list(memory.items()):
        state = ConversationState.model_validate_json(stored)
        if state.in_flight is None and not state.pending and now - state.updated_at > idle:
            found.append(key)
    return found


def _remember(
    state: ConversationState, done: TurnCompleted, settings: ConversationSettings
) -> ConversationState:
    """The answered turn joins the memory; turns beyond `memory_turns` leave it for the
    unsummarized list, which the next turn's summarize node folds into the summary. The
    summary took in the first `done.summarized` of the unsummarized list followed by the
    remembered turns (those over the token budget), which is what the turn was sent with:
    they leave. With no LM, the oldest unsummarized turns are dropped at the limit."""
    summary, unsummarized, turns = state.summary, state.unsummarized, state.turns
    if done.summary is not None:
        from_list = min(done.summarized, len(unsummarized))
        summary, unsummarized = done.summary, unsummarized[from_list:]
        turns = turns[done.summarized - from_list :]
    turns = [*turns, done.turn] if done.turn else turns
    left, turns = turns[: -settings.memory_turns], turns[-settings.memory_turns :]
    unsummarized = [*unsummarized, *left][-settings.memory_turns :]
    return state.model_copy(
        update={
            "turns": turns,
            "summary": summary,
            "unsummarized": unsummarized,
            "turn_count": state.turn_count + (done.turn is not None),
        }
    )


def _idle(state: ConversationState, now: datetime) -> ConversationState:
    return state.model_copy(
        update={"in_flight": None, "in_flight_since": None, "in_flight_query": "", "updated_at": now}
    )


def _start_next(
    state: ConversationState, settings: ConversationSettings, now: datetime
) -> tuple[ConversationState, QueryReceived | None]:
    if not state.pending:
        return state, None
    query = QueryReceived.model_validate_json(state.pending[0])
    started = state.model_copy(
        update={
            "pending": state.pending[1:],
            "in_flight": query.trace_id,
            "in_flight_since": now,
            "in_flight_query": state.pending[0],
            "updated_at": now,
        }
    )
    return started, _with_memory(query, started, settings)


def _with_memory(
    query: QueryReceived, state: ConversationState, settings: ConversationSettings
) -> QueryReceived:
    # Whatever memory the client put in is replaced: only the pipeline's counts.
    return query.model_copy(
        update={
            "memory": state.turns[-settings.memory_turns :],
            "summary": state.summary,
            "unsummarized": state.unsummarized,
            "producer": STAGE,
        }
    )


def _pending_ids(state: ConversationState) -> set[str]:
    return {QueryReceived.model_validate_json(p).trace_id for p in state.pending}


async def handle_batch(events: Sequence[Event], deps: Any) -> list[Event | None | BaseException]:
    """One event at a time, in order: two turns of one conversation may share a batch.
    `deps.conversations` is the memory (the faust table), `deps.conversation` its limits."""
    memory: MutableMapping[str, bytes] = deps.conversations
    settings: ConversationSettings = deps.conversation
    results: list[Event | None | BaseException] = []
    for event in events:
        try:
            if not isinstance(event, QueryReceived | TurnCompleted) or event.conversation_id is None:
                raise PermanentError("the conversation stage takes turns of a conversation only")
            key = conversation_key(event.tenant, event.conversation_id)
            stored = memory.get(key)
            state = ConversationState.model_validate_json(stored) if stored else None
            after, start = step(state, event, settings, utc_now())
            if after is not None and after != state:
                memory[key] = after.model_dump_json().encode()  # the table's changelog keeps it
            results.append(start)
        except (PermanentError, ValidationError) as exc:
            results.append(exc if isinstance(exc, PermanentError) else PermanentError(str(exc)))
    return results


# --- what the query path announces ---------------------------------------------------------


def announcements(
    source: Event | None, outcome: Event | BaseException, telemetry: TelemetrySettings
) -> list[tuple[str, bytes, Event]]:
    """Messages a stage's outcome causes besides its output, as (TopicNames field, key,
    event): a conversation's turn is over (answered or failed), so the next may start;
    the condense node's own telemetry row."""
    said: list[tuple[str, bytes, Event]] = []
    conversation = conversation_of(source)
    if conversation is not None and source is not None:
        key = conversation_key(source.tenant, conversation).encode()
        if isinstance(outcome, ResponseGenerated) and isinstance(source, ContextRetrieved):
            turn = Turn(
                trace_id=source.trace_id,
                question=outcome.question,
                standalone=source.prompt.retrieval_text,
                answer=outcome.answer,
                citations=outcome.citations,
            )
            spec = source.prompt
            done = source.follow(
                TurnCompleted,
                "generation",
                conversation_id=conversation,
                ok=True,
                turn=turn,
                summary=spec.summary if spec.summarized else None,
                summarized=spec.summarized,
            )
            said.append(("turns", key, done))
        elif isinstance(outcome, BaseException):
            failed = source.follow(
                TurnCompleted, "pipeline", conversation_id=conversation, ok=False, reason=str(outcome)[:500]
            )
            said.append(("turns", key, failed))
    if isinstance(outcome, PromptAssembled) and telemetry.enabled:
        spec = outcome.prompt
        for node, model, usage, ms in (
            (CONDENSE, spec.condense_model, spec.condense_usage, spec.condense_ms),
            (SUMMARIZE, spec.summarize_model, spec.summarize_usage, spec.summarize_ms),
        ):
            if model:
                row = node_row(outcome, node, model, usage, ms, telemetry)
                said.append(("telemetry", outcome.trace_id.encode(), row))
    return said


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


# --- the condense node (runs inside prompting) ---------------------------------------------


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
    settings: ConversationSettings = deps.conversation
    memory = list(query.memory)
    leaving = 0
    if memory and settings.memory_tokens:
        leaving = over_budget(await turn_tokens(memory, deps.llm), settings.memory_tokens)
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


# --- user variables -------------------------------------------------------------------------


def template_variables(prompt: PromptVersion, query: QueryReceived) -> dict[str, str]:
    """The values of the variables `prompt` declares, from the query, checked against
    their limits; a placeholder the template uses but does not declare is an error too,
    so nothing is ever half rendered."""
    where = f"prompt {prompt.name}@{prompt.version}"
    undeclared = set(Template(prompt.template).get_identifiers()) - RESERVED_VARIABLES - set(prompt.variables)
    if undeclared:
        raise PermanentError(
            f"{where}: the template uses ${sorted(undeclared)[0]} but declares no such variable"
        )
    values = {}
    for name, spec in prompt.variables.items():
        value = query.variables.get(name)
        if value is None:
            if spec.required:
                raise PermanentError(
                    f"{where} needs the variable {name!r} (client.ask(..., variables={{{name!r}: ...}}), "
                    f"llmops ask --var {name}=...)"
                )
            value = ""
        if len(value) > spec.max_chars:
            raise PermanentError(
                f"{where}: variable {name!r} has {len(value)} characters; the limit is {spec.max_chars}"
            )
        values[name] = value
    return values
