"""Stage handlers are pure async functions: tested with small fakes, no Kafka, no faust."""

from __future__ import annotations

import numpy as np
import pytest

from agents import embedding, generation, indexing, prompting, retrieval, telemetry
from agents.config import PipelineSettings
from agents.deps import Dependencies
from agents.routing import Registry
from connectors.llm import ExtractiveBackend, Generation, LLMSettings
from connectors.milvus import Found, Hit
from schemas import ContextRetrieved, DocumentSubmitted, Passage, QueryReceived
from schemas.errors import PermanentError
from schemas.prompts import LabelMoved, PromptVersion, record_key


class FakeEmbedder:
    name, dim = "fake", 3

    def open(self) -> None: ...

    def embed(self, texts):
        return np.array([[len(t), 1.0, 0.0] for t in texts], dtype=np.float32)

    def count_tokens(self, texts):
        return [len(t.split()) for t in texts]


class FakeStore:
    def __init__(self) -> None:
        self.upserted, self.searches, self.deleted = [], [], []

    def open(self) -> None: ...

    def close(self) -> None: ...

    def upsert(self, chunks) -> None:
        self.upserted.extend(chunks)

    def delete_documents(self, tenant, doc_ids, keep=()) -> None:
        self.deleted.append((tenant, list(doc_ids), list(keep)))

    def search(self, vectors, tenant, top_k, *, texts=(), mode="dense", encoder=None):
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
    expected = ("rag-answer", deps.pipeline.prompt.version, 2)
    assert (out.prompt.served.prompt, out.prompt.served.version, out.prompt.top_k) == expected
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
    assert [c.prompt.served.retrieval_mode for c in contexts] == ["dense", "bm25", "dense", "hybrid"]
    assert contexts[1].dense_scores == [] and contexts[0].bm25_scores == []
    answer = await generation.handle(contexts[1], deps)
    assert answer.served.retrieval_mode == "bm25"


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
    assert response.citations == ["p1"] and response.served.version == deps.pipeline.prompt.version


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


class WritingLLM:
    """Writes a fixed hypothetical passage and says what it was asked."""

    name = "fake-llm"

    def __init__(self) -> None:
        self.asked: list = []

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def generate(self, prompt):
        self.asked.append(prompt)
        return Generation(
            text="Lambdas are anonymous functions.",
            model="served",
            citations=[],
            usage_details={"input": 12, "output": 5},
        )


def served(deps: Dependencies, prompt: PromptVersion) -> Dependencies:
    deps.registry = Registry(
        {
            record_key(prompt).encode(): prompt.model_dump_json().encode(),
            b"label/production": LabelMoved(label="production", version=prompt.version)
            .model_dump_json()
            .encode(),
        }
    )
    return deps


async def test_prompting_serves_the_registry_label_with_its_settings(deps):
    prompt = PromptVersion(name="rag", system="s", template="$context $question", top_k=3, seed=7, model="m1")
    out = await prompting.handle(ask("what is a lambda?"), served(deps, prompt))
    p = out.prompt
    assert (p.served.version, p.served.label, p.top_k, p.served.seed, p.served.model) == (
        prompt.version,
        "production",
        3,
        7,
        "m1",
    )
    with pytest.raises(PermanentError, match="no prompt label or version 'nope'"):
        await prompting.handle(ask("q?").model_copy(update={"prompt_ref": "nope"}), deps)


async def test_hyde_with_the_extractive_backend_is_refused_with_the_way_out(deps):
    prompt = PromptVersion(name="rag", system="s", template="$context $question", hyde="replace")
    with pytest.raises(PermanentError, match="LLMOPS_LLM__BACKEND=openai"):
        await prompting.handle(ask("what is a lambda?"), served(deps, prompt))


@pytest.mark.parametrize("mode", ["replace", "average"])
async def test_hyde_passage_is_written_in_prompting_and_embedding_searches_with_it(deps, mode):
    deps.llm = llm = WritingLLM()
    prompt = PromptVersion(name="rag", system="s", template="$context $question", hyde=mode, seed=3)
    assembled = await prompting.handle(ask("what is a lambda?"), served(deps, prompt))
    assert assembled.prompt.hyde_passage == "Lambdas are anonymous functions."
    assert (assembled.prompt.hyde_model, assembled.prompt.hyde_usage) == (
        "served",
        {"input": 12, "output": 5},
    )
    assert "Question: what is a lambda?" in llm.asked[0].user and llm.asked[0].seed == 3
    found = telemetry.facts(None, assembled)
    assert (found["model"], found["input_tokens"], found["output_tokens"]) == ("served", 12, 5)
    assert found["served"] == assembled.prompt.served and assembled.prompt.served.hyde == mode
    [embedded] = await embedding.handle_batch([assembled], deps)
    question, passage = FakeEmbedder().embed(["what is a lambda?", "Lambdas are anonymous functions."])
    expected = passage if mode == "replace" else (question + passage) / np.linalg.norm(question + passage)
    assert np.allclose(embedded.vector, expected)


async def test_replaying_a_question_pinned_to_its_version_assembles_the_same_prompt(deps):
    prompt = PromptVersion(name="rag", system="s", template="$context $question", seed=1, temperature=0.4)
    served(deps, prompt)
    first = await prompting.handle(
        ask("what is a lambda?").model_copy(update={"prompt_ref": prompt.version}), deps
    )
    again = await prompting.handle(
        ask("what is a lambda?").model_copy(update={"prompt_ref": prompt.version}), deps
    )
    assert first.prompt == again.prompt and first.prompt.served.version == prompt.version


async def test_generation_refuses_a_prompt_that_carries_no_temperature(deps):
    prompt = (await prompting.handle(ask("what is a lambda?"), deps)).prompt
    untempered = prompt.model_copy(update={"served": prompt.served.model_copy(update={"temperature": None})})
    event = ContextRetrieved(trace_id="t", producer="retrieval", prompt=untempered, passages=[])
    with pytest.raises(PermanentError, match="carries no temperature"):
        generation.render(event)
