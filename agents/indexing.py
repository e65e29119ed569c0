"""Indexing: chunk documents with overlap, embed every chunk of a micro-batch at once and
upsert under stable ids, so ingesting the same file twice changes nothing; delete what a
shorter version or a withdrawal leaves behind."""

from __future__ import annotations

import asyncio
import hashlib
from collections import defaultdict
from collections.abc import Sequence

from agents.deps import Dependencies
from connectors.ports import Chunk
from schemas import DocumentIndexed, DocumentSubmitted
from schemas.documents import DocumentWithdrawn

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


async def handle_batch(
    events: Sequence[DocumentSubmitted | DocumentWithdrawn], deps: Dependencies
) -> list[DocumentIndexed]:
    """Submissions are chunked, embedded and upserted, and the chunks an earlier, longer
    version left beyond the new last one are deleted; withdrawals delete every chunk.
    Within a batch the last request for a document decides what is stored (requests for
    one document share a partition, so they arrive in order)."""
    cfg = deps.pipeline
    pieces = [
        chunk_words(e.text, cfg.chunk_words, cfg.chunk_overlap) if isinstance(e, DocumentSubmitted) else []
        for e in events
    ]
    last = {(e.tenant, e.doc_id): i for i, e in enumerate(events)}
    final = sorted(last.values())
    stored = [(i, e) for i in final if isinstance(e := events[i], DocumentSubmitted)]
    # The title is embedded with each chunk: it often carries the words a question uses.
    texts = [f"{e.title}\n{p}" if e.title else p for i, e in stored for p in pieces[i]]
    vectors = await asyncio.to_thread(deps.documents.embed, texts)
    chunks, row = [], 0
    for i, event in stored:
        for index, text in enumerate(pieces[i]):
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
    # After the upsert, so a reader never finds a re-ingested document missing.
    tails: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for i in final:
        tails[events[i].tenant].append((events[i].doc_id, len(pieces[i])))
    for tenant, kept in tails.items():
        doc_ids, counts = zip(*kept, strict=True)
        await asyncio.to_thread(deps.store.delete_documents, tenant, list(doc_ids), list(counts))
    return [
        e.follow(DocumentIndexed, STAGE, doc_id=e.doc_id, chunks=len(p))
        for e, p in zip(events, pieces, strict=True)
    ]
