"""The explicit set-up step: topics, the passage collection and the analytics DDL. Safe
to run again."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from connectors.clickhouse import ClickHouseSettings, StoreUnavailable, open_store
from connectors.embedder import OnnxEmbedder
from connectors.kafka import ensure_topics
from connectors.migrations import apply
from connectors.milvus import MilvusStore
from connectors.milvus_artifacts import MilvusArtifacts
from topology.settings import Settings
from topology.topics import analytics_app_id, conversations_topic, leader_topic, registry_topic, topic_specs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BootstrapReport:
    topics_created: list[str]
    collection_created: bool
    dim: int
    ddl_applied: list[str] | None  # None: left to the analytics process (it owns the chDB directory)


async def apply_ddl(clickhouse: ClickHouseSettings) -> list[str]:
    store = open_store(clickhouse)
    await store.open()
    try:
        return await apply(store, clickhouse.ddl_dir)
    finally:
        await store.close()


def bootstrap(settings: Settings, *, analytics: bool = True) -> BootstrapReport:
    """`analytics=False` leaves the DDL to the analytics process, which applies it when it
    starts (the local stack does that: a chDB directory opens in one process only)."""
    leaders = (leader_topic(analytics_app_id(settings.worker.app_id)),)
    registry = registry_topic(settings.worker.app_id)
    tables = (conversations_topic(settings.worker.app_id),)
    created = ensure_topics(settings.kafka, topic_specs(settings.kafka, leaders, registry, tables))
    embedder = OnnxEmbedder(settings.embedding, side="document")
    embedder.open()  # the collection's vector size is the document encoder's, and it records it
    store = MilvusStore(settings.milvus, writer=embedder)
    store.open()
    try:
        made = store.ensure_collection(embedder.dim)
    finally:
        store.close()
    # Prompt artifacts are compared with questions: the query encoder embeds both sides.
    same = settings.embedding.query_encoder == settings.embedding.document_encoder
    query = embedder if same else OnnxEmbedder(settings.embedding, side="query")
    query.open()
    artifacts = MilvusArtifacts(settings.milvus, encoder=query)
    artifacts.open()
    try:
        artifacts.ensure_collection(query.dim)
    finally:
        artifacts.close()
    applied = None
    if analytics:
        try:
            applied = asyncio.run(apply_ddl(settings.clickhouse))
        except StoreUnavailable:
            if settings.clickhouse.url:
                raise
            # chDB: a running analytics process holds the directory and applies the DDL itself.
            log.warning(
                "analytics store %s is busy: the analytics process applies the DDL", settings.clickhouse.path
            )
    return BootstrapReport(
        topics_created=created, collection_created=made, dim=embedder.dim, ddl_applied=applied
    )
