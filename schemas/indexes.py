"""The life of a passage index (`llmops reindex`): each step of a re-index, the quality
gate's verdict, the alias switch and the rollback, as events on the index-changes topic.
`change_id` (also the trace id and the Kafka key) ties the steps of one re-index together;
the analytics process stores every event as a row of `index_changes`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.envelope import Event, Identifier


class IndexChange(Event):
    change_id: Identifier
    alias: str = Field(description="The name readers use (LLMOPS_MILVUS__COLLECTION).")
    source: str = Field(description="The collection the alias pointed at when the change began.")
    target: str = Field(description="The collection being filled, switched to or rolled back to.")
    encoder: str = Field(default="", description="The document encoder that fills `target`.")
    source_encoder: str = Field(default="", description="The one that filled `source`.")
    actor: str = Field(description="Who ran it: user@host.")
    message: str = ""


class ReindexStarted(IndexChange):
    event_type: Literal["ReindexStarted"] = "ReindexStarted"
    rows_total: int = Field(ge=0)


class ReindexProgressed(IndexChange):
    event_type: Literal["ReindexProgressed"] = "ReindexProgressed"
    rows_done: int = Field(ge=0)
    rows_total: int = Field(ge=0)
    rows_per_s: float = Field(ge=0)


class ReindexCompleted(IndexChange):
    """Every passage of `source` is in `target` (`rows_done` embedded now, the rest were
    there from an interrupted run)."""

    event_type: Literal["ReindexCompleted"] = "ReindexCompleted"
    rows_done: int = Field(ge=0)
    rows_total: int = Field(ge=0)
    rows_per_s: float = Field(ge=0)
    seconds: float = Field(ge=0)


class GateJudged(IndexChange):
    """The golden set against both collections, each with its own query encoder: `passed`
    when the new score is at least the old one minus `margin`."""

    event_type: Literal["GateJudged"] = "GateJudged"
    metric: str
    source_score: float
    target_score: float
    margin: float
    queries: int = Field(ge=1)
    passed: bool


class IndexSwitched(IndexChange):
    """The alias now points at `target`; `source` is kept for rollback."""

    event_type: Literal["IndexSwitched"] = "IndexSwitched"
    switch_ms: float = Field(ge=0, description="The alias call itself.")
    source_score: float | None = None
    target_score: float | None = None


class IndexRolledBack(IndexChange):
    """The alias points back at `target`, the collection `source` had replaced."""

    event_type: Literal["IndexRolledBack"] = "IndexRolledBack"
    switch_ms: float = Field(ge=0)


KINDS: dict[str, type[IndexChange]] = {
    kind.__name__: kind
    for kind in (
        ReindexStarted,
        ReindexProgressed,
        ReindexCompleted,
        GateJudged,
        IndexSwitched,
        IndexRolledBack,
    )
}
