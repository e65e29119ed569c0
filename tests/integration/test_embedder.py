"""The ONNX export against the sentence-transformers reference it was exported from."""

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from connectors.embedder import EmbeddingSettings, ModelNotFound, OnnxEmbedder, towers
from connectors.model_export import bundled_weights
from connectors.model_precision import derive
from schemas.errors import PermanentError
from topology.samples import python_reference
from topology.settings import Settings


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    """Real sentences of varied length (a few words to beyond the 256-token limit)."""
    texts = [d["text"] for d in python_reference()[:12]]
    pieces = [s.strip() for t in texts for s in re.split(r"(?<=[.!?])\s+", t) if len(s.strip()) > 3]
    long_ones = [" ".join(t.split()[:400]) for t in texts[:4]]
    return pieces[:60] + long_ones + ["", "ok"]


def test_onnx_matches_sentence_transformers(embedder: OnnxEmbedder, sentences: list[str]):
    st = pytest.importorskip("sentence_transformers")
    reference = st.SentenceTransformer(str(bundled_weights()), device="cpu").encode(
        sentences, normalize_embeddings=True, batch_size=16
    )
    ours = embedder.embed(sentences)
    assert len(sentences) >= 50
    cosine = (ours * reference).sum(axis=1)
    assert cosine.min() >= 0.9999, f"worst cosine {cosine.min():.6f} at {cosine.argmin()}"


def test_length_bucketing_keeps_input_order(embedder: OnnxEmbedder, sentences: list[str]):
    forward = embedder.embed(sentences)
    backward = embedder.embed(sentences[::-1])[::-1]
    np.testing.assert_allclose(forward, backward, atol=1e-5)
    assert np.allclose(np.linalg.norm(forward, axis=1), 1.0, atol=1e-5)


def exported_copy(settings: EmbeddingSettings, into: Path) -> EmbeddingSettings:
    """The fp32 export alone in a directory of its own: no derived copy yet."""
    into.mkdir()
    for name in ("model.onnx", "tokenizer.json", "config.json"):
        shutil.copy(settings.model_dir / name, into / name)
    return settings.model_copy(update={"model_dir": into})


def test_int8_copy_is_written_once_and_stays_close_to_fp32(
    base_settings: Settings, embedder: OnnxEmbedder, sentences: list[str], tmp_path: Path
):
    settings = exported_copy(base_settings.embedding, tmp_path / "model")
    model_dir = settings.model_dir
    settings = settings.model_copy(update={"precision": "int8"})
    with pytest.raises(ModelNotFound, match="llmops model export --precision int8"):
        OnnxEmbedder(settings).open()
    written = derive(model_dir, "int8")
    assert written.name == "model.int8.onnx"
    assert derive(model_dir, "int8").stat().st_mtime == written.stat().st_mtime  # not written again
    int8 = OnnxEmbedder(settings)
    int8.open()
    cosine = (int8.embed(sentences) * embedder.embed(sentences)).sum(axis=1)
    # Measured: min 0.984 on SciFact; retrieval kept (exact-search nDCG@10 0.6502 vs 0.6451).
    assert cosine.min() >= 0.95, f"worst cosine {cosine.min():.4f}"
    assert cosine.mean() >= 0.99


def test_fp16_needs_cuda(base_settings: Settings, embedder: OnnxEmbedder, tmp_path: Path):
    if "CUDAExecutionProvider" in embedder.providers:
        pytest.skip("CUDA is present: fp16 is allowed")
    settings = exported_copy(base_settings.embedding, tmp_path / "model")
    derive(settings.model_dir, "fp16")
    fp16 = OnnxEmbedder(settings.model_copy(update={"precision": "fp16"}))
    with pytest.raises(PermanentError, match="fp16 needs the CUDA execution provider"):
        fp16.open()


def test_the_default_towers_give_the_single_encoders_vectors_bit_for_bit(
    base_settings: Settings, sentences: list[str]
):
    """Two towers naming all-MiniLM-L6-v2 with no prefixes are today's one encoder: the
    same tokens, one shared session, the same float32 bits as a plain ONNX Runtime run
    of the same batches (sorted by length, batch_size at a time, L2-normalised)."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    settings = base_settings.embedding.model_copy(update={"device": "cpu"})
    query, document = towers(settings)
    query.open()
    document.open()
    assert query._model is document._model
    assert (query.name, document.name) == ("all-MiniLM-L6-v2", "all-MiniLM-L6-v2")

    tokenizer = Tokenizer.from_file(str(settings.model_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=settings.max_length)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(
        str(settings.model_dir / "model.onnx"), sess_options=options, providers=["CPUExecutionProvider"]
    )
    encodings = tokenizer.encode_batch(sentences)
    order = sorted(range(len(sentences)), key=lambda i: len(encodings[i].ids))
    expected = np.empty((len(sentences), 384), dtype=np.float32)
    for start in range(0, len(order), settings.batch_size):
        batch = order[start : start + settings.batch_size]
        width = max(len(encodings[i].ids) for i in batch)
        ids = np.zeros((len(batch), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, i in enumerate(batch):
            ids[row, : len(encodings[i].ids)] = encodings[i].ids
            mask[row, : len(encodings[i].ids)] = 1
        [out] = session.run(
            None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        )
        expected[batch] = (out / np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)).astype(
            np.float32
        )
    assert np.array_equal(query.embed(sentences), expected)
    assert np.array_equal(document.embed(sentences), expected)
    assert query.count_tokens(sentences) == [len(e.ids) for e in encodings]
    assert query.record() == document.record() and query.record().settings["query_prefix"] == ""


def test_a_text_alone_runs_in_a_one_thread_session_with_the_batchs_vector(
    base_settings: Settings, sentences: list[str]
):
    """A question at a time runs on one intra-op thread (less CPU than waking the others
    per operator): the vector is the one the same text gets inside a batch."""
    settings = base_settings.embedding.model_copy(update={"device": "cpu"})
    split = OnnxEmbedder(settings)
    split.open()
    model = split._model
    assert model._session_alone is not model._session
    assert model._session_alone.get_session_options().intra_op_num_threads == 1
    batched = split.embed(sentences[:8])
    alone = np.stack([split.embed([text])[0] for text in sentences[:8]])
    np.testing.assert_allclose(alone, batched, atol=1e-5)

    shared = OnnxEmbedder(settings.model_copy(update={"threads_alone": 0}))
    shared.open()
    assert shared._model._session_alone is shared._model._session
