"""Documents that change, at the indexing handler: a shorter version deletes the old
tail, a withdrawal deletes every chunk, and within a micro-batch the last request for a
document decides what is stored (they arrive in order: one partition per document)."""

from __future__ import annotations

import pytest

from agents import indexing
from agents.config import PipelineSettings
from agents.deps import Dependencies
from connectors.llm import ExtractiveBackend, LLMSettings
from schemas import DocumentSubmitted
from schemas.documents import DocumentWithdrawn, decode_request, document_key
from schemas.errors import InvalidEvent
from tests.agents.test_handlers import FakeEmbedder, FakeStore


@pytest.fixture
def deps() -> Dependencies:
    return Dependencies(
        pipeline=PipelineSettings(),
        embedder=FakeEmbedder(),
        store=FakeStore(),
        llm=ExtractiveBackend(LLMSettings()),
    )


def submitted(doc_id: str, words: int, tenant: str = "acme", trace: str = "t") -> DocumentSubmitted:
    text = " ".join(f"w{i}" for i in range(words))
    return DocumentSubmitted(trace_id=trace, producer="test", tenant=tenant, doc_id=doc_id, text=text)


def withdrawn(doc_id: str, tenant: str = "acme", trace: str = "w") -> DocumentWithdrawn:
    return DocumentWithdrawn(trace_id=trace, producer="test", tenant=tenant, doc_id=doc_id)


async def test_a_shorter_version_deletes_the_chunks_beyond_its_last(deps):
    [long] = await indexing.handle_batch([submitted("doc", 900)], deps)
    [short] = await indexing.handle_batch([submitted("doc", 100)], deps)
    assert long.chunks > short.chunks >= 1
    assert deps.store.deleted == [("acme", ["doc"], [long.chunks]), ("acme", ["doc"], [short.chunks])]


async def test_a_withdrawal_deletes_every_chunk_of_its_tenant_only(deps):
    [reply] = await indexing.handle_batch([withdrawn("doc", tenant="other")], deps)
    assert (reply.doc_id, reply.chunks, reply.trace_id) == ("doc", 0, "w")
    assert deps.store.deleted == [("other", ["doc"], [0])] and deps.store.upserted == []


async def test_the_last_request_for_a_document_in_a_batch_decides(deps):
    batch = [
        submitted("a", 400, trace="1"),
        withdrawn("a", trace="2"),
        submitted("b", 400, trace="3"),
        withdrawn("b", trace="4"),
        submitted("b", 50, trace="5"),
        submitted("a", 50, tenant="beta", trace="6"),
    ]
    replies = await indexing.handle_batch(batch, deps)
    assert [r.trace_id for r in replies] == ["1", "2", "3", "4", "5", "6"]
    stored = {(c.tenant, c.doc_id) for c in deps.store.upserted}
    assert stored == {("acme", "b"), ("beta", "a")}
    assert sorted(deps.store.deleted) == [("acme", ["a", "b"], [0, 1]), ("beta", ["a"], [1])]


def test_requests_decode_as_their_own_kind_and_share_a_key_per_document():
    assert isinstance(decode_request(withdrawn("d").model_dump_json().encode()), DocumentWithdrawn)
    assert isinstance(decode_request(submitted("d", 3).model_dump_json().encode()), DocumentSubmitted)
    with pytest.raises(InvalidEvent, match="DocumentSubmitted"):
        decode_request(b'{"event_type": "Nonsense", "doc_id": "d"}')
    with pytest.raises(InvalidEvent):
        decode_request(b"\xff not json")
    assert document_key("acme", "d") == document_key("acme", "d") != document_key("beta", "d")
