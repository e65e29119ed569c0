"""Stage handlers are pure async functions: tested with small fakes, no Kafka, no faust."""

from __future__ import annotations

import numpy as np
import pytest

from agents import embedding, generation, indexing, prompting, retrieval
from agents.config import PipelineSettings
from agents.deps import Dependencies
from connectors.llm import ExtractiveBackend, LLMSettings
from connectors.milvus import Found, Hit
from schemas import ContextRetrieved, DocumentSubmitted, Passage, QueryReceived
from schemas.errors import PermanentError


class FakeEmbedder:
    name, dim = "fake", 3

    def open(self) -> None: ...

    def embed(self, texts):
        return np.array([[len(t), 1.0, 0.0] for t in texts], dtype=np.float32)

    def count_tokens(self, texts):
        return [len(t.split()) for t in texts]


class FakeStore:
    def __init__(self) -> None:
        self.upserted, self.searches = [], []

    def open(self) -> None: ...

    def close(self) -> None: ...

    def upsert(self, chunks) -> None:
        self.upserted.extend(chunks)

    def search(self, vectors, tenant, top_k, *, texts=(), mode="dense"):
        self.searches.append((len(vectors), tenant, top_k, mode))
        assert mode == "dense" or list(texts)
        return [
            Found(
                hits=[
                    Hit(id=f"{tenant}-{i}", doc_id="d", chunk=i, title="T", text="x", score=1.0 - i / 10)
                    for i in range(top_k)
                ],
                dense_scores=[0.9 - i / 10 for i in range(top_k)] if mode != "bm25" else [],
                bm25_scores=[9.0 - i for i in range(top_k)] if mode != "dense" else [],
            )
            for _ in vectors
        ]


@pytest.fixture
def deps() -> Dependencies:
    return Dependencies(
        pipeline=PipelineSettings(max_question_chars=50, default_top_k=2),
        embedder=FakeEmbedder(),
        store=FakeStore(),
        llm=ExtractiveBackend(LLMSettings()),
    )


def ask(question: str, tenant: str = "acme", top_k: int | None = None) -> QueryReceived:
    return QueryReceived(
        trace_id=f"t-{tenant}-{question[:5]}", producer="test", question=question, tenant=tenant, top_k=top_k
    )


async def test_prompting_fixes_template_and_normalises_the_question(deps):
    out = await prompting.handle(ask("  what   is\na lambda? "), deps)
    assert out.prompt.variables == {"question": "what is a lambda?"}
    assert (out.prompt.template_id, out.prompt.template_version, out.prompt.top_k) == ("rag-answer", "1", 2)
    assert out.trace_id == "t-acme-  wha" and out.producer == "prompting"


@pytest.mark.parametrize("question", ["   ", "x" * 51])
async def test_intake_refuses_blank_and_oversized_questions(deps, question):
    with pytest.raises(PermanentError):
        await prompting.handle(ask(question), deps)


async def test_retrieval_makes_one_search_per_tenant_and_keeps_each_top_k(deps):
    prompts = [
        await prompting.handle(ask(q, t, k), deps)
        for q, t, k in [("a?", "acme", 1), ("b?", "beta", None), ("c?", "acme", 3)]
    ]
    embedded = await embedding.handle_batch(prompts, deps)
    contexts = await retrieval.handle_batch(embedded, deps)
    assert sorted(deps.store.searches) == [(1, "beta", 2, "hybrid"), (2, "acme", 3, "hybrid")]
    assert [len(c.passages) for c in contexts] == [1, 2, 3]
    assert [len(c.dense_scores) for c in contexts] == [len(c.bm25_scores) for c in contexts] == [1, 2, 3]
    assert {p.id.split("-")[0] for p in contexts[1].passages} == {"beta"}


async def test_retrieval_searches_each_mode_apart_and_the_answer_records_it(deps):
    modes = ["dense", "bm25", "dense", None]
    prompts = [
        await prompting.handle(ask(q, "acme").model_copy(update={"retrieval_mode": m}), deps)
        for q, m in zip(["a?", "b?", "c?", "d?"], modes, strict=True)
    ]
    contexts = await retrieval.handle_batch(await embedding.handle_batch(prompts, deps), deps)
    assert sorted(s[3] for s in deps.store.searches) == ["bm25", "dense", "hybrid"]
    assert [c.prompt.retrieval_mode for c in contexts] == ["dense", "bm25", "dense", "hybrid"]
    assert contexts[1].dense_scores == [] and contexts[0].bm25_scores == []
    answer = await generation.handle(contexts[1], deps)
    assert answer.retrieval_mode == "bm25"


async def test_generation_renders_user_text_as_a_value_not_a_template(deps):
    prompt = (await prompting.handle(ask("what is $context ${question}?"), deps)).prompt
    event = ContextRetrieved(
        trace_id="t",
        producer="retrieval",
        prompt=prompt,
        passages=[
            Passage(
                id="p1",
                doc_id="d",
                title="T",
                text="Context managers define enter and exit.",
                chunk=0,
                score=0.9,
            )
        ],
    )
    rendered = generation.render(event)
    assert "Question: what is $context ${question}?" in rendered.user
    assert "[1] T\nContext managers" in rendered.user
    response = await generation.handle(event, deps)
    assert response.citations == ["p1"] and response.template_version == "1"


async def test_indexing_embeds_every_chunk_and_uses_stable_ids(deps):
    doc = DocumentSubmitted(
        trace_id="d1",
        producer="test",
        tenant="acme",
        doc_id="doc",
        title="Title",
        text=" ".join(f"w{i}" for i in range(400)),
    )
    first = await indexing.handle_batch([doc], deps)
    again = await indexing.handle_batch([doc], deps)
    ids = [c.id for c in deps.store.upserted]
    assert first[0].chunks == again[0].chunks == len(ids) // 2
    assert ids[: len(ids) // 2] == ids[len(ids) // 2 :]
    assert all(c.tenant == "acme" and c.doc_id == "doc" for c in deps.store.upserted)
