"""Conversations: the conversation stage keeps each conversation's memory and order, its
turns announce when they are over, and a prompt's declared user variables are checked
before any work is spent. The LM nodes that use the memory inside prompting (summarize,
condense) and the history text the answer prompt shows are in agents.conversation_nodes.

The conversation stage reads the turns topic, keyed by `conversation_key`: a turn's
QueryReceived from the client, and the TurnCompleted that the last stage a turn reached
announces. One worker owns a conversation's partition, so its state (a faust table with
a changelog, given to the stage as a mapping) sees the conversation's events in order. A
turn starts when the previous one is over and goes on to the queries topic with the
last turns attached; other conversations never wait. Questions without a conversation
never pass here (no extra hop for them)."""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from datetime import datetime, timedelta
from string import Template
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from agents.conversation_nodes import CONDENSE, SUMMARIZE, node_row
from agents.telemetry import TelemetrySettings
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
    FINISHED_KEPT,
    RESERVED_VARIABLES,
    ConversationState,
    Turn,
    TurnCompleted,
    conversation_key,
)
from schemas.prompts import PromptVersion

STAGE = "conversation"


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
    # A redelivered question of a turn that is over or waiting (the remembered turns
    # cover states stored before `finished` was kept).
    over = set(state.finished) | {t.trace_id for t in state.turns}
    if event.trace_id in over or event.trace_id in _pending_ids(state):
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
    """The turn in flight is over (answered, failed or given up on)."""
    finished = state.finished if state.in_flight is None else [*state.finished, state.in_flight]
    return state.model_copy(
        update={
            "in_flight": None,
            "in_flight_since": None,
            "in_flight_query": "",
            "finished": finished[-FINISHED_KEPT:],
            "updated_at": now,
        }
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
