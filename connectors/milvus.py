"""Passages in Milvus: Milvus Lite served over gRPC by `python -m milvus_lite server`
(embedded default) or a Milvus server, through the same MilvusClient. Every search is
filtered on the tenant field; many queries go into one search call.

Three retrieval modes: `dense` (the query embedding against the passage embeddings),
`bm25` (Milvus full-text search: a BM25 function turns the analysed `content` field into
a sparse vector) and `hybrid` (both, fused by reciprocal rank). Each leg is one Milvus
search; the fusion is done here rather than by `hybrid_search`, because hybrid_search
returns only the fused score and telemetry records each leg's own scores (the ranking is
the same as hybrid_search with RRFRanker: tests/integration/test_hybrid_retrieval.py)."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from connectors.encoders import EncoderRecord
from connectors.milvus_aliases import (
    ENCODER_PROPERTY,
    Current,
    deletable_collections,
    not_found,
    read_current,
    read_record,
    readable_collection,
    writable_collection,
)
from connectors.milvus_expressions import content, fuse_rrf, string_literal, tenant_filter
from connectors.milvus_schema import TEXT_LIMIT as _TEXT_LIMIT
from connectors.milvus_schema import hit as _hit
from connectors.milvus_schema import hits as _hits
from connectors.milvus_schema import passage_schema
from connectors.milvus_schema import scores as _scores
from connectors.ports import Chunk, Found
from connectors.ports import Hit as Hit  # re-exported for callers that import it from here
from schemas.errors import PermanentError, TransientError
from schemas.queries import RetrievalMode

log = logging.getLogger(__name__)
# Milvus's code for "collection not loaded" (searches need it in memory).
_NOT_LOADED = 101


class MilvusSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    uri: str = Field(default="http://127.0.0.1:19530", description="Milvus (or Lite server) URI.")
    token: SecretStr | None = Field(default=None, description="user:password or API key.")
    collection: str = "passages"
    # FLAT is exact, and at the collection sizes of the retrieval benchmark it was also the
    # fastest (benchmarks/milvus_index.py; figures in docs/benchmarks.md).
    index_type: Literal["HNSW", "FLAT", "IVF_FLAT", "AUTOINDEX"] = "FLAT"
    hnsw_m: int = Field(default=16, ge=4)
    hnsw_ef_construction: int = Field(default=200, ge=8)
    search_ef: int = Field(default=64, ge=1, description="HNSW ef at search time (>= top_k).")
    ivf_nlist: int = Field(default=1024, ge=1, description="IVF_FLAT clusters.")
    search_nprobe: int = Field(default=32, ge=1, description="IVF_FLAT clusters searched per query.")
    timeout_s: float = Field(default=10.0, gt=0)
    seal_after_upsert: bool = Field(
        default=True,
        description="Flush after each upsert batch. Milvus Lite searches unsealed rows by brute "
        "force in Python, many times slower than sealed ones.",
    )
    keepalive_s: float = Field(
        default=300.0,
        gt=0,
        description="gRPC keepalive ping interval. Milvus Lite's server keeps gRPC's default "
        "policy and drops (too_many_pings) a client that pings idle more often than every 5 min.",
    )
    analyzer: dict[str, Any] = Field(
        default_factory=lambda: {"tokenizer": "standard", "filter": ["lowercase"]},
        description="Milvus analyzer for the BM25 field (set when a collection is created).",
    )
    # BEIR's BM25 settings: hybrid retrieval scored a little higher with them than with
    # Milvus's defaults (benchmarks/retrieval_quality.py; figures in docs/benchmarks.md).
    bm25_k1: float = Field(default=0.9, gt=0)
    bm25_b: float = Field(default=0.4, ge=0, le=1)
    rrf_k: int = Field(
        default=10,
        ge=1,
        description="Reciprocal rank fusion constant (the usual 60 ranked lower in the retrieval "
        "benchmark: docs/benchmarks.md).",
    )
    fusion_candidates: int = Field(
        default=100, ge=1, le=1000, description="Passages each leg of a hybrid search ranks before fusion."
    )
    alias_check_s: float = Field(
        default=0.5,
        ge=0,
        description="How long the query side (the query tower and searches) reuses its reading of "
        "what the collection name points at before describing it again; 0 reads it for every "
        "micro-batch. After an alias switch, questions may still be answered from the replaced "
        "collection this long. Writers, deletions and re-indexing read it every time.",
    )


_ENTITY_FIELDS = ["doc_id", "chunk", "title", "text"]
_COPIED_FIELDS = ["id", "tenant", "doc_id", "chunk", "title", "text", "vector"]


class Tower(Protocol):
    """An encoder the store checks against the collection's record (an OnnxEmbedder)."""

    name: str

    def record(self) -> EncoderRecord: ...


