"""Every topic the pipeline uses, with partitions and retention. Created by the explicit
bootstrap step (`llmops bootstrap`, or the local stack), never as a side effect."""

from __future__ import annotations

from connectors.kafka import KafkaSettings, TopicSpec

DAY_MS = 24 * 3600 * 1000


def topic_specs(kafka: KafkaSettings) -> list[TopicSpec]:
    names, partitions = kafka.topics, kafka.partitions

    def spec(name: str, retention_days: int) -> TopicSpec:
        return TopicSpec(
            name,
            partitions,
            {"cleanup.policy": "delete", "retention.ms": str(retention_days * DAY_MS)},
        )

    return [
        spec(names.queries, 7),
        spec(names.prompts, 1),
        spec(names.embeddings, 1),
        spec(names.contexts, 1),
        spec(names.responses, 7),
        spec(names.documents, 7),
        spec(names.indexed, 7),
        # Dead letters wait for a person: keep them longest.
        spec(names.deadletter, 30),
    ]
