"""Embedding: one ONNX Runtime call for the retrieval texts of a whole micro-batch, and
for the HyDE passages of the queries whose prompt wrote one."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np

from agents.deps import Dependencies
from schemas import PromptAssembled, QueryEmbedded

STAGE = "embedding"


def search_vector(question: np.ndarray, passage: np.ndarray | None, hyde: str) -> np.ndarray:
    """HyDE "replace": the hypothetical passage's vector; "average": the normalised mean
    of both (Gao et al. average several passages with the question the same way)."""
    if passage is None or hyde == "off":
        return question
    if hyde == "replace":
        return passage
    mean = question + passage
    return mean / max(float(np.linalg.norm(mean)), 1e-12)


async def handle_batch(events: Sequence[PromptAssembled], deps: Dependencies) -> list[QueryEmbedded]:
    texts = [e.prompt.retrieval_text for e in events]
    hyde = [i for i, e in enumerate(events) if e.prompt.served.hyde != "off" and e.prompt.hyde_passage]
    # ONNX Runtime releases the GIL: a thread keeps the worker's heartbeats going.
    vectors = await asyncio.to_thread(
        deps.embedder.embed, texts + [events[i].prompt.hyde_passage for i in hyde]
    )
    passages: dict[int, np.ndarray] = dict(zip(hyde, vectors[len(events) :], strict=True))
    # A tower that follows an alias tells which encoder made these vectors (another batch
    # may have switched it since); retrieval searches the collection that encoder fits.
    model = getattr(vectors, "encoder", "") or deps.embedder.name
    tokens = deps.embedder.count_tokens(texts)
    return [
        e.follow(
            QueryEmbedded,
            STAGE,
            prompt=e.prompt,
            vector=search_vector(v, passages.get(i), e.prompt.served.hyde).tolist(),
            embedding_model=model,
            input_tokens=n,
            latency_ms=e.latency_ms,
        )
        for i, (e, v, n) in enumerate(zip(events, vectors[: len(events)], tokens, strict=True))
    ]
