"""Conversations: the turns a conversation remembers, the event that says a turn is over,
and the state the pipeline keeps per conversation (a faust table keyed by
`conversation_key`, with a changelog topic). User metadata for prompt templates
(`Variables`) is bounded here, so an oversized map is refused before it is sent."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, Field, StringConstraints

from schemas.envelope import Event, Frozen, Identifier, utc_now

# Any printable id a client chooses (no control characters): it is scoped by the tenant
# in `conversation_key`, so it never needs to be unique across tenants.
ConversationId = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")
]
VariableName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,31}$")]
VariableValue = Annotated[str, StringConstraints(max_length=1_000)]
MAX_VARIABLES = 16
Variables = Annotated[dict[VariableName, VariableValue], Field(max_length=MAX_VARIABLES)]
# Names the pipeline fills itself; a user variable of the same name would be overwritten.
RESERVED_VARIABLES = frozenset({"question", "context", "history", "examples"})
# Turns of a conversation run one at a time, so a redelivery after a crash reaches back a
# few turns at most: this many finished trace ids cover it.
FINISHED_KEPT = 16


def conversation_key(tenant: str, conversation_id: str) -> str:
    """The memory's key. Tenants never contain "/" (TENANT_PATTERN), so the key splits
    back at its first "/" into exactly one (tenant, id): no id of one tenant can name
    another tenant's conversation, whatever characters it holds."""
    return f"{tenant}/{conversation_id}"


class Turn(Frozen):
    """One answered turn, as the conversation remembers it."""

    trace_id: Identifier
    question: str
    standalone: str = Field(default="", description="The question as retrieval searched it (condensed).")
    answer: str
    citations: list[Identifier] = Field(default_factory=list, description="The passage ids the answer cited.")
    at: AwareDatetime = Field(default_factory=utc_now)


class TurnCompleted(Event):
    """A turn of a conversation is over (answered, or failed): its conversation may start
    the next one. Sent by the last stage a turn reached, keyed by `conversation_key` onto
    the turns topic, so it reaches the worker that owns the conversation."""

    event_type: Literal["TurnCompleted"] = "TurnCompleted"
    conversation_id: ConversationId
    ok: bool
    turn: Turn | None = Field(default=None, description="The answered turn; None when it failed.")
    reason: str = ""
    summary: str | None = Field(
        default=None, description="The rolling summary the turn's summarize node wrote; None: unchanged."
    )
    summarized: int = Field(
        default=0,
        ge=0,
        description="How many turns the summary took in: the unsummarized ones first, then the oldest "
        "remembered ones (those over the memory's token budget).",
    )


class ConversationState(Frozen):
    """What the pipeline keeps per conversation: the last turns, the turn being answered
    and the turns waiting for it (their QueryReceived JSON, in arrival order)."""

    tenant: str
    conversation_id: ConversationId
    turns: list[Turn] = Field(default_factory=list, description="Oldest first; at most the memory's limit.")
    summary: str = Field(default="", description="The rolling summary of the turns older than `turns`.")
    unsummarized: list[Turn] = Field(
        default_factory=list, description="Turns that left `turns` and are not in the summary yet."
    )
    turn_count: int = Field(default=0, ge=0, description="Turns answered over the conversation's life.")
    in_flight: Identifier | None = Field(default=None, description="The trace id of the turn being answered.")
    in_flight_since: AwareDatetime | None = None
    in_flight_query: str = Field(default="", description="That turn's QueryReceived JSON, to send again.")
    pending: list[str] = Field(default_factory=list)
    finished: list[Identifier] = Field(
        default_factory=list,
        description=f"The trace ids of the last {FINISHED_KEPT} turns that are over (answered, failed or "
        "given up on), newest last: a redelivered question of one of them never starts again, even "
        "after it left the memory or when it failed.",
    )
    updated_at: AwareDatetime = Field(default_factory=utc_now)
