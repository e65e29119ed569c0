"""What handlers may use. Built by the composition root; opened once per worker."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from dataclasses import dataclass, field

from agents.config import PipelineSettings
from agents.conversation import ConversationSettings
from agents.routing import Registry
from connectors.ports import ArtifactStore, Backend, Deltas, Embedder, PassageStore


@dataclass
class Dependencies:
    pipeline: PipelineSettings
    embedder: Embedder
    store: PassageStore
    llm: Backend
    # The prompt registry; the app points it at the registry's GlobalTable. Empty: every
    # query gets the built-in prompt.
    registry: Registry = field(default_factory=lambda: Registry({}))
    # Conversation memory by conversation key (the app points it at the conversations
    # table) and its limits.
    conversations: MutableMapping[str, bytes] = field(default_factory=dict)
    conversation: ConversationSettings = field(default_factory=ConversationSettings)
    # Where generation streams ResponseDelta pieces; None: it sends none.
    deltas: Deltas | None = None
    # The document tower (indexing); None: the query embedder does both (one encoder).
    document_embedder: Embedder | None = None
    # Prompt artifacts (agents/artifacts.py, read by prompting); None: none are kept.
    artifacts: ArtifactStore | None = None
    _opened: bool = False
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def ready(self) -> None:
        """Open every client once; each agent awaits this before its first event."""
        async with self._lock:
            if self._opened:
                return
            await asyncio.to_thread(self.embedder.open)
            if self.document_embedder is not None:
                await asyncio.to_thread(self.document_embedder.open)
            await asyncio.to_thread(self.store.open)
            if self.artifacts is not None:
                await asyncio.to_thread(self.artifacts.open)
            await self.llm.open()
            self._opened = True

    @property
    def documents(self) -> Embedder:
        """The encoder of passages: the document tower."""
        return self.document_embedder if self.document_embedder is not None else self.embedder

    async def close(self) -> None:
        async with self._lock:
            if self._opened:
                await self.llm.close()
                await asyncio.to_thread(self.store.close)
                if self.artifacts is not None:
                    await asyncio.to_thread(self.artifacts.close)
                self._opened = False
