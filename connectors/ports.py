"""The ports: every interface the agents use, and the value types that cross it.

Agents import connectors only through this module (tests/unit/test_import_rules.py holds
that), so a handler depends on what a client does, never on which client does it. The
concrete adapters (`connectors.llm`, `connectors.milvus`, `connectors.embedder`,
`connectors.clickhouse`, ...) satisfy these Protocols structurally and take their value
types from here. This module imports nothing of ours but `schemas`."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from schemas.queries import RetrievalMode

# --- embedding --------------------------------------------------------------------------


class Embedder(Protocol):
    name: str
    dim: int

    def open(self) -> None: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]: ...


# --- passages (Milvus) ------------------------------------------------------------------


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
    score: float  # the mode's own: inner product (dense), BM25 (bm25) or fused RRF (hybrid)


@dataclass(frozen=True)
class Found:
    """One query's passages, best first, and each leg's own top scores (best first, as
    many as passages were asked for); a leg that did not run has none."""

    hits: list[Hit]
    dense_scores: list[float] = field(default_factory=list)
    bm25_scores: list[float] = field(default_factory=list)


class PassageStore(Protocol):
    def open(self) -> None: ...

    def close(self) -> None: ...

    def upsert(self, chunks: Sequence[Chunk]) -> None: ...

    def search(
        self,
        vectors: Sequence[Sequence[float]],
        tenant: str,
        top_k: int,
        *,
        texts: Sequence[str] = (),
        mode: RetrievalMode = "dense",
    ) -> list[Found]: ...


# --- generation (LLM backends) ----------------------------------------------------------


@dataclass(frozen=True)
class Source:
    id: str
    title: str
    text: str


@dataclass(frozen=True)
class RenderedPrompt:
    system: str
    user: str
    question: str
    sources: Sequence[Source]
    temperature: float
    max_tokens: int
    model: str | None = None  # None: the backend's configured model
    seed: int | None = None


@dataclass(frozen=True)
class Generation:
    text: str
    model: str
    citations: list[str]
    usage_details: dict[str, int] = field(default_factory=dict)


class Backend(Protocol):
    name: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def generate(self, prompt: RenderedPrompt) -> Generation: ...


# --- analytics (ClickHouse / chDB) ------------------------------------------------------


@dataclass(frozen=True)
class Rows:
    columns: list[str]
    types: list[str]
    rows: list[list[Any]]

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]

    def to_json(self) -> dict[str, Any]:
        return {"columns": self.columns, "types": self.types, "rows": self.rows}

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> Rows:
        return cls(list(payload["columns"]), list(payload["types"]), [list(r) for r in payload["rows"]])

    @classmethod
    def parse(cls, raw: bytes | str) -> Rows:
        """Rows from ClickHouse's JSONCompact output (both backends produce it)."""
        if not raw.strip():
            return cls([], [], [])
        doc = json.loads(raw)
        meta = doc.get("meta", [])
        return cls([m["name"] for m in meta], [m["type"] for m in meta], doc.get("data", []))


class AnalyticsStore(Protocol):
    backend: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> Rows: ...

    async def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None: ...

    async def insert(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None: ...
