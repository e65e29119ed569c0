"""Indexing: chunk documents with overlap, embed every chunk of a micro-batch at once and
upsert under stable ids, so ingesting the same file twice changes nothing."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence

from agents.deps import Dependencies
from connectors.ports import Chunk
from schemas import DocumentIndexed, DocumentSubmitted

STAGE = "indexing"


def chunk_words(text: str, size: int, overlap: int) -> list[str]:
    """Windows of `size` words, each sharing `overlap` words with the one before."""
    words = text.split()
    if not words:
        return []
    step = max(size - overlap, 1)
    starts = range(0, max(len(words) - overlap, 1), step)
    return [" ".join(words[s : s + size]) for s in starts]


def chunk_id(tenant: str, doc_id: str, index: int) -> str:
    return hashlib.sha256(f"{tenant}\x00{doc_id}\x00{index}".encode()).hexdigest()[:32]


async def handle_batch(events: Sequence[DocumentSubmitted], deps: Dependencies) -> list[DocumentIndexed]:
    cfg = deps.pipeline
    pieces = [chunk_words(e.text, cfg.chunk_words, cfg.chunk_overlap) for e in events]
    # The title is embedded with each chunk: it often carries the words a question uses.
    texts = [f"{e.title}\n{p}" if e.title else p for e, ps in zip(events, pieces, strict=True) for p in ps]
    vectors = await asyncio.to_thread(deps.documents.embed, texts)
    chunks, row = [], 0
    for event, parts in zip(events, pieces, strict=True):
        for index, text in enumerate(parts):
            chunks.append(
                Chunk(
                    id=chunk_id(event.tenant, event.doc_id, index),
                    tenant=event.tenant,
                    doc_id=event.doc_id,
                    chunk=index,
                    title=event.title,
                    text=text,
                    vector=vectors[row].tolist(),
                )
            )
            row += 1
    await asyncio.to_thread(deps.store.upsert, chunks)
    return [
        e.follow(DocumentIndexed, STAGE, doc_id=e.doc_id, chunks=len(p))
        for e, p in zip(events, pieces, strict=True)
    ]
