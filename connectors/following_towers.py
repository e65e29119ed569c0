"""The encoders of a worker following the Milvus alias (connectors.milvus_aliases): an
aliased collection decides which encoder embeds questions and passages, so when
`llmops reindex` moves the alias, every worker's towers move with it, with no restart and
no setting to change.

Apart from milvus_aliases because the towers need the store and the embedder, and the
store (connectors.milvus) needs the alias readings: this module sits above both."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from connectors.embedder import EmbeddingSettings, OnnxEmbedder, towers
from connectors.encoders import EncoderRecord, Side
from connectors.milvus import MilvusSettings, MilvusStore
from schemas.errors import LLMOpsError

log = logging.getLogger(__name__)


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
        # Questions may go by a recent reading (the store reads afresh before refusing their
        # vectors); passages are embedded by what the name points at now, as written.
        read = self._store.current_for_reads if self.side == "query" else self._store.current
        try:
            current = read()
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
