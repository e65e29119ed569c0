"""Retrieval: the queries of a micro-batch go to Milvus in one search call per tenant and
retrieval mode (per leg; Milvus Lite's cost is mostly per call), each filtered on its
tenant. Dense searches with the query vector, bm25 and hybrid also with its words."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence

from agents.deps import Dependencies
from connectors.ports import Found
from schemas import ContextRetrieved, Passage, QueryEmbedded, RetrievalMode

STAGE = "retrieval"


async def handle_batch(events: Sequence[QueryEmbedded], deps: Dependencies) -> list[ContextRetrieved]:
    groups: dict[tuple[str, RetrievalMode], list[int]] = defaultdict(list)
    for i, event in enumerate(events):
        groups[event.tenant, event.prompt.served.retrieval_mode].append(i)
    found: list[Found] = [Found(hits=[]) for _ in events]
    for (tenant, mode), indices in groups.items():
        k = max(events[i].prompt.top_k for i in indices)
        results = await asyncio.to_thread(
            deps.store.search,
            [events[i].vector for i in indices],
            tenant,
            k,
            texts=[events[i].prompt.retrieval_text for i in indices],
            mode=mode,
        )
        for i, result in zip(indices, results, strict=True):
            found[i] = result
    return [
        e.follow(
            ContextRetrieved,
            STAGE,
            prompt=e.prompt,
            passages=[
                Passage(id=h.id, doc_id=h.doc_id, title=h.title, text=h.text, chunk=h.chunk, score=h.score)
                for h in f.hits[: e.prompt.top_k]
            ],
            dense_scores=f.dense_scores[: e.prompt.top_k],
            bm25_scores=f.bm25_scores[: e.prompt.top_k],
            latency_ms=e.latency_ms,
        )
        for e, f in zip(events, found, strict=True)
    ]
