"""The re-index's gate: the golden set searched in the old and the new collection, each
with the query encoder that belongs with it, and the rule that lets the alias move."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agents.evaluation import GoldenCase, documents_in_order, ndcg_at
from connectors.embedder import OnnxEmbedder
from connectors.milvus import MilvusStore
from schemas.queries import RetrievalMode
from topology.settings import Settings

GATE_DEPTH = 100  # passages per golden question (a document ranks where its best chunk does)


def passes(source_score: float, target_score: float, margin: float) -> bool:
    """The gate: the new index may score lower than the old one by at most `margin`."""
    return target_score >= source_score - margin


def golden_score(
    settings: Settings,
    collection: str,
    encoder: str,
    cases: Sequence[GoldenCase],
    tenant: str,
    mode: RetrievalMode,
) -> float:
    """Mean nDCG@10 of the golden cases on one collection, searched by its own name with
    the query tower of `encoder`."""
    tower = OnnxEmbedder(settings.embedding.model_copy(update={"query_encoder": encoder}), "query")
    tower.open()
    store = MilvusStore(settings.milvus.model_copy(update={"collection": collection}), reader=tower)
    store.open()
    try:
        scores: list[float] = []
        for start in range(0, len(cases), 64):
            batch = cases[start : start + 64]
            questions = [c.question for c in batch]
            vectors = tower.embed(questions).tolist()
            found = store.search(vectors, tenant, GATE_DEPTH, texts=questions, mode=mode)
            for case, f in zip(batch, found, strict=True):
                scores.append(ndcg_at(documents_in_order([h.doc_id for h in f.hits]), case.relevant))
    finally:
        store.close()
    return sum(scores) / len(scores)


@dataclass(frozen=True)
class Gate:
    cases: Sequence[GoldenCase]
    tenant: str
    margin: float
    mode: RetrievalMode
