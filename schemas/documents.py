"""Documents to index or withdraw, and the fact that they were indexed."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from schemas.codec import decode
from schemas.envelope import Event, Identifier

DocumentText = Annotated[str, StringConstraints(min_length=1, max_length=2_000_000)]


class DocumentSubmitted(Event):
    event_type: Literal["DocumentSubmitted"] = "DocumentSubmitted"
    doc_id: Identifier
    title: str = Field(default="", max_length=1_000)
    text: DocumentText
    source: str = Field(default="", max_length=2_000)


class DocumentWithdrawn(Event):
    """The document is withdrawn: every chunk of it, in its tenant, is to be deleted. It
    travels on the documents topic, keyed like the document's submissions, so it is
    handled in order with them; the reply is a DocumentIndexed with no chunks."""

    event_type: Literal["DocumentWithdrawn"] = "DocumentWithdrawn"
    doc_id: Identifier


DocumentRequest = DocumentSubmitted | DocumentWithdrawn
REQUESTS: dict[str, type[DocumentSubmitted] | type[DocumentWithdrawn]] = {
    "DocumentSubmitted": DocumentSubmitted,
    "DocumentWithdrawn": DocumentWithdrawn,
}


def document_key(tenant: str, doc_id: str) -> str:
    """The Kafka key of a document's requests: one partition per document, so a
    withdrawal is never handled before the submission it follows."""
    return f"{tenant}\x00{doc_id}"


def decode_request(data: bytes | None) -> DocumentRequest:
    """A documents-topic event as its own kind (its `event_type` says which; none is a
    submission, as before withdrawals existed)."""
    try:
        kind = json.loads(data or b"").get("event_type", "DocumentSubmitted")
    except (ValueError, UnicodeDecodeError, RecursionError, AttributeError):
        kind = "DocumentSubmitted"  # let the codec say what is wrong with it
    return decode(data, REQUESTS.get(kind, DocumentSubmitted) if isinstance(kind, str) else DocumentSubmitted)


class DocumentIndexed(Event):
    """All chunks of a document were upserted (under stable ids: re-indexing is a no-op)."""

    event_type: Literal["DocumentIndexed"] = "DocumentIndexed"
    doc_id: Identifier
    chunks: int = Field(ge=0)
    latency_ms: dict[str, float] = Field(default_factory=dict)
