"""Collections filled from other collections (`llmops reindex`): copied as they are, or
re-embedded by a new encoder, then kept equal to the collection they were filled from
until the alias moves (what was added or changed is embedded, what was deleted is
deleted). Passages and prompt artifacts go the same way, each described by a `Kind`. All
of it runs outside the pipeline, reading and writing through MilvusStore."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from connectors.encoders import Side
from connectors.milvus import MilvusStore, Tower, content
from connectors.milvus_artifacts import MilvusArtifacts
from connectors.milvus_expressions import string_literal
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


@dataclass(frozen=True)
class Kind:
    """One kind of collection a re-index fills: which tower embeds its rows and from
    which text (as the stage that stores them does), and which stored fields tell that a
    row changed."""

    side: Side
    fields: tuple[str, ...]
    text: Callable[[Any], str]  # a row -> the text embedded
    stored: Callable[[dict[str, Any]], tuple[Any, ...]]  # a queried row -> its compared fields
    held: Callable[[Any], tuple[Any, ...]]  # a row read from the source -> the same
    rows: Callable[[Any, int], Iterator[Any]]
    write: Callable[[Any, list[Any]], None]


# The indexing stage embeds a passage's title and text with the document tower.
PASSAGES = Kind(
    side="document",
    fields=("title", "text"),
    text=lambda c: content(c.title, c.text),
    stored=lambda r: (r["title"], r["text"]),
    held=lambda c: (c.title, c.text),
    rows=lambda store, batch: store.rows(batch),
    write=lambda store, rows: store.upsert(rows),
)
# The artifacts stage embeds an artifact's text with the query tower: prompting compares
# questions with it (agents/artifacts.py).
ARTIFACTS = Kind(
    side="query",
    fields=("text", "input", "output"),
    text=lambda a: a.text,
    stored=lambda r: (r["text"], r["input"], r["output"]),
    held=lambda a: (a.text, a.input, a.output),
    rows=lambda store, batch: store.artifact_rows(batch),
    write=lambda store, rows: store.upsert_artifacts(rows),
)


def kind_of(store: MilvusStore) -> Kind:
    return ARTIFACTS if isinstance(store, MilvusArtifacts) else PASSAGES


def reembed_collection(
    reader: MilvusStore,
    writer: MilvusStore,
    tower: DocumentTower,
    batch: int = 128,
    progress: Callable[[int], None] = lambda _: None,
    *,
    changed: bool = True,
) -> tuple[int, int]:
    """Fill `writer`'s collection with every row of `reader`'s, re-embedded by `tower`
    (the new encoder, the side the rows' kind is embedded with) from the text their stage
    embeds. The new collection records `tower`'s encoder. Resumable: the ids are stable,
    so a run after a crash embeds only the rows the target lacks (it must have been
    filled by the same encoder), and with `changed` the rows whose text the source
    changed since (a document re-ingested meanwhile). Returns (embedded, already there);
    `progress` hears of every page read."""
    kind = kind_of(writer)
    record = tower.record()
    if not writer.ensure_collection(tower.dim, filled_by=record):
        recorded = writer.filled_by()
        if recorded is None or recorded.fingerprint != record.fingerprint:
            holder = (
                f"{recorded.name} (fingerprint {recorded.fingerprint})" if recorded else "no recorded encoder"
            )
            raise PermanentError(
                f"collection {writer.collection!r} exists with {holder}, not {record.name} "
                f"(fingerprint {record.fingerprint}): choose a new name to re-index into"
            )
    embedded = present = 0
    page: list[Any] = []  # Chunk or Artifact

    def flush() -> None:
        nonlocal embedded, present
        have = held(writer, [c.id for c in page], kind)
        todo = [c for c in page if c.id not in have or (changed and have[c.id] != kind.held(c))]
        if todo:
            vectors = tower.embed([kind.text(c) for c in todo])
            kind.write(writer, [replace(c, vector=v.tolist()) for c, v in zip(todo, vectors, strict=True)])
        embedded, present = embedded + len(todo), present + len(page) - len(todo)
        progress(len(page))
        page.clear()

    for chunk in kind.rows(reader, batch):
        page.append(chunk)
        if len(page) == batch:
            flush()
    if page:
        flush()
    return embedded, present


def held(store: MilvusStore, ids: Sequence[str], kind: Kind) -> dict[str, tuple[Any, ...]]:
    """The compared fields of these ids in the store's collection (one query)."""
    if not ids:
        return {}
    rows = store._call(
        "query",
        collection_name=store.collection,
        filter=f"id in [{', '.join(string_literal(i) for i in ids)}]",
        output_fields=["id", *kind.fields],
    )
    return {str(r["id"]): kind.stored(r) for r in rows}


def ids_of(store: MilvusStore, batch: int = 5_000) -> set[str]:
    """Every id of the store's collection."""
    iterator = store._call(
        "query_iterator", collection_name=store.collection, batch_size=batch, output_fields=["id"]
    )
    found: set[str] = set()
    try:
        while page := iterator.next():
            found.update(str(row["id"]) for row in page)
    finally:
        iterator.close()
    return found


def reconcile(reader: MilvusStore, writer: MilvusStore, batch: int = 1_000) -> int:
    """Delete from `writer`'s collection the ids `reader`'s no longer holds: documents
    withdrawn or cut shorter (and artifacts withdrawn) since they were copied. Ids are
    global: a chunk id hashes the tenant, the doc id and the chunk number, and an
    artifact id its tenant and content, so one set difference is exact for every tenant.
    Returns how many were deleted."""
    gone = sorted(ids_of(writer) - ids_of(reader))
    for start in range(0, len(gone), batch):
        writer._call("delete", collection_name=writer.collection, ids=gone[start : start + batch])
    if gone and writer._settings.seal_after_upsert:
        writer._call("flush", collection_name=writer.collection)
    return len(gone)


def converge(reader: MilvusStore, writer: MilvusStore, tower: DocumentTower) -> tuple[int, int]:
    """Make `writer`'s collection hold what `reader`'s holds, each row embedded by
    `tower`: what was added or changed is embedded, what was deleted is deleted. Returns
    (embedded, deleted)."""
    embedded, _ = reembed_collection(reader, writer, tower)
    return embedded, reconcile(reader, writer)
