"""What handlers may use. Built by the composition root; opened once per worker."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from agents.config import PipelineSettings
from agents.registry import Registry
from connectors.llm import Backend
from connectors.milvus import Chunk, Found
from schemas.queries import RetrievalMode


class Embedder(Protocol):
    name: str
    dim: int

    def open(self) -> None: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]: ...


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


@dataclass
class Dependencies:
    pipeline: PipelineSettings
    embedder: Embedder
    store: PassageStore
    llm: Backend
    # The prompt registry; the app points it at the registry's GlobalTable. Empty: every
    # query gets the built-in prompt.
    registry: Registry = field(default_factory=lambda: Registry({}))
    _opened: bool = False
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def ready(self) -> None:
        """Open every client once; each agent awaits this before its first event."""
        async with self._lock:
            if self._opened:
                return
            await asyncio.to_thread(self.embedder.open)
            await asyncio.to_thread(self.store.open)
            await self.llm.open()
            self._opened = True

    async def close(self) -> None:
        async with self._lock:
            if self._opened:
                await self.llm.close()
                await asyncio.to_thread(self.store.close)
                self._opened = False
