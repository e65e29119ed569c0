"""Collections filled from other collections (`llmops reindex`): copied as they are, or
re-embedded by a new document encoder. Both run outside the pipeline, reading and writing
through MilvusStore."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol

from connectors.milvus import MilvusStore, Tower, content
from connectors.ports import Chunk
from schemas.errors import PermanentError


def copy_collection(reader: MilvusStore, writer: MilvusStore, batch: int = 1_000) -> int:
    """Copy every passage of `reader`'s collection into `writer`'s, which must not exist
    yet and is created with the current schema and indexes (`llmops reindex`). Vectors
    are copied, not recomputed. Returns the number of passages copied."""
    rows = reader.rows(batch)
    first = next(rows, None)
    if first is None:
        raise PermanentError("the source collection is empty or missing: nothing to copy")
    if not writer.ensure_collection(len(first.vector), filled_by=reader.filled_by()):
        raise PermanentError("the target collection exists already: choose a new name")
    copied, pending = 0, [first]
    for chunk in rows:
        pending.append(chunk)
        if len(pending) == batch:
            writer.upsert(pending)
            copied, pending = copied + len(pending), []
    writer.upsert(pending)
    return copied + len(pending)


class DocumentTower(Tower, Protocol):
    """The document encoder a re-index embeds with (an opened OnnxEmbedder)."""

    dim: int

    def embed(self, texts: Sequence[str]) -> Any: ...


def reembed_collection(
    reader: MilvusStore,
    writer: MilvusStore,
    tower: DocumentTower,
    batch: int = 128,
    progress: Callable[[int], None] = lambda _: None,
) -> tuple[int, int]:
    """Fill `writer`'s collection with every passage of `reader`'s, re-embedded by
    `tower` (the new document encoder) from its stored title and text, the text the
    indexing stage embeds. The new collection records `tower`'s encoder. Resumable: the
    chunk ids are stable, so a run after a crash embeds only the passages the target
    lacks (it must have been filled by the same encoder). Returns (embedded, already
    there); `progress` hears of every page read."""
    record = tower.record()
    if not writer.ensure_collection(tower.dim, filled_by=record):
        recorded = writer.filled_by()
        if recorded is None or recorded.fingerprint != record.fingerprint:
            held = (
                f"{recorded.name} (fingerprint {recorded.fingerprint})" if recorded else "no recorded encoder"
            )
            raise PermanentError(
                f"collection {writer.collection!r} exists with {held}, not {record.name} "
                f"(fingerprint {record.fingerprint}): choose a new name to re-index into"
            )
    embedded = present = 0
    page: list[Chunk] = []

    def flush() -> None:
        nonlocal embedded, present
        have = writer.existing_ids([c.id for c in page])
        todo = [c for c in page if c.id not in have]
        if todo:
            vectors = tower.embed([content(c.title, c.text) for c in todo])
            writer.upsert([replace(c, vector=v.tolist()) for c, v in zip(todo, vectors, strict=True)])
        embedded, present = embedded + len(todo), present + len(page) - len(todo)
        progress(len(page))
        page.clear()

    for chunk in reader.rows(batch):
        page.append(chunk)
        if len(page) == batch:
            flush()
    if page:
        flush()
    return embedded, present
