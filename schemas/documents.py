"""Documents to index, and the fact that they were indexed."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from schemas.envelope import Event, Identifier

DocumentText = Annotated[str, StringConstraints(min_length=1, max_length=2_000_000)]


class DocumentSubmitted(Event):
    event_type: Literal["DocumentSubmitted"] = "DocumentSubmitted"
    doc_id: Identifier
    title: str = Field(default="", max_length=1_000)
    text: DocumentText
    source: str = Field(default="", max_length=2_000)


class DocumentIndexed(Event):
    """All chunks of a document were upserted (under stable ids: re-indexing is a no-op)."""

    event_type: Literal["DocumentIndexed"] = "DocumentIndexed"
    doc_id: Identifier
    chunks: int = Field(ge=0)
    latency_ms: dict[str, float] = Field(default_factory=dict)
