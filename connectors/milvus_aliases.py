"""The configured collection name as a Milvus alias over versioned collections: what it
points at, and moving it.

Readers and writers use the configured name (LLMOPS_MILVUS__COLLECTION). A stack starts
with a plain collection of that name: its first version. `llmops reindex --model` turns it
into an alias (the collection is renamed `<name>_v1` and the name aliased to it), fills a
new collection beside it, and when the quality gate passes moves the alias in one call.
The new collection records the one it replaced (PREVIOUS_PROPERTY), which is kept: the
questions embedded just before the switch are answered from it, and
`llmops reindex --rollback` moves the alias back.

Writers and deletions read what the name points at for every micro-batch (one describe
call: `read_current`, which MilvusStore.current calls); the query side reuses a reading for
up to LLMOPS_MILVUS__ALIAS_CHECK_S (MilvusStore.current_for_reads) and reads afresh before
refusing a question's vectors. Each search, write and deletion picks its collection from
its reading (`readable_collection`, `writable_collection`, `deletable_collections`), so one
switch moves every worker's writers at once and its readers within that interval, with no
restart and no setting to change. The encoders that follow the alias are in
connectors.following_towers.

This module imports no store: connectors.milvus imports it. The functions take the store's
call (MilvusStore._call: a MilvusClient method by name, Milvus's errors mapped to ours), or
a store as the protocol `Aliased`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from connectors.encoders import EncoderRecord, belongs
from schemas.errors import PermanentError, TransientError

log = logging.getLogger(__name__)

# The collection property that records the document encoder which filled it.
ENCODER_PROPERTY = "llmops.document_encoder"
# The collection an alias pointed at before it was switched to this one (kept for the
# questions embedded before the switch, and for `llmops reindex --rollback`).
PREVIOUS_PROPERTY = "llmops.previous"
# The collection a re-index is filling from this one ("" or absent: none).
FILLING_PROPERTY = "llmops.filling"
# Milvus's code for "collection not found": a name renamed into an alias a moment ago.
_NOT_FOUND = 100

Call = Callable[..., Any]  # MilvusStore._call
RecordOf = Callable[[str], EncoderRecord | None]  # MilvusStore.record_of


def not_found(exc: BaseException) -> bool:
    """Whether Milvus said the collection does not exist."""
    return getattr(exc.__cause__, "code", None) == _NOT_FOUND


@dataclass(frozen=True)
class Current:
    """What the configured name points at now: the collection itself, or through an alias
    (`llmops reindex` switches it) the collection behind it, with the document encoder that
    collection records and the collection the alias pointed at before it (or "")."""

    name: str
    collection: str
    record: EncoderRecord | None
    previous: str = ""

    @property
    def aliased(self) -> bool:
        return self.collection != self.name


class Aliased(Protocol):
    """A store on the configured name (connectors.milvus.MilvusStore)."""

    def current(self) -> Current: ...

    def _call(self, method: str, **kwargs: Any) -> Any: ...


# --- reading what the name points at --------------------------------------------------------


def read_current(call: Call, name: str) -> Current:
    """What `name` points at now (one describe call). While a plain collection is turned
    into an alias (renamed, then aliased: two calls a moment apart) its name is missing;
    that is waited out."""
    deadline = time.monotonic() + 2.0
    while True:
        try:
            described = call("describe_collection", collection_name=name)
            break
        except PermanentError as exc:
            if not_found(exc) and time.monotonic() < deadline:
                time.sleep(0.02)
                continue
            raise
    properties = described.get("properties") or {}
    raw = properties.get(ENCODER_PROPERTY)
    record = EncoderRecord.from_json(raw) if raw else None
    collection = str(described.get("collection_name") or name)
    return Current(name, collection, record, str(properties.get(PREVIOUS_PROPERTY, "")))


def read_record(call: Call, collection: str) -> EncoderRecord | None:
    """The document encoder a collection, by its own name, records (None: none)."""
    described = call("describe_collection", collection_name=collection)
    raw = (described.get("properties") or {}).get(ENCODER_PROPERTY)
    return EncoderRecord.from_json(raw) if raw else None


def readable_collection(current: Current, query: str | None, record_of: RecordOf) -> str:
    """The collection to search with vectors of query encoder `query` (None: unchecked):
    the one the name points at, or, for questions embedded just before an alias switch,
    the one it pointed at before. Refuses one that does not belong."""
    recorded = current.record
    if query is None or recorded is None or belongs(query, recorded):
        return current.collection
    if current.previous:
        before = record_of(current.previous)
        if before is not None and belongs(query, before):
            return current.previous
    raise PermanentError(
        f"Milvus collection {current.name!r} was filled by the document encoder "
        f"{recorded.name} (fingerprint {recorded.fingerprint}); the query encoder "
        f"{query} does not belong with it and would find nonsense neighbours. Set "
        f"LLMOPS_EMBEDDING__QUERY_ENCODER={recorded.name}, or re-index the documents with "
        f"{query} (`llmops reindex --model {query}`)"
    )


def writable_collection(current: Current, ours: EncoderRecord | None, record_of: RecordOf) -> str:
    """The collection to write vectors of the document encoder `ours` (None: unchecked)
    into: the one the name points at, if they belong there."""
    recorded = current.record
    if ours is None or recorded is None:
        return current.collection
    if recorded.fingerprint == ours.fingerprint:
        return current.collection
    before = record_of(current.previous) if current.previous else None
    if before is not None and before.fingerprint == ours.fingerprint:
        # The alias moved after these vectors were made: a retry embeds them again
        # with the encoder of the collection it points at now.
        raise TransientError(
            f"Milvus alias {current.name!r} moved to {current.collection!r} ({recorded.name}) "
            f"while these passages were embedded with {ours.name}"
        )
    raise PermanentError(
        f"Milvus collection {current.name!r} was filled by the document encoder "
        f"{recorded.name} (fingerprint {recorded.fingerprint}); writing vectors of "
        f"{ours.name} (fingerprint {ours.fingerprint}) would mix two vector spaces. Set "
        f"LLMOPS_EMBEDDING__DOCUMENT_ENCODER={recorded.name} as it was, or index into a new "
        "collection (LLMOPS_MILVUS__COLLECTION=NEW)"
    )


def deletable_collections(call: Call, name: str) -> list[str]:
    """Where a deletion goes: the name, and behind an alias also the collection a
    re-index is filling from it and the kept one it replaced, so a document withdrawn
    or cut shorter during a re-index, or before a rollback, stays so after the switch
    (deleting needs no encoder). One describe call."""
    described = call("describe_collection", collection_name=name)
    if str(described.get("collection_name") or name) == name:
        return [name]
    properties = described.get("properties") or {}
    others = (properties.get(FILLING_PROPERTY), properties.get(PREVIOUS_PROPERTY))
    return [name, *dict.fromkeys(str(c) for c in others if c)]


# --- moving it ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Switched:
    alias: str
    before: str  # the collection it pointed at
    after: str
    took_ms: float  # the alias call itself


def make_alias(store: Aliased) -> Current:
    """Turn the configured name into an alias if it is a plain collection: rename the
    collection to `<name>_v1` (or the next free `_vN`) and alias the name to it. Readers
    wait out the moment between the two calls (MilvusStore.current). Idempotent."""
    current = store.current()
    if current.aliased:
        return current
    name, existing = current.name, set(store._call("list_collections"))
    version = next(f"{name}_v{n}" for n in range(1, 10_000) if f"{name}_v{n}" not in existing)
    store._call("rename_collection", old_name=name, new_name=version)
    store._call("create_alias", collection_name=version, alias=name)
    log.warning("Milvus collection %s renamed %s and aliased as %s", name, version, name)
    return store.current()


def switch(store: Aliased, target: str) -> Switched:
    """Point the configured name (an alias: `make_alias` first) at `target`, which records
    the collection it replaces. One alter_alias call moves every reader."""
    current = store.current()
    if not current.aliased:
        raise PermanentError(f"{current.name!r} is a plain collection, not an alias: nothing to switch")
    if target == current.collection:
        raise PermanentError(f"{current.name!r} points at {target!r} already")
    store._call(
        "alter_collection_properties",
        collection_name=target,
        properties={PREVIOUS_PROPERTY: current.collection},
    )
    started = time.perf_counter()
    store._call("alter_alias", collection_name=target, alias=current.name)
    took = (time.perf_counter() - started) * 1000
    return Switched(current.name, current.collection, target, took)


def rollback(store: Aliased) -> Switched:
    """Point the alias back at the collection the current one replaced (kept for this)."""
    current = store.current()
    if not current.aliased or not current.previous:
        raise PermanentError(
            f"{current.name!r} points at {current.collection!r}, which replaced no kept collection: "
            "nothing to roll back to"
        )
    if current.previous not in set(store._call("list_collections")):
        raise PermanentError(f"the previous collection {current.previous!r} was dropped: cannot roll back")
    return switch(store, current.previous)
