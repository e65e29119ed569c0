"""The ONNX export against the sentence-transformers reference it was exported from."""

import re

import numpy as np
import pytest

from connectors.embedder import OnnxEmbedder
from connectors.model_export import bundled_weights
from topology.samples import python_reference


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
