"""The ONNX export against the sentence-transformers reference it was exported from."""

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from connectors.embedder import EmbeddingSettings, ModelNotFound, OnnxEmbedder
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
