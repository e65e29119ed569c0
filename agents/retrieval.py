"""Retrieval: the query vectors of a micro-batch go to Milvus in one search call per
tenant (Milvus Lite's cost is mostly per call), each filtered on its tenant."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence

from agents.deps import Dependencies
from schemas import ContextRetrieved, Passage, QueryEmbedded

STAGE = "retrieval"


async def handle_batch(events: Sequence[QueryEmbedded], deps: Dependencies) -> list[ContextRetrieved]:
    by_tenant: dict[str, list[int]] = defaultdict(list)
    for i, event in enumerate(events):
        by_tenant[event.tenant].append(i)
    passages: list[list[Passage]] = [[] for _ in events]
    for tenant, indices in by_tenant.items():
        k = max(events[i].prompt.top_k for i in indices)
        hits = await asyncio.to_thread(deps.store.search, [events[i].vector for i in indices], tenant, k)
        for i, found in zip(indices, hits, strict=True):
            passages[i] = [
                Passage(id=h.id, doc_id=h.doc_id, title=h.title, text=h.text, chunk=h.chunk, score=h.score)
                for h in found[: events[i].prompt.top_k]
            ]
    return [
        e.follow(ContextRetrieved, STAGE, prompt=e.prompt, passages=p, latency_ms=e.latency_ms)
        for e, p in zip(events, passages, strict=True)
    ]
