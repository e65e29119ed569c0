"""Every topic the pipeline uses, with partitions and retention. Created by the explicit
bootstrap step (`llmops bootstrap`, or the local stack), never as a side effect."""

from __future__ import annotations

from connectors.kafka import KafkaSettings, TopicSpec

DAY_MS = 24 * 3600 * 1000


def analytics_app_id(app_id: str) -> str:
    """The analytics process's faust app (and the consumer group that elects the leader
    of its timers) beside the pipeline's."""
    return f"{app_id}-analytics"


def sinks_group(app_id: str) -> str:
    """The consumer group of the analytics process's sinks (topology/stage_consumer.py)."""
    return f"{analytics_app_id(app_id)}-sinks"


def leader_topic(app_id: str) -> str:
    """The topic whose one partition makes its holder the faust app's leader."""
    return f"{app_id}-__assignor-__leader"


REGISTRY_TABLE = "prompt-registry"


def registry_topic(app_id: str) -> str:
    """The prompt registry: compacted, the changelog of the workers' GlobalTable. It has
    faust's changelog name because faust's assignor finds a table's topic by that name."""
    return f"{app_id}-{REGISTRY_TABLE}-changelog"


CONVERSATIONS_TABLE = "conversations"


def conversations_topic(app_id: str) -> str:
    """The conversations table's changelog (faust's name for it): compacted, one partition
    per partition of the turns topic, so a worker recovers the conversations it owns."""
    return f"{app_id}-{CONVERSATIONS_TABLE}-changelog"


def topic_specs(
    kafka: KafkaSettings,
    leader_topics: tuple[str, ...] = (),
    registry: str | None = None,
    tables: tuple[str, ...] = (),
) -> list[TopicSpec]:
    """`leader_topics`: faust apps that elect a leader (for a timer that must run once)
    need a one-partition topic each; with topic declaration off, bootstrap makes it."""
    names, partitions = kafka.topics, kafka.partitions

    def spec(name: str, retention_days: int) -> TopicSpec:
        return TopicSpec(
            name,
            partitions,
            {"cleanup.policy": "delete", "retention.ms": str(retention_days * DAY_MS)},
        )

    return [
        spec(names.queries, 7),
        spec(names.turns, 7),
        spec(names.prompts, 1),
        spec(names.embeddings, 1),
        spec(names.contexts, 1),
        spec(names.responses, 7),
        spec(names.documents, 7),
        spec(names.indexed, 7),
        spec(names.prompt_artifacts, 7),
        spec(names.telemetry, 7),
        spec(names.feedback, 30),
        spec(names.alerts, 30),
        spec(names.index_changes, 30),
        # Dead letters wait for a person: keep them longest.
        spec(names.deadletter, 30),
        *(
            TopicSpec(name, 1, {"cleanup.policy": "delete", "retention.ms": str(DAY_MS)})
            for name in leader_topics
        ),
        # One partition: the registry is small and read whole, in order, by every worker.
        *([TopicSpec(registry, 1, {"cleanup.policy": "compact"})] if registry else []),
        # Tables' changelogs: compacted, partitioned as the topics their agents read.
        *(TopicSpec(name, partitions, {"cleanup.policy": "compact"}) for name in tables),
    ]
