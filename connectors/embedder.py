"""Sentence embeddings with ONNX Runtime: tokenizers for the text, the encoder's pooling
(mean or CLS) and L2 normalisation, CUDA first when present. Two towers: the settings name
a query encoder and a document encoder (by default the same model, no prefixes)."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from connectors.encoders import (
    CATALOGUE,
    DEFAULT_ENCODER,
    Encoder,
    EncoderRecord,
    Pooling,
    Side,
    describe,
    fingerprint,
    model_sha256,
    read_manifest,
)
from connectors.model_precision import Precision, model_file
from schemas.errors import PermanentError

DEFAULT_MODEL_DIR = Path.home() / ".cache" / "llmops-stream" / "models" / "all-MiniLM-L6-v2"


class EmbeddingSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    model_dir: Path = Field(
        default=DEFAULT_MODEL_DIR,
        description="Directory with model.onnx and tokenizer.json of all-MiniLM-L6-v2 "
        "(`llmops model export`), or of any ONNX sentence-embedding model with a card.",
    )
    models_dir: Path = Field(
        default=DEFAULT_MODEL_DIR.parent,
        description="Where `llmops model fetch NAME` installs the other encoders (one directory each).",
    )
    query_encoder: str = Field(
        default=DEFAULT_ENCODER,
        description="Encoder of questions (the query tower): all-MiniLM-L6-v2, bge-small-en-v1.5 "
        "or e5-small-v2 (`llmops model list`). It must belong with the collection's document encoder.",
    )
    document_encoder: str = Field(
        default=DEFAULT_ENCODER,
        description="Encoder of passages (the document tower); a collection records the one that filled it.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto uses the CUDA execution provider when installed."
    )
    # Small batches measured fastest on CPU for both passages and short questions: larger
    # padded batches fall out of cache (benchmarks/embedding.py).
    batch_size: int = Field(default=8, ge=1, description="Texts per ONNX Runtime call.")
    max_length: int = Field(
        default=256, ge=8, description="Tokens kept per text (at most the encoder's own limit)."
    )
    threads: int = Field(default=0, ge=0, description="Intra-op threads; 0 lets ORT decide.")
    threads_alone: int = Field(
        default=1,
        ge=0,
        description="Intra-op threads for a run of one text (a stream of questions at a low "
        "rate), in a second session of the model on CPU; 0 runs it in the batches' session. One "
        "thread spends less CPU there (no wake-up of the others per operator) and answers as "
        "soon; the second session costs the model's size in memory once more.",
    )
    spin: bool = Field(
        default=False,
        description="Let ORT's intra-op threads spin-wait after each run (its default). Off, "
        "a worker embedding a question at a time spends about half the CPU for the same work.",
    )
    precision: Precision = Field(
        default="fp32",
        description="fp32; fp16 (CUDA only) or int8 (CPU) run the copy that "
        "`llmops model export --precision P` writes beside model.onnx (the exported model "
        "only: the fetched encoders are int8 files).",
    )

    def encoder_dir(self, name: str) -> Path:
        """The default encoder lives in model_dir (where it always was); the rest in models_dir."""
        return self.model_dir if name == DEFAULT_ENCODER else self.models_dir / name


class ModelNotFound(PermanentError):
    pass


class _Model:
    """One loaded encoder (its ONNX sessions and tokenizer). The two towers share one when
    they name the same encoder. On CPU a run of one text has a session of its own
    (`threads_alone`), so the default holds the model twice."""

    def __init__(self, settings: EmbeddingSettings, name: str) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._session: Any = None
        self._session_alone: Any = None  # runs of one text; the same session unless split
        self._tokenizer: Any = None
        self._input_names: set[str] = set()
        self.name = name
        self.encoder = CATALOGUE.get(name) or Encoder(
            name=name, pooling="mean", max_length=settings.max_length
        )
        self.record: EncoderRecord | None = None
        self.dim = 0
        self.providers: list[str] = []

    def open(self) -> None:
        with self._lock:
            if self._session is None:
                self._open()

    def _open(self) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        model_dir = self._settings.encoder_dir(self.name)
        encoder = describe(self.name, model_dir)
        # The exported model comes in derived precisions; a fetched one is its one file.
        precision = self._settings.precision if encoder.native_precision == "fp32" else "fp32"
        onnx_path, tok_path = model_file(model_dir, precision), model_dir / "tokenizer.json"
        if not onnx_path.is_file() or not tok_path.is_file():
            if self.name != DEFAULT_ENCODER:
                raise ModelNotFound(
                    f"encoder {self.name} is not installed in {model_dir}: "
                    f"run `llmops model fetch {self.name}`"
                )
            flag = "" if precision == "fp32" else f" --precision {precision}"
            raise ModelNotFound(
                f"no ONNX model in {model_dir} (need {onnx_path.name} and tokenizer.json); "
                f"run `llmops model export{flag}` or set LLMOPS_EMBEDDING__MODEL_DIR"
            )
        card = read_manifest(model_dir)
        if self.name == DEFAULT_ENCODER and card.get("name", model_dir.name) != self.name:
            # Any sentence-embedding model in model_dir runs under its card's name.
            encoder = encoder.model_copy(update={"name": card.get("name", model_dir.name)})
        self.encoder, self.name = encoder, encoder.name
        max_length = min(self._settings.max_length, encoder.max_length)

        tokenizer = Tokenizer.from_file(str(tok_path))
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=max_length)
        self._tokenizer = tokenizer

        providers = self._choose_providers(ort)
        session = self._new_session(ort, onnx_path, providers, self._settings.threads)
        self.providers = list(session.get_providers())
        if precision == "fp16" and "CUDAExecutionProvider" not in self.providers:
            # ORT's CPU kernels mostly lack fp16: it would run cast-by-cast, far slower.
            raise PermanentError(
                "embedding.precision=fp16 needs the CUDA execution provider; use int8 on CPU"
            )
        self._input_names = {i.name for i in session.get_inputs()}
        alone = self._settings.threads_alone
        split = (
            alone > 0
            and alone != self._settings.threads
            and "CUDAExecutionProvider" not in self.providers
            and (os.cpu_count() or 1) > 1
        )
        self._session_alone = self._new_session(ort, onnx_path, providers, alone) if split else session
        self._session = session
        self.dim = int(self.embed(["probe"]).shape[1])
        self.record = fingerprint(encoder, model_sha256(model_dir, onnx_path), max_length)

    def _new_session(self, ort: Any, onnx_path: Path, providers: list[str], threads: int) -> Any:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        # Spinning threads keep cores busy between the small runs of a stream of questions.
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if self._settings.spin else "0"
        )
        return ort.InferenceSession(str(onnx_path), sess_options=options, providers=providers)

    def _choose_providers(self, ort: Any) -> list[str]:
        available = ort.get_available_providers()
        device = self._settings.device
        if device == "cuda" and "CUDAExecutionProvider" not in available:
            raise PermanentError(
                "embedding.device=cuda but onnxruntime has no CUDAExecutionProvider; "
                "install onnxruntime-gpu (the `gpu` extra)"
            )
        if device != "cpu" and "CUDAExecutionProvider" in available:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Texts are sorted by token count and batched so each batch pads only to its own
        longest text: on mixed lengths that wastes far fewer FLOPs than padding to the
        longest text overall."""
        if self._session is None:
            raise RuntimeError("OnnxEmbedder.open() was not called")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        encodings = self._tokenizer.encode_batch(list(texts))
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        out: np.ndarray | None = None
        size = self._settings.batch_size
        for start in range(0, len(order), size):
            batch = order[start : start + size]
            vectors = self._run([encodings[i] for i in batch])
            if out is None:
                out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
            out[batch] = vectors
        assert out is not None
        return out

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(e.ids) for e in self._tokenizer.encode_batch(list(texts))]

    def _run(self, encodings: list[Any]) -> np.ndarray:
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        session = self._session_alone if len(encodings) == 1 else self._session
        hidden = session.run(None, feeds)[0]
        return pool(hidden, mask, self.encoder.pooling, self.encoder.normalize)


