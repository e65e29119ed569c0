"""The configured collection name as a Milvus alias over versioned collections, and the
encoders that follow it.

Readers and writers use the configured name (LLMOPS_MILVUS__COLLECTION). A stack starts
with a plain collection of that name: its first version. `llmops reindex --model` turns it
into an alias (the collection is renamed `<name>_v1` and the name aliased to it), fills a
new collection beside it, and when the quality gate passes moves the alias in one call.
The new collection records the one it replaced (PREVIOUS_PROPERTY), which is kept: the
questions embedded just before the switch are answered from it, and
`llmops reindex --rollback` moves the alias back.

The stages read what the name points at once per micro-batch (one describe call), and
the towers of a worker follow it: an aliased collection decides which encoder embeds
questions and passages, so one switch moves every worker's readers and writers at once,
with no restart and no setting to change."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from connectors.embedder import EmbeddingSettings, OnnxEmbedder, towers
from connectors.encoders import EncoderRecord, Side
from connectors.milvus import PREVIOUS_PROPERTY, Current, MilvusSettings, MilvusStore
from schemas.errors import LLMOpsError, PermanentError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Switched:
    alias: str
    before: str  # the collection it pointed at
    after: str
    took_ms: float  # the alias call itself


def make_alias(store: MilvusStore) -> Current:
    """Turn the configured name into an alias if it is a plain collection: rename the
    collection to `<name>_v1` (or the next free `_vN`) and alias the name to it. Readers
    wait out the moment between the two calls (MilvusStore.current). Idempotent."""
    current = store.current()
    if current.aliased:
        return current
    name, existing = current.name, set(store._call("list_collections"))
    version = next(f"{name}_v{n}" for n in range(1, 10_000) if f"{name}_v{n}" not in existing)
    store._call("rename_collection", old_name=name, new_name=version)
    store._call("create_alias", collection_name=version, alias=name)
    log.warning("Milvus collection %s renamed %s and aliased as %s", name, version, name)
    return store.current()


def switch(store: MilvusStore, target: str) -> Switched:
    """Point the configured name (an alias: `make_alias` first) at `target`, which records
    the collection it replaces. One alter_alias call moves every reader."""
    current = store.current()
    if not current.aliased:
        raise PermanentError(f"{current.name!r} is a plain collection, not an alias: nothing to switch")
    if target == current.collection:
        raise PermanentError(f"{current.name!r} points at {target!r} already")
    store._call(
        "alter_collection_properties",
        collection_name=target,
        properties={PREVIOUS_PROPERTY: current.collection},
    )
    started = time.perf_counter()
    store._call("alter_alias", collection_name=target, alias=current.name)
    took = (time.perf_counter() - started) * 1000
    return Switched(current.name, current.collection, target, took)


def rollback(store: MilvusStore) -> Switched:
    """Point the alias back at the collection the current one replaced (kept for this)."""
    current = store.current()
    if not current.aliased or not current.previous:
        raise PermanentError(
            f"{current.name!r} points at {current.collection!r}, which replaced no kept collection: "
            "nothing to roll back to"
        )
    if current.previous not in set(store._call("list_collections")):
        raise PermanentError(f"the previous collection {current.previous!r} was dropped: cannot roll back")
    return switch(store, current.previous)


class Embedded(np.ndarray):
    """Vectors that carry the name of the encoder that made them."""

    encoder: str = ""


class FollowingTower:
    """One side's encoder (an Embedder for the stages), following the collection the
    configured name points at: when it is an alias, the encoder its collection records
    embeds (a tower is loaded the first time it is needed); a plain collection keeps the
    configured encoders (and the store refuses a query encoder that does not belong).

    `name`, `dim` and `record()` describe the tower of the latest `embed` call, which is
    the one the stage reports (QueryEmbedded.embedding_model) and the store checks."""

    def __init__(self, configured: OnnxEmbedder, settings: EmbeddingSettings, side: Side) -> None:
        self._settings, self.side = settings, side
        self._towers: dict[str, OnnxEmbedder] = {configured.name: configured}
        self._configured = self._last = configured
        self._store: MilvusStore | None = None
        self.name, self.dim = configured.name, 0

    def follow(self, store: MilvusStore) -> None:
        self._store = store

    def open(self) -> None:
        self._configured.open()
        self._use(self._configured)

    def _use(self, tower: OnnxEmbedder) -> OnnxEmbedder:
        self._last, self.name, self.dim = tower, tower.name, tower.dim
        return tower

    def _wanted(self) -> OnnxEmbedder:
        if self._store is None:
            return self._configured
        try:
            current = self._store.current()
        except LLMOpsError as exc:
            # Retrieval and indexing will say what is wrong with Milvus; embedding goes on.
            log.warning("could not read which collection %s points at: %s", self._store.collection, exc)
            return self._last
        if not current.aliased or current.record is None:
            return self._configured
        return self._tower(current.record)

    def _tower(self, record: EncoderRecord) -> OnnxEmbedder:
        tower = self._towers.get(record.name)
        if tower is None:
            update = {"query_encoder": record.name, "document_encoder": record.name}
            tower = OnnxEmbedder(self._settings.model_copy(update=update), self.side)
            tower.open()
            log.warning("%s tower now %s, as the collection behind the alias records", self.side, record.name)
            self._towers[record.name] = tower
        return tower

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """The vectors, which say which encoder made them (`encoder`): with several
        batches in flight, `name` may already describe another batch's tower."""
        tower = self._use(self._wanted())
        vectors = tower.embed(texts).view(Embedded)
        vectors.encoder = tower.name
        return vectors

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self._last.count_tokens(texts)

    def record(self) -> EncoderRecord:
        return self._last.record()


def following(
    embedding: EmbeddingSettings, milvus: MilvusSettings
) -> tuple[FollowingTower, FollowingTower, MilvusStore]:
    """The query and document towers and the passage store of a worker, the towers
    following the collection the store's name points at (one model when both sides name
    the same encoder, as `towers` gives)."""
    query, documents = towers(embedding)
    query_side = FollowingTower(query, embedding, "query")
    document_side = FollowingTower(documents, embedding, "document")
    store = MilvusStore(milvus, reader=query_side, writer=document_side)
    query_side.follow(store)
    document_side.follow(store)
    return query_side, document_side, store
