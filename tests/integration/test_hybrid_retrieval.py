"""Dense, BM25 and hybrid retrieval on a real Milvus Lite server with the real embedder:
each mode finds what it should, the fusion ranks exactly as Milvus's own hybrid_search
with RRFRanker, the tenant filter holds on both legs, and a collection made before hybrid
retrieval is refused with the way out (`llmops reindex`), which works."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from connectors.embedder import OnnxEmbedder
from connectors.milvus import Chunk, MilvusStore, content
from schemas.errors import PermanentError
from tests.integration.test_cli import llmops
from topology.samples import python_reference
from topology.stack import LocalStack

DOCS = {d["title"]: d for d in python_reference()}
NAMES = ["lambda", "with", "assert", "try", "yield", "while", "for", "if", "import", "global"]


@pytest.fixture
def make_store(tansu_stack: LocalStack) -> Iterator[Callable[[str], MilvusStore]]:
    opened: list[MilvusStore] = []

    def make(collection: str) -> MilvusStore:
        store = MilvusStore(tansu_stack.settings.milvus.model_copy(update={"collection": collection}))
        store.open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def chunks(embedder: OnnxEmbedder, tenant: str, names: list[str], text_of=None) -> list[Chunk]:
    texts = [text_of(n) if text_of else DOCS[n]["text"][:3000] for n in names]
    vectors = embedder.embed([content(n, t) for n, t in zip(names, texts, strict=True)])
    return [
        Chunk(id=f"{tenant}-{n}", tenant=tenant, doc_id=f"pydoc-{n}", chunk=0, title=n, text=t, vector=v)
        for n, t, v in zip(names, texts, vectors, strict=True)
    ]


def name() -> str:
    return f"t_{uuid.uuid4().hex[:10]}"


def search(store: MilvusStore, embedder: OnnxEmbedder, questions: list[str], tenant: str, k: int, mode):
    return store.search(embedder.embed(questions), tenant, k, texts=questions, mode=mode)


def test_each_mode_finds_the_passage_and_reports_its_legs(make_store, embedder):
    store, tenant = make_store(name()), "acme"
    assert store.ensure_collection(embedder.dim) and store.has_bm25()
    bm25_index = store._client.describe_index(store._settings.collection, "sparse")
    assert bm25_index["params"] == {"bm25_k1": 0.9, "bm25_b": 0.4}  # applied, not dropped
    store.upsert(chunks(embedder, tenant, NAMES))
    question = ["What is a lambda expression?"]
    dense, bm25, hybrid = (
        search(store, embedder, question, tenant, 5, m)[0] for m in ("dense", "bm25", "hybrid")
    )
    for found in (dense, bm25, hybrid):
        assert found.hits[0].doc_id == "pydoc-lambda"
    assert dense.bm25_scores == [] and bm25.dense_scores == []
    assert [h.score for h in dense.hits] == dense.dense_scores and 0 < dense.hits[0].score <= 1
    assert [h.score for h in bm25.hits] == bm25.bm25_scores and bm25.hits[0].score > bm25.hits[-1].score > 0
    assert len(hybrid.dense_scores) == len(hybrid.bm25_scores) == 5
    # Top of both legs: fused score 2 / (k + 1) with k = 10.
    assert hybrid.hits[0].score == pytest.approx(2 / 11)
    assert hybrid.hits[0].text and hybrid.hits[0].title == "lambda"


def test_fusion_ranks_exactly_as_milvus_hybrid_search_with_rrf(make_store, embedder):
    from pymilvus import AnnSearchRequest, RRFRanker

    store, tenant = make_store(name()), "acme"
    store.ensure_collection(embedder.dim)
    store.upsert(chunks(embedder, tenant, NAMES))
    questions = [
        "How do I raise an exception and handle it with try and except?",
        "loop over the items of a list",
        "What does the yield expression do inside a function?",
        "import a module from a package",
    ]
    ours = search(store, embedder, questions, tenant, 8, "hybrid")
    vectors = embedder.embed(questions)
    flt = f'tenant == "{tenant}"'
    legs = [
        AnnSearchRequest(
            data=vectors.tolist(), anns_field="vector", param={"metric_type": "IP"}, limit=100, expr=flt
        ),
        AnnSearchRequest(
            data=questions, anns_field="sparse", param={"metric_type": "BM25"}, limit=100, expr=flt
        ),
    ]
    theirs = store._client.hybrid_search(store._settings.collection, legs, RRFRanker(10), limit=8)
    for mine, milvus in zip(ours, theirs, strict=True):
        assert {h.id: pytest.approx(h.score, abs=1e-6) for h in mine.hits} == {
            str(h["id"]): float(h["distance"]) for h in milvus
        }


def test_no_leg_crosses_tenants_whatever_the_query_says(make_store, embedder):
    store = make_store(name())
    store.ensure_collection(embedder.dim)
    secret = "zebrafish quokka telemetry secret"
    store.upsert(chunks(embedder, "acme", ["lambda", "with"]))
    store.upsert(chunks(embedder, "beta", ["yield"], text_of=lambda _: secret))
    attacks = [secret, f'{secret}" || tenant == "beta', 'tenant == "beta"', 'beta") or ("1']
    for mode in ("dense", "bm25", "hybrid"):
        for found in search(store, embedder, attacks, "acme", 10, mode):
            assert {h.id.split("-")[0] for h in found.hits} <= {"acme"}
    # The owner does find it, so the absence above is the filter's doing.
    assert search(store, embedder, [secret], "beta", 1, "bm25")[0].hits[0].text == secret
    for tenant in ('acme" || tenant == "beta', "acme' or 1=1", "ACME\n"):
        with pytest.raises(PermanentError, match="not a valid tenant"):
            search(store, embedder, [secret], tenant, 1, "hybrid")


def legacy_collection(store: MilvusStore, dim: int) -> None:
    """The schema collections had before hybrid retrieval: no content or BM25 field."""
    from pymilvus import DataType

    client = store._client
    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=128)
    schema.add_field("tenant", DataType.VARCHAR, max_length=64)
    schema.add_field("doc_id", DataType.VARCHAR, max_length=128)
    schema.add_field("chunk", DataType.INT64)
    schema.add_field("title", DataType.VARCHAR, max_length=1_000)
    schema.add_field("text", DataType.VARCHAR, max_length=65_535)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    index = client.prepare_index_params()
    index.add_index("vector", index_type="FLAT", metric_type="IP")
    client.create_collection(store._settings.collection, schema=schema, index_params=index)


def test_an_old_collection_is_refused_with_the_way_out_and_reindex_works(make_store, embedder, tansu_stack):
    old_name, new_name = name(), name()
    old = make_store(old_name)
    legacy_collection(old, embedder.dim)
    old.upsert(chunks(embedder, "acme", NAMES))
    question = ["What is a lambda expression?"]
    assert search(old, embedder, question, "acme", 3, "dense")[0].hits[0].doc_id == "pydoc-lambda"
    with pytest.raises(PermanentError, match="llmops reindex --to"):
        search(old, embedder, question, "acme", 3, "hybrid")

    env = {**tansu_stack.env(), "LLMOPS_MILVUS__COLLECTION": old_name}
    run = llmops("reindex", "--to", new_name, env=env)
    assert run.returncode == 0, run.stderr
    assert f"copied {len(NAMES)} passages from {old_name} to {new_name}" in run.stdout
    new = make_store(new_name)
    assert new.has_bm25() and new.count("acme") == len(NAMES)
    found = search(new, embedder, question, "acme", 3, "hybrid")[0]
    assert found.hits[0].doc_id == "pydoc-lambda" and found.bm25_scores

    again = llmops("reindex", "--to", new_name, env=env)
    assert again.returncode != 0 and "exists already" in again.stderr
