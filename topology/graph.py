"""The system as data: read top to bottom, this is the dataflow. STAGES are the query
and indexing path (the pipeline workers); SINKS and LEADER_TIMERS are the analytics
process (the one owner of the analytics store). The faust apps, the README diagram and
the tests are all derived from them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agents import (
    alerts,
    analytics_deps,
    artifacts,
    conversation,
    conversation_nodes,
    embedding,
    generation,
    index_changes,
    indexing,
    prompting,
    retrieval,
)
from agents.analytics_deps import AnalyticsDeps
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
from schemas.alerts import Alert, ExperimentRolledBack, LagBreached
from schemas.artifacts import (
    ArtifactsIndexed,
    ArtifactsSubmitted,
    ArtifactsWithdrawn,
    decode_artifact_request,
)
from schemas.conversations import TurnCompleted
from schemas.documents import DocumentWithdrawn, decode_request
from schemas.indexes import IndexChange
from schemas.prompts import LabelMoved
from topology.topics import CONVERSATIONS_TABLE, registry_topic

if TYPE_CHECKING:
    from agents.telemetry import TelemetrySettings
    from topology.settings import Settings

# (the event a stage took, its output or error, telemetry settings) -> (topic field, key, event)
Announcer = Callable[
    [Event | None, Event | BaseException, "TelemetrySettings"], Sequence[tuple[str, bytes, Event]]
]


@dataclass(frozen=True)
class Stage:
    name: str
    consumes: str  # a field of TopicNames
    input_model: type[Event]
    produces: str
    output_model: type[Event]
    handler: BatchHandler
    replies_to: str  # where the client hears of a failure (RequestFailed)
    # A topic that carries several event types: how to decode it (None: input_model).
    decoder: Callable[[bytes | None], Event] | None = None
    # What else an outcome makes the stage send: (TopicNames field, key, event) each.
    announces: Announcer | None = None
    announced: tuple[tuple[str, type[Event]], ...] = ()  # for the diagram: (topic field, model)
    # The language-model calls the stage makes, each switched and set per prompt version.
    lm_nodes: tuple[str, ...] = ()
    keeps: str | None = None  # a faust table the stage keeps (its changelog is a topic)


# A conversation's turn is over (answered or failed): the conversation stage starts the next.
_TURN_OVER = (("turns", TurnCompleted),)


STAGES: tuple[Stage, ...] = (
    # Only turns of a conversation pass here (the client sends them to the turns topic,
    # keyed by conversation); every other question goes straight to prompting.
    Stage(
        conversation.STAGE,
        "turns",
        QueryReceived,
        "queries",
        QueryReceived,
        conversation.handle_batch,
        replies_to="responses",
        decoder=conversation.decode_turn_event,
        keeps=CONVERSATIONS_TABLE,
    ),
    Stage(
        "prompting",
        "queries",
        QueryReceived,
        "prompts",
        PromptAssembled,
        prompting.handle_batch,
        replies_to="responses",
        announces=conversation.announcements,
        # The LM nodes' own rows (prompting runs them, with HyDE, before assembling).
        announced=(*_TURN_OVER, ("telemetry", StageCompleted)),
        lm_nodes=(conversation_nodes.SUMMARIZE, conversation_nodes.CONDENSE, "hyde"),
    ),
    Stage(
        "embedding",
        "prompts",
        PromptAssembled,
        "embeddings",
        QueryEmbedded,
        embedding.handle_batch,
        replies_to="responses",
        announces=conversation.announcements,
        announced=_TURN_OVER,
    ),
    Stage(
        "retrieval",
        "embeddings",
        QueryEmbedded,
        "contexts",
        ContextRetrieved,
        retrieval.handle_batch,
        replies_to="responses",
        announces=conversation.announcements,
        announced=_TURN_OVER,
    ),
    Stage(
        "generation",
        "contexts",
        ContextRetrieved,
        "responses",
        ResponseGenerated,
        per_event(generation.handle),
        replies_to="responses",
        announces=conversation.announcements,
        announced=_TURN_OVER,
        lm_nodes=("answer",),
    ),
    Stage(
        "indexing",
        "documents",
        DocumentSubmitted,
        "indexed",
        DocumentIndexed,
        indexing.handle_batch,
        replies_to="indexed",
        decoder=decode_request,
    ),
    # Prompt artifacts, read by prompting (most similar to the question, one search per batch).
    Stage(
        artifacts.STAGE,
        "prompt_artifacts",
        ArtifactsSubmitted,
        "indexed",
        ArtifactsIndexed,
        artifacts.handle_batch,
        replies_to="indexed",
        decoder=decode_artifact_request,
    ),
)

# Who publishes onto the topics that no stage produces.
ENTRY_POINTS = (
    ("client", "queries", QueryReceived),
    ("client", "turns", QueryReceived),
    ("client", "documents", DocumentSubmitted),
    ("client", "documents", DocumentWithdrawn),
    ("client", "prompt_artifacts", ArtifactsSubmitted),
    ("client", "prompt_artifacts", ArtifactsWithdrawn),
    ("client", "feedback", FeedbackReceived),
    ("reindex", "index_changes", IndexChange),  # `llmops reindex`
)


@dataclass(frozen=True)
class Sink:
    """A consumer of the analytics process: decodes a topic's events into rows of one
    table, written idempotently, acknowledged once stored (agents/sink.py)."""

    name: str
    consumes: str  # a field of TopicNames
    input_model: type[Event]
    table: str
    rows: Callable[[AnalyticsDeps, Sequence[Any]], Awaitable[Sequence[Any]]]
    # After every stored batch, with all its rows (redelivered ones too).
    after_write: Callable[[AnalyticsDeps, Sequence[Any]], Awaitable[None]] | None = None
    # With the events whose rows were new: what must happen once per event.
    after_new: Callable[[AnalyticsDeps, Sequence[Any]], Awaitable[None]] | None = None
    key: str = "trace_id"  # the column the table's primary key starts with
    decoder: Callable[[bytes | None], Event] | None = None  # None: as input_model


@dataclass(frozen=True)
class LeaderTimer:
    """Work that must run once per group: on the analytics group's leader, every
    `every(settings)` seconds, skipped while `enabled(settings)` is False."""

    name: str
    run: Callable[[AnalyticsDeps], Awaitable[None]]
    every: Callable[[Settings], float]
    reads: tuple[str, ...]  # tables
    produces: tuple[tuple[str, type[Any]], ...] = ()  # (TopicNames field or "registry", model)
    enabled: Callable[[Settings], bool] = lambda settings: True
    writes: tuple[str, ...] = ()  # tables


SINKS: tuple[Sink, ...] = (
    Sink(
        "telemetry-sink",
        "telemetry",
        StageCompleted,
        "telemetry",
        analytics_deps.telemetry_rows,
        after_write=analytics_deps.link_arrived_traces,
        after_new=analytics_deps.record_metrics,  # each event once, for /metrics
    ),
    Sink(
        "feedback",
        "feedback",
        FeedbackReceived,
        "feedback",
        analytics_deps.feedback_rows,
        after_write=analytics_deps.link_new_feedback,
    ),
    Sink(
        alerts.STAGE,
        "alerts",
        Alert,
        "alerts",
        analytics_deps.alert_rows,
        after_new=analytics_deps.deliver_alerts,
        key="alert_id",
        decoder=alerts.decode_alert,
    ),
    # Steps of re-indexes (`llmops reindex`): who switched which collection, when, scores.
    Sink(
        index_changes.STAGE,
        "index_changes",
        IndexChange,
        "index_changes",
        index_changes.rows,
        key="change_id",
        decoder=index_changes.decode_change,
    ),
)

LEADER_TIMERS: tuple[LeaderTimer, ...] = (
    # Feedback that no targeted link caught (after a restart, say).
    LeaderTimer(
        "feedback-link-sweep",
        analytics_deps.sweep_feedback_links,
        every=lambda settings: settings.feedback.link_every_s,
        reads=("feedback", "telemetry"),
    ),
    # Drift, SLO and budget checks, once per closed window.
    LeaderTimer(
        "monitor",
        analytics_deps.evaluate_window,
        every=lambda settings: settings.monitor.tick_every_s,
        reads=("telemetry", "feedback", "alerts"),
        produces=(("alerts", Alert),),
        enabled=lambda settings: settings.monitor.enabled,
    ),
    # Experiments: roll a worse arm back.
    LeaderTimer(
        "experiment-guard",
        analytics_deps.guard_experiments,
        every=lambda settings: settings.monitor.experiments_every_s,
        reads=("telemetry", "feedback"),
        produces=(("registry", LabelMoved), ("alerts", ExperimentRolledBack)),
        enabled=lambda settings: settings.monitor.enabled,
    ),
    # Consumer lag of every stage and sink (from the broker's offsets), and its alert.
    LeaderTimer(
        "consumer-lag",
        analytics_deps.sample_lag,
        every=lambda settings: settings.lag.every_s,
        reads=(),
        produces=(("alerts", LagBreached),),
        enabled=lambda settings: settings.lag.enabled,
        writes=("consumer_lag",),
    ),
)


def chained_stages(stages: Sequence[Stage]) -> dict[str, str]:
    """Stage name -> the stage that takes its outputs in-process when the worker chains
    stages (`worker.chain_stages`): the one stage that reads its output topic, neither of
    them keeping a table (a table's stage stays on faust's consumer and changelog)."""
    readers: dict[str, list[Stage]] = {}
    for stage in stages:
        readers.setdefault(stage.consumes, []).append(stage)
    chains: dict[str, str] = {}
    for at, stage in enumerate(stages):
        match readers.get(stage.produces, []):
            case [then] if stage.keeps is None and then.keeps is None:
                if stages.index(then) <= at:  # the worker builds a successor first
                    raise ValueError(f"stage {then.name} must come after {stage.name}, which it follows")
                chains[stage.name] = then.name
    return chains


def _id(name: str) -> str:
    return name.replace("-", "_")


def mermaid(names: TopicNames | None = None, app_id: str = "llmops") -> str:
    """The system as a Mermaid flowchart (the README embeds this output)."""
    if names is None:
        names = TopicNames()

    def topic(field: str) -> str:
        name = registry_topic(app_id) if field == "registry" else getattr(names, field)
        return f'{field}[["{name}"]]'

    lines = ["flowchart LR"]
    for who, field, model in ENTRY_POINTS:
        lines.append(f"    {who}([{who}]) -- {model.__name__} --> {topic(field)}")
    lines.append(f"    client -- LabelMoved --> {topic('registry')}")
    for stage in STAGES:
        lines.append(f"    {topic(stage.consumes)} --> {stage.name}({stage.name})")
        lines.append(f"    {stage.name} -- {stage.output_model.__name__} --> {topic(stage.produces)}")
        lines.append(f"    {stage.name} -. DeadLetter .-> {topic('deadletter')}")
        lines.append(f"    {stage.name} -. StageCompleted .-> {topic('telemetry')}")
        for said, kind in stage.announced:
            if (said, kind) != ("telemetry", StageCompleted):
                lines.append(f"    {stage.name} -. {kind.__name__} .-> {topic(said)}")
        for node in stage.lm_nodes:
            lines.append(f"    {stage.name} -.- lm_{_id(node)}[/{node} LM/]")
        if stage.keeps:
            changelog = f"{app_id}-{stage.keeps}-changelog"
            table = f'table_{_id(stage.keeps)}[("{stage.keeps} table, changelog {changelog}")]'
            lines.append(f"    {stage.name} <-. memory .-> {table}")
    lines.append(f"    {topic('registry')} -. prompt versions .-> prompting")
    lines.append("    artifacts -. similar artifacts, via Milvus .-> prompting")
    lines.append(f"    {topic('responses')} --> client")
    lines.append(f"    {topic('indexed')} --> client")
    for sink in SINKS:
        node = f"sink_{_id(sink.name)}"
        lines.append(f"    {topic(sink.consumes)} --> {node}({sink.name})")
        lines.append(f"    {node} --> clickhouse[(ClickHouse)]")
        if sink.after_new is analytics_deps.deliver_alerts:
            lines.append(f"    {node} -. Slack JSON .-> webhook([webhook])")
    for timer in LEADER_TIMERS:
        node = f"timer_{_id(timer.name)}"
        if timer.reads:
            lines.append(f"    clickhouse -. {', '.join(timer.reads)} .-> {node}{{{{{timer.name}}}}}")
        else:
            lines.append(f"    kafka_offsets([consumer offsets]) -.-> {node}{{{{{timer.name}}}}}")
        if timer.writes:
            lines.append(f"    {node} -. {', '.join(timer.writes)} .-> clickhouse")
        for field, model in timer.produces:
            lines.append(f"    {node} -- {model.__name__} --> {topic(field)}")
    return "\n".join(lines) + "\n"
