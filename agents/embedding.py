"""Embedding: one ONNX Runtime call for the retrieval texts of a whole micro-batch."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from agents.deps import Dependencies
from schemas import PromptAssembled, QueryEmbedded

STAGE = "embedding"


async def handle_batch(events: Sequence[PromptAssembled], deps: Dependencies) -> list[QueryEmbedded]:
    texts = [e.prompt.retrieval_text for e in events]
    # ONNX Runtime releases the GIL: a thread keeps the worker's heartbeats going.
    vectors = await asyncio.to_thread(deps.embedder.embed, texts)
    tokens = deps.embedder.count_tokens(texts)
    return [
        e.follow(
            QueryEmbedded,
            STAGE,
            prompt=e.prompt,
            vector=v.tolist(),
            embedding_model=deps.embedder.name,
            input_tokens=n,
            latency_ms=e.latency_ms,
        )
        for e, v, n in zip(events, vectors, tokens, strict=True)
    ]
