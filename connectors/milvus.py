"""Passages in Milvus: Milvus Lite served over gRPC by `python -m milvus_lite server`
(embedded default) or a Milvus server, through the same MilvusClient. Every search is
filtered on the tenant field; many query vectors go into one search call."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from schemas.envelope import TENANT_PATTERN
from schemas.errors import PermanentError, TransientError

_TENANT = re.compile(TENANT_PATTERN)
_TEXT_LIMIT = 65_535  # Milvus VARCHAR max_length


class MilvusSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    uri: str = Field(default="http://127.0.0.1:19530", description="Milvus (or Lite server) URI.")
    token: SecretStr | None = Field(default=None, description="user:password or API key.")
    collection: str = "passages"
    # Measured on SciFact (5,183 docs, benchmarks/milvus_index.py): FLAT is exact and the fastest
    # there (11 ms a call, 1.1 ms a query batched; HNSW 16 ms, 1.25 ms, recall 0.994).
    index_type: Literal["HNSW", "FLAT", "IVF_FLAT", "AUTOINDEX"] = "FLAT"
    hnsw_m: int = Field(default=16, ge=4)
    hnsw_ef_construction: int = Field(default=200, ge=8)
    search_ef: int = Field(default=64, ge=1, description="HNSW ef at search time (>= top_k).")
    timeout_s: float = Field(default=10.0, gt=0)
    seal_after_upsert: bool = Field(
        default=True,
        description="Flush after each upsert batch. Milvus Lite searches unsealed rows by brute "
        "force in Python: at 5k rows one search took 175 ms unsealed, 16 ms sealed.",
    )
    keepalive_s: float = Field(
        default=300.0,
        gt=0,
        description="gRPC keepalive ping interval. Milvus Lite's server keeps gRPC's default "
        "policy and drops (too_many_pings) a client that pings idle more often than every 5 min.",
    )


@dataclass(frozen=True)
class Chunk:
    id: str
    tenant: str
    doc_id: str
    chunk: int
    title: str
    text: str
    vector: Sequence[float]


@dataclass(frozen=True)
class Hit:
    id: str
    doc_id: str
    chunk: int
    title: str
    text: str
    score: float


def tenant_filter(tenant: str) -> str:
    """A filter expression that matches exactly one tenant. Tenants are restricted to a
    closed alphabet (checked again here), so no tenant string can change its meaning."""
    if not _TENANT.fullmatch(tenant):
        raise PermanentError(f"tenant {tenant!r} is not a valid tenant name")
    return f'tenant == "{tenant}"'


class MilvusStore:
    """Open with `open()`; the constructor does no I/O."""

    def __init__(self, settings: MilvusSettings) -> None:
        self._settings = settings
        self._client: Any = None

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

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def ensure_collection(self, dim: int) -> bool:
        """Create the collection and its index for `dim`-sized vectors if missing; True when
        created. An explicit bootstrap step: searching and upserting never create it."""
        from pymilvus import DataType

        client, name = self._client, self._settings.collection
        if client.has_collection(name):
            return False
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=128)
        schema.add_field("tenant", DataType.VARCHAR, max_length=64)
        schema.add_field("doc_id", DataType.VARCHAR, max_length=128)
        schema.add_field("chunk", DataType.INT64)
        schema.add_field("title", DataType.VARCHAR, max_length=1_000)
        schema.add_field("text", DataType.VARCHAR, max_length=_TEXT_LIMIT)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        index = client.prepare_index_params()
        params: dict[str, Any] = {}
        if self._settings.index_type == "HNSW":
            params = {"M": self._settings.hnsw_m, "efConstruction": self._settings.hnsw_ef_construction}
        index.add_index("vector", index_type=self._settings.index_type, metric_type="IP", params=params)
        client.create_collection(name, schema=schema, index_params=index)
        return True

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
        if rows:
            self._call("upsert", collection_name=self._settings.collection, data=rows)
            if self._settings.seal_after_upsert:
                self._call("flush", collection_name=self._settings.collection)

    def search(self, vectors: Sequence[Sequence[float]], tenant: str, top_k: int) -> list[list[Hit]]:
        """One search call for many query vectors of one tenant; one hit list per vector."""
        if len(vectors) == 0:
            return []
        search_params: dict[str, Any] = {"metric_type": "IP"}
        if self._settings.index_type == "HNSW":
            search_params["params"] = {"ef": max(self._settings.search_ef, top_k)}
        results = self._call(
            "search",
            collection_name=self._settings.collection,
            data=[list(v) for v in vectors],
            filter=tenant_filter(tenant),
            limit=top_k,
            output_fields=["doc_id", "chunk", "title", "text"],
            search_params=search_params,
        )
        return [
            [
                Hit(
                    id=str(hit["id"]),
                    doc_id=hit["entity"]["doc_id"],
                    chunk=int(hit["entity"]["chunk"]),
                    title=hit["entity"]["title"],
                    text=hit["entity"]["text"],
                    score=float(hit["distance"]),
                )
                for hit in hits
            ]
            for hits in results
        ]

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
            return getattr(self._client, method)(**kwargs)
        except MilvusException as exc:
            # Unavailable / deadline codes are worth a retry; the rest are our mistake.
            transient = getattr(exc, "code", None) in {1, 2, 4, 7, 9, 10}
            error = TransientError if transient else PermanentError
            raise error(f"Milvus {method} failed: {exc}") from exc
        except ConnectionError as exc:
            raise TransientError(f"Milvus {method} failed: {exc}") from exc