def pool(hidden: np.ndarray, mask: np.ndarray, pooling: Pooling, normalize: bool) -> np.ndarray:
    """Sentence vectors from a graph's output: token embeddings (batch, tokens, dim) are
    pooled (mean over real tokens, or the first token's: CLS); an output that is already
    one vector per text (our MiniLM export pools in the graph) is kept. Then L2-normalised."""
    if hidden.ndim == 3:
        if pooling == "cls":
            hidden = hidden[:, 0]
        else:
            weights = mask[..., None].astype(np.float32)
            hidden = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
    if not normalize:
        return hidden.astype(np.float32)
    norms = np.linalg.norm(hidden, axis=1, keepdims=True)
    return (hidden / np.clip(norms, 1e-12, None)).astype(np.float32)


class OnnxEmbedder:
    """One tower: the query or the document side of the embedding settings, which puts
    its side's instruction prefix before every text. Load with `open()`; the constructor
    does no I/O."""

    def __init__(
        self, settings: EmbeddingSettings, side: Side = "query", model: _Model | None = None
    ) -> None:
        name = settings.query_encoder if side == "query" else settings.document_encoder
        self._model = model if model is not None else _Model(settings, name)
        self.side = side
        self.name = name
        self.dim = 0
        self.providers: list[str] = []
        self._prefix = ""

    def open(self) -> None:
        self._model.open()
        self.name, self.dim, self.providers = self._model.name, self._model.dim, self._model.providers
        self._prefix = self._model.encoder.prefix(self.side)

    @property
    def encoder(self) -> Encoder:
        return self._model.encoder

    def record(self) -> EncoderRecord:
        """The fingerprint of this tower's encoder (after `open()`)."""
        if self._model.record is None:
            raise RuntimeError("OnnxEmbedder.open() was not called")
        return self._model.record

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length float32 embeddings, one row per text, in input order."""
        return self._model.embed(self._prefixed(texts))

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text costs the model (prefix included, after truncation), for telemetry."""
        return self._model.count_tokens(self._prefixed(texts))

    def _prefixed(self, texts: Sequence[str]) -> Sequence[str]:
        return [self._prefix + t for t in texts] if self._prefix else texts


def towers(settings: EmbeddingSettings) -> tuple[OnnxEmbedder, OnnxEmbedder]:
    """The query and document towers; one loaded model when both name the same encoder."""
    query = OnnxEmbedder(settings, "query")
    shared = query._model if settings.document_encoder == settings.query_encoder else None
    return query, OnnxEmbedder(settings, "document", model=shared)
