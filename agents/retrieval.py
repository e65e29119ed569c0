"""Retrieval: the queries of a micro-batch go to Milvus in one search call per tenant and
retrieval mode (per leg; Milvus Lite's cost is mostly per call), each filtered on its
tenant. Dense searches with the query vector, bm25 and hybrid also with its words.

Each search names the query encoder that embedded its questions: the store searches the
collection that encoder belongs with (behind an alias switched a moment ago, the one it
replaced), so every answer's passages come from one collection and one vector space."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence

from agents.deps import Dependencies
from connectors.ports import Found
from schemas import ContextRetrieved, Passage, QueryEmbedded, RetrievalMode

STAGE = "retrieval"


async def handle_batch(events: Sequence[QueryEmbedded], deps: Dependencies) -> list[ContextRetrieved]:
    groups: dict[tuple[str, RetrievalMode, str], list[int]] = defaultdict(list)
    for i, event in enumerate(events):
        groups[event.tenant, event.prompt.served.retrieval_mode, event.embedding_model].append(i)
    found: list[Found] = [Found(hits=[]) for _ in events]
    for (tenant, mode, encoder), indices in groups.items():
        k = max(events[i].prompt.top_k for i in indices)
        results = await asyncio.to_thread(
            deps.store.search,
            [events[i].vector for i in indices],
            tenant,
            k,
            texts=[events[i].prompt.retrieval_text for i in indices],
            mode=mode,
            encoder=encoder,
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
