"""The explicit set-up step: topics and the passage collection. Safe to run again."""

from __future__ import annotations

from dataclasses import dataclass

from connectors.embedder import OnnxEmbedder
from connectors.kafka import ensure_topics
from connectors.milvus import MilvusStore
from topology.settings import Settings
from topology.topics import topic_specs


@dataclass(frozen=True)
class BootstrapReport:
    topics_created: list[str]
    collection_created: bool
    dim: int


def bootstrap(settings: Settings) -> BootstrapReport:
    created = ensure_topics(settings.kafka, topic_specs(settings.kafka))
    embedder = OnnxEmbedder(settings.embedding)
    embedder.open()  # the collection's vector size is the model's
    store = MilvusStore(settings.milvus)
    store.open()
    try:
        made = store.ensure_collection(embedder.dim)
    finally:
        store.close()
    return BootstrapReport(topics_created=created, collection_created=made, dim=embedder.dim)
