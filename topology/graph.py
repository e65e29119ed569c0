"""The pipeline as data: read top to bottom, this is the dataflow. The faust app, the
README diagram and the tests are all derived from STAGES."""

from __future__ import annotations

from dataclasses import dataclass

from agents import embedding, generation, indexing, prompting, retrieval
from agents.runtime import BatchHandler, per_event
from connectors.kafka import TopicNames
from schemas import (
    ContextRetrieved,
    DocumentIndexed,
    DocumentSubmitted,
    Event,
    FeedbackReceived,
    PromptAssembled,
    QueryEmbedded,
    QueryReceived,
    ResponseGenerated,
    StageCompleted,
)


@dataclass(frozen=True)
class Stage:
    name: str
    consumes: str  # a field of TopicNames
    input_model: type[Event]
    produces: str
    output_model: type[Event]
    handler: BatchHandler
    replies_to: str  # where the client hears of a failure (RequestFailed)


STAGES: tuple[Stage, ...] = (
    Stage(
        "prompting",
        "queries",
        QueryReceived,
        "prompts",
        PromptAssembled,
        per_event(prompting.handle),
        replies_to="responses",
    ),
    Stage(
        "embedding",
        "prompts",
        PromptAssembled,
        "embeddings",
        QueryEmbedded,
        embedding.handle_batch,
        replies_to="responses",
    ),
    Stage(
        "retrieval",
        "embeddings",
        QueryEmbedded,
        "contexts",
        ContextRetrieved,
        retrieval.handle_batch,
        replies_to="responses",
    ),
    Stage(
        "generation",
        "contexts",
        ContextRetrieved,
        "responses",
        ResponseGenerated,
        per_event(generation.handle),
        replies_to="responses",
    ),
    Stage(
        "indexing",
        "documents",
        DocumentSubmitted,
        "indexed",
        DocumentIndexed,
        indexing.handle_batch,
        replies_to="indexed",
    ),
)

# Who publishes onto the topics that no stage produces.
ENTRY_POINTS = (
    ("client", "queries", QueryReceived),
    ("client", "documents", DocumentSubmitted),
    ("client", "feedback", FeedbackReceived),
)
# What the analytics process (the store's one owner) consumes; every stage reports to telemetry.
ANALYTICS_SOURCES = (("telemetry", StageCompleted), ("feedback", FeedbackReceived))


def mermaid(names: TopicNames | None = None) -> str:
    """The stage graph as a Mermaid flowchart (the README embeds this output)."""
    if names is None:
        names = TopicNames()

    def topic(field: str) -> str:
        return f'{field}[["{getattr(names, field)}"]]'

    lines = ["flowchart LR"]
    for who, field, model in ENTRY_POINTS:
        lines.append(f"    {who}([{who}]) -- {model.__name__} --> {topic(field)}")
    for stage in STAGES:
        lines.append(f"    {topic(stage.consumes)} --> {stage.name}({stage.name})")
        lines.append(f"    {stage.name} -- {stage.output_model.__name__} --> {topic(stage.produces)}")
        lines.append(f"    {stage.name} -. DeadLetter .-> {topic('deadletter')}")
        lines.append(f"    {stage.name} -. StageCompleted .-> {topic('telemetry')}")
    lines.append(f"    {topic('responses')} --> client")
    lines.append(f"    {topic('indexed')} --> client")
    for field, _ in ANALYTICS_SOURCES:
        lines.append(f"    {topic(field)} --> analytics(analytics)")
    lines.append("    analytics --> clickhouse[(ClickHouse)]")
    return "\n".join(lines) + "\n"
