"""Prompt artifacts in the handlers, with fakes: the artifacts stage stores and removes,
prompting makes one embedding call and one search per tenant, prompt and set for a
micro-batch and renders what it found, and the ids travel to the response."""

from __future__ import annotations

import asyncio

import pytest

from agents import artifacts, generation, prompting
from agents.config import PipelineSettings
from agents.deps import Dependencies
from agents.routing import Registry
from connectors.llm import ExtractiveBackend, LLMSettings
from connectors.ports import ArtifactHit
from schemas import ContextRetrieved, Passage, PromptAssembled, QueryReceived
from schemas.artifacts import ArtifactContent, ArtifactsIndexed, ArtifactsSubmitted, ArtifactsWithdrawn
from schemas.errors import TransientError
from schemas.prompts import PromptVersion, record_key
from tests.agents.test_handlers import FakeEmbedder, FakeStore, served
from tests.unit.test_artifacts import TEMPLATE

EXAMPLES = [ArtifactContent(text=f"example {n}", input=f"in {n}", output=f"out {n} [1]") for n in range(3)]
SET = ArtifactsSubmitted(trace_id="t", producer="p", prompt="rag", artifacts=EXAMPLES).artifact_set


class FakeArtifacts:
    """Keeps rows by id; a search returns the rows of the tenant, prompt and set in id order."""

    def __init__(self) -> None:
        self.rows: dict[str, object] = {}
        self.searches: list[tuple[int, str, str, str, int]] = []
        self.fail: Exception | None = None

    def open(self) -> None: ...

    def close(self) -> None: ...

    def upsert_artifacts(self, rows) -> None:
        self.rows.update({r.id: r for r in rows})

    def delete_artifacts(self, tenant, prompt, artifact_set="", ids=()) -> int:
        gone = [
            i
            for i, r in self.rows.items()
            if (r.tenant, r.prompt) == (tenant, prompt)
            and (not artifact_set or r.artifact_set == artifact_set)
            and (not ids or i in ids)
        ]
        for i in gone:
            del self.rows[i]
        return len(gone)

    def search_artifacts(self, vectors, tenant, prompt, artifact_set, k):
        if self.fail is not None:
            raise self.fail
        self.searches.append((len(vectors), tenant, prompt, artifact_set, k))
        mine = sorted(
            (
                r
                for r in self.rows.values()
                if (r.tenant, r.prompt, r.artifact_set) == (tenant, prompt, artifact_set)
            ),
            key=lambda r: r.id,
        )
        return [
            [ArtifactHit(id=r.id, text=r.text, input=r.input, output=r.output, score=1.0) for r in mine[:k]]
            for _ in vectors
        ]


@pytest.fixture
def deps() -> Dependencies:
    return Dependencies(
        pipeline=PipelineSettings(),
        embedder=FakeEmbedder(),
        store=FakeStore(),
        llm=ExtractiveBackend(LLMSettings()),
        artifacts=FakeArtifacts(),
    )


def push(tenant: str, prompt: str = "rag", items=EXAMPLES) -> ArtifactsSubmitted:
    return ArtifactsSubmitted(
        trace_id=f"push-{tenant}", producer="p", tenant=tenant, prompt=prompt, artifacts=items
    )


def ask(question: str, tenant: str) -> QueryReceived:
    return QueryReceived(trace_id=f"t-{tenant}-{question}", producer="test", question=question, tenant=tenant)


async def test_the_artifacts_stage_stores_once_and_removes_in_order(deps):
    store = deps.artifacts
    first = await artifacts.handle_batch([push("acme"), push("acme")], deps)
    assert [type(r) for r in first] == [ArtifactsIndexed, ArtifactsIndexed]
    assert first[0].ids == first[1].ids and len(store.rows) == 3 and first[0].artifact_set == SET
    await artifacts.handle_batch([push("other")], deps)
    assert len(store.rows) == 6
    # A withdrawal between two pushes: handled in its place.
    withdraw = ArtifactsWithdrawn(trace_id="w", producer="p", tenant="acme", prompt="rag", artifact_set=SET)
    replies = await artifacts.handle_batch([push("acme"), withdraw, push("acme", items=EXAMPLES[:1])], deps)
    assert [r.removed for r in replies] == [0, 3, 0]
    assert sorted(r.tenant for r in store.rows.values()) == ["acme", "other", "other", "other"]


async def test_prompting_renders_the_nearest_artifacts_with_one_search_per_group(deps):
    await artifacts.handle_batch([push("acme"), push("other")], deps)
    prompt = PromptVersion(name="rag", system="s", template=TEMPLATE, artifacts_k=2, artifact_set=SET)
    served(deps, prompt)
    questions = [ask(f"q{n}", "acme") for n in range(3)] + [ask("q", "other")]
    out = await prompting.handle_batch(questions, deps)
    assert deps.artifacts.searches == [(3, "acme", "rag", SET, 2), (1, "other", "rag", SET, 2)]
    acme = sorted(r.id for r in deps.artifacts.rows.values() if r.tenant == "acme")[:2]
    first = out[0]
    assert isinstance(first, PromptAssembled)
    assert first.prompt.served.artifact_ids == acme and first.prompt.served.artifact_set == SET
    assert first.prompt.variables["examples"].startswith("Example 1:\nexample")
    assert out[3].prompt.served.artifact_ids != acme  # the other tenant's own rows
    # Generation renders them into the prompt, and the response carries the ids.
    context = first.follow(
        ContextRetrieved,
        "retrieval",
        prompt=first.prompt,
        passages=[Passage(id="p1", doc_id="d", title="T", text="Lambdas are small.", chunk=0, score=1.0)],
    )
    rendered = generation.render(context)
    assert (
        rendered.user.startswith("Examples:\nExample 1:\nexample") and "Lambdas are small." in rendered.user
    )
    response = await generation.handle(context, deps)
    assert response.served.artifact_ids == acme


async def test_a_prompt_without_artifacts_searches_nothing_and_renders_as_before(deps):
    out = await prompting.handle_batch([ask("what is a lambda?", "acme")], deps)
    assert deps.artifacts.searches == []
    assert out[0].prompt.variables == {"question": "what is a lambda?"}
    assert out[0].prompt.served.artifact_ids == [] and out[0].prompt.served.artifact_set == ""


async def test_a_failed_search_fails_only_the_queries_that_wanted_artifacts(deps):
    prompt = PromptVersion(name="rag", system="s", template=TEMPLATE, artifacts_k=1, artifact_set=SET)
    plain = PromptVersion(name="plain", system="s", template="$context $question")
    served(deps, prompt)
    deps.registry = Registry(
        {**deps.registry._records, record_key(plain).encode(): plain.model_dump_json().encode()}
    )
    deps.artifacts.fail = TransientError("Milvus down")
    pinned = ask("q2", "acme").model_copy(update={"prompt_ref": plain.version})
    out = await prompting.handle_batch([ask("q", "acme"), pinned], deps)
    assert isinstance(out[0], TransientError) and isinstance(out[1], PromptAssembled)


def test_the_batch_handler_is_the_stage_module_s():
    assert prompting.handle_batch.__module__ == "agents.prompting"
    assert asyncio.iscoroutinefunction(prompting.handle_batch)