class MilvusStore:
    """Open with `open()`; the constructor does no I/O.

    `reader`: the query encoder; searching refuses a collection filled by a document
    encoder it does not belong with. `writer`: the document encoder; upserting refuses a
    collection another document encoder filled, so two vector spaces never mix. Either
    is checked against the record of the collection the name points at (a collection's
    record never changes, so it is read once per collection; what the name points at is
    read every time for writers, at most `alias_check_s` apart for searches); a
    collection made before records existed is not checked."""

    def __init__(
        self, settings: MilvusSettings, *, reader: Tower | None = None, writer: Tower | None = None
    ) -> None:
        self._settings = settings
        self._client: Any = None
        self._bm25: dict[str, bool] = {}  # by collection, learnt from its schema on first use
        self._reader, self._writer = reader, writer
        self._filled_by: EncoderRecord | None | bool = False  # False: not read yet
        self._records: dict[str, EncoderRecord | None] = {}  # by collection (behind an alias)
        # The latest reading of what the name points at and when it began: the query side
        # reuses it for alias_check_s. An immutable tuple swapped whole, as executor
        # threads share it.
        self._reading: tuple[float, Current] | None = None

    @property
    def collection(self) -> str:
        return self._settings.collection

    def open(self) -> None:
        from pymilvus import MilvusClient

        token = self._settings.token.get_secret_value() if self._settings.token else ""
        try:
            self._client = MilvusClient(
                uri=self._settings.uri,
                token=token,
                timeout=self._settings.timeout_s,
                grpc_options={
                    "grpc.keepalive_time_ms": int(self._settings.keepalive_s * 1000),
                    "grpc.keepalive_permit_without_calls": False,
                },
            )
        except Exception as exc:  # pymilvus raises several unrelated types on connect
            raise TransientError(f"Milvus at {self._settings.uri} unreachable: {exc}") from exc

    def ping(self) -> None:
        """One round trip (opening a client connects lazily and proves nothing)."""
        self._call("list_collections")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def ensure_collection(self, dim: int, filled_by: EncoderRecord | None = None) -> bool:
        """Create the collection and its index for `dim`-sized vectors if missing; True when
        created. An explicit bootstrap step: searching and upserting never create it. The
        collection records `filled_by` (default: the writer's encoder)."""
        client, name = self._client, self._settings.collection
        if client.has_collection(name):
            return False
        schema, index = passage_schema(client, dim, self._settings)
        if filled_by is None and self._writer is not None:
            filled_by = self._writer.record()
        # A property, not the schema description: Milvus Lite drops descriptions.
        properties = {ENCODER_PROPERTY: filled_by.to_json()} if filled_by else {}
        client.create_collection(name, schema=schema, index_params=index, properties=properties)
        self._bm25[name], self._filled_by, self._reading = True, filled_by, None
        return True

    def current(self) -> Current:
        """What the configured name points at now (one describe call). Writers, deletions
        and alias moves read it every time, so an alias switch moves them at once."""
        return self._read(0.0)[0]

    def current_for_reads(self) -> Current:
        """What the name points at, from a reading at most alias_check_s old (the query
        tower and searches): after a switch they may keep the replaced collection that
        long, as a question in flight during the switch does."""
        return self._read(self._settings.alias_check_s)[0]

    def _read(self, max_age_s: float) -> tuple[Current, bool]:
        """A reading no older than `max_age_s`, and whether it is a reused one. A fresh
        reading replaces the kept one; a failed one keeps nothing."""
        started, reading = time.monotonic(), self._reading
        if reading is not None and started - reading[0] < max_age_s:
            return reading[1], True
        current = read_current(self._call, self._settings.collection)
        self._records[current.collection] = current.record
        self._reading = (started, current)
        return current, False

    def filled_by(self) -> EncoderRecord | None:
        """The document encoder the collection (behind the alias) records (None: made
        before records were kept). Read once, on first use."""
        if self._filled_by is False:
            self._filled_by = self.current().record
        assert self._filled_by is not True
        return self._filled_by

    def record_of(self, collection: str) -> EncoderRecord | None:
        """The record of a collection by its own name (read once per name)."""
        if collection not in self._records:
            self._records[collection] = read_record(self._call, collection)
        return self._records[collection]

    def _readable(self, encoder: str | None, *, fresh: bool = False) -> str:
        """The collection to search with vectors of query encoder `encoder` (None: the
        reader's): the one the name points at, or the one it pointed at before for
        questions embedded just before an alias switch; refuses one that does not belong.
        Decided on a recent reading (`fresh`: a new one); only a fresh reading refuses."""
        query = encoder if encoder is not None else (self._reader.name if self._reader else None)
        current, reused = self._read(0.0 if fresh else self._settings.alias_check_s)
        self._filled_by = current.record
        try:
            return readable_collection(current, query, self.record_of)
        except PermanentError:
            if not reused:
                raise
        # The reused reading may predate a switch the vectors' encoder already followed.
        current, _ = self._read(0.0)
        self._filled_by = current.record
        return readable_collection(current, query, self.record_of)

    def _writable(self) -> str:
        """The collection to write the writer's vectors into: the one the name points at,
        if they belong there."""
        current = self.current()
        self._filled_by = current.record
        ours = self._writer.record() if self._writer is not None and current.record is not None else None
        return writable_collection(current, ours, self.record_of)

    def has_bm25(self, collection: str | None = None) -> bool:
        """Whether the collection (default: the configured one) has the BM25 field
        (collections made before hybrid retrieval have not: `llmops reindex` copies them
        into one that has)."""
        name = collection or self._settings.collection
        if name not in self._bm25:
            fields = self._call("describe_collection", collection_name=name)["fields"]
            self._bm25[name] = any(f["name"] == "sparse" for f in fields)
        return self._bm25[name]

    def upsert(self, chunks: Sequence[Chunk]) -> None:
        rows = [
            {
                "id": c.id,
                "tenant": c.tenant,
                "doc_id": c.doc_id,
                "chunk": c.chunk,
                "title": c.title[:1_000],
                "text": c.text[:_TEXT_LIMIT],
                "vector": list(c.vector),
            }
            for c in chunks
        ]
        if not rows:
            return
        # Into the collection the check was made against, not the name: an alias switch
        # between the check and the write cannot put these vectors beside another encoder's.
        target = self._writable()
        if self.has_bm25(target):
            for row, c in zip(rows, chunks, strict=True):
                row["content"] = content(c.title, c.text)[:_TEXT_LIMIT]
        self._call("upsert", collection_name=target, data=rows)
        if self._settings.seal_after_upsert:
            self._call("flush", collection_name=target)

    def search(
        self,
        vectors: Sequence[Sequence[float]],
        tenant: str,
        top_k: int,
        *,
        texts: Sequence[str] = (),
        mode: RetrievalMode = "dense",
        encoder: str | None = None,
    ) -> list[Found]:
        """One search call per leg for many queries of one tenant; one Found per query.
        `texts` (the queries' words) are needed by the bm25 and hybrid modes. `encoder`:
        the query encoder that made `vectors` (default: the reader's); it picks the
        collection, and every leg searches that one collection."""
        if mode != "dense" and len(texts) != len(vectors):
            raise ValueError("bm25 and hybrid retrieval need one text per query vector")
        if len(vectors) == 0:
            return []
        try:
            return self._search(self._readable(encoder), vectors, tenant, top_k, texts, mode)
        except PermanentError as exc:
            if not not_found(exc):
                raise
            # Renamed under us (a plain collection turned into an alias): ask again, afresh.
            return self._search(self._readable(encoder, fresh=True), vectors, tenant, top_k, texts, mode)

    def _search(
        self,
        collection: str,
        vectors: Sequence[Sequence[float]],
        tenant: str,
        top_k: int,
        texts: Sequence[str],
        mode: RetrievalMode,
    ) -> list[Found]:
        if mode != "dense" and not self.has_bm25(collection):
            raise PermanentError(
                f"Milvus collection {collection!r} has no BM25 field (it was created "
                f"before {mode} retrieval existed): copy it with `llmops reindex --to NEW` and set "
                "LLMOPS_MILVUS__COLLECTION=NEW, or use the dense retrieval mode"
            )
        if mode == "dense":
            found_dense = [
                _hits(f, "vector")
                for f in self._leg(collection, "vector", [list(v) for v in vectors], tenant, top_k)
            ]
            return [Found(hits=hits, dense_scores=[h.score for h in hits]) for hits in found_dense]
        if mode == "bm25":
            legs = self._leg(collection, "sparse", list(texts), tenant, top_k)
            found_bm25 = [_hits(f, "sparse") for f in legs]
            return [Found(hits=hits, bm25_scores=[h.score for h in hits]) for hits in found_bm25]
        # Each leg returns its passages' fields: measured on Milvus Lite, a 100-deep leg
        # costs the same with them as with ids alone, and it saves fetching the winners.
        depth = max(top_k, self._settings.fusion_candidates)
        dense = self._leg(collection, "vector", [list(v) for v in vectors], tenant, depth)
        bm25 = self._leg(collection, "sparse", list(texts), tenant, depth)
        results = []
        for d, b in zip(dense, bm25, strict=True):
            entities = {str(row["id"]): row["entity"] for leg in (d, b) for row in leg}
            ranking = fuse_rrf(
                [[str(h["id"]) for h in d], [str(h["id"]) for h in b]], self._settings.rrf_k, top_k
            )
            results.append(
                Found(
                    hits=[_hit(pid, entities[pid], score) for pid, score in ranking],
                    dense_scores=_scores(d[:top_k], "vector"),
                    bm25_scores=_scores(b[:top_k], "sparse"),
                )
            )
        return results

    def _leg(self, collection: str, field_name: str, data: list[Any], tenant: str, limit: int) -> Any:
        search_params: dict[str, Any] = {"metric_type": "IP" if field_name == "vector" else "BM25"}
        if field_name == "vector" and self._settings.index_type == "HNSW":
            search_params["params"] = {"ef": max(self._settings.search_ef, limit)}
        elif field_name == "vector" and self._settings.index_type == "IVF_FLAT":
            search_params["params"] = {"nprobe": self._settings.search_nprobe}
        return self._call(
            "search",
            collection_name=collection,
            data=data,
            anns_field=field_name,
            filter=tenant_filter(tenant),
            limit=limit,
            # Never empty: Milvus reads no output fields as all of them, vectors included.
            output_fields=_ENTITY_FIELDS,
            search_params=search_params,
        )

    def rows(self, batch: int = 1_000) -> Iterator[Chunk]:
        """Every passage of the collection, for copying it into another (`llmops reindex`)."""
        iterator = self._call(
            "query_iterator",
            collection_name=self._settings.collection,
            batch_size=batch,
            output_fields=_COPIED_FIELDS,
        )
        try:
            while page := iterator.next():
                for row in page:
                    yield Chunk(
                        id=str(row["id"]),
                        tenant=row["tenant"],
                        doc_id=row["doc_id"],
                        chunk=int(row["chunk"]),
                        title=row["title"],
                        text=row["text"],
                        vector=row["vector"],
                    )
        finally:
            iterator.close()

    def delete_documents(self, tenant: str, doc_ids: Sequence[str], keep: Sequence[int] = ()) -> None:
        """Delete the chunks of these documents of one tenant, all of them or (with `keep`,
        one number per document) those numbered `keep` and beyond: the tail a shorter
        re-ingest leaves. One delete call for all of them."""
        if not doc_ids:
            return
        counts = list(keep) if keep else [0] * len(doc_ids)
        if len(counts) != len(doc_ids):
            raise ValueError("keep needs one chunk count per document")
        by_count: dict[int, list[str]] = defaultdict(list)
        for doc_id, count in zip(doc_ids, counts, strict=True):
            by_count[count].append(doc_id)
        clauses = [
            f"(doc_id in [{', '.join(string_literal(d) for d in docs)}] and chunk >= {int(count)})"
            for count, docs in sorted(by_count.items())
        ]
        expr = f"{tenant_filter(tenant)} and ({' or '.join(clauses)})"
        for collection in self.deletable():
            try:
                deleted = self._call("delete", collection_name=collection, filter=expr)
            except PermanentError as exc:
                if collection == self._settings.collection:
                    raise
                # A kept or half-filled collection (dropped, or released after a restart)
                # never fails the user's deletion: a rollback or switch reconciles it.
                log.warning("deletion not applied to %s: %s", collection, exc)
                continue
            # Milvus Lite answers with the deleted ids, a server with {"delete_count": n}.
            count = len(deleted) if isinstance(deleted, list) else int((deleted or {}).get("delete_count", 0))
            if self._settings.seal_after_upsert and count:
                self._call("flush", collection_name=collection)

    def deletable(self) -> list[str]:
        """Where a deletion goes: the name, and behind an alias also the collection a
        re-index is filling and the kept one (milvus_aliases.deletable_collections)."""
        return deletable_collections(self._call, self._settings.collection)

    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        """Which of these passage ids the collection holds (one query)."""
        if not ids:
            return set()
        expr = f"id in [{', '.join(string_literal(i) for i in ids)}]"
        rows = self._call(
            "query", collection_name=self._settings.collection, filter=expr, output_fields=["id"]
        )
        return {str(row["id"]) for row in rows}

    def count(self, tenant: str | None = None) -> int:
        expr = tenant_filter(tenant) if tenant else ""
        rows = self._call(
            "query",
            collection_name=self._settings.collection,
            filter=expr,
            output_fields=["count(*)"],
        )
        return int(rows[0]["count(*)"])

    def _call(self, method: str, **kwargs: Any) -> Any:
        from pymilvus.exceptions import MilvusException

        try:
            try:
                return getattr(self._client, method)(**kwargs)
            except MilvusException as exc:
                if getattr(exc, "code", None) != _NOT_LOADED:
                    raise
                # A restarted Milvus Lite server keeps collections released: load, retry once.
                log.warning("Milvus collection %s was released; loading it", self._settings.collection)
                self._client.load_collection(self._settings.collection)
                return getattr(self._client, method)(**kwargs)
        except MilvusException as exc:
            # Unavailable / deadline codes are worth a retry; the rest are our mistake.
            transient = getattr(exc, "code", None) in {1, 2, 4, 7, 9, 10}
            error = TransientError if transient else PermanentError
            raise error(f"Milvus {method} failed: {exc}") from exc
        except ConnectionError as exc:
            raise TransientError(f"Milvus {method} failed: {exc}") from exc


def wait_for_milvus(
    settings: MilvusSettings, timeout: float, between: Callable[[], None] = lambda: None
) -> None:
    """Block until Milvus at settings.uri answers; `between` runs before each try (a check
    that the server process is still alive, say)."""
    deadline = time.monotonic() + timeout
    while True:
        between()
        store = MilvusStore(settings.model_copy(update={"timeout_s": 2.0}))
        try:
            store.open()
            store.ping()
            return
        except TransientError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
        finally:
            store.close()
