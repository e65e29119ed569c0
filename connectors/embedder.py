"""Sentence embeddings with ONNX Runtime: tokenizers for the text, mean pooling and L2
normalisation that match sentence-transformers, CUDA first when present."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from connectors.model_precision import Precision, model_file
from schemas.errors import PermanentError

DEFAULT_MODEL_DIR = Path.home() / ".cache" / "llmops-stream" / "models" / "all-MiniLM-L6-v2"
MODEL_CARD = "llmops_model.json"


class EmbeddingSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    model_dir: Path = Field(
        default=DEFAULT_MODEL_DIR,
        description="Directory with model.onnx and tokenizer.json (`llmops model export`).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto uses the CUDA execution provider when installed."
    )
    # Small batches measured fastest on CPU for both passages and short questions: larger
    # padded batches fall out of cache (benchmarks/embedding.py).
    batch_size: int = Field(default=8, ge=1, description="Texts per ONNX Runtime call.")
    max_length: int = Field(default=256, ge=8, description="Tokens kept per text.")
    threads: int = Field(default=0, ge=0, description="Intra-op threads; 0 lets ORT decide.")
    precision: Precision = Field(
        default="fp32",
        description="fp32; fp16 (CUDA only) or int8 (CPU) run the copy that "
        "`llmops model export --precision P` writes beside model.onnx.",
    )


class ModelNotFound(PermanentError):
    pass


class OnnxEmbedder:
    """Load with `open()`; the constructor does no I/O."""

    def __init__(self, settings: EmbeddingSettings) -> None:
        self._settings = settings
        self._session: Any = None
        self._tokenizer: Any = None
        self._input_names: set[str] = set()
        self.name = settings.model_dir.name
        self.dim = 0
        self.providers: list[str] = []

    def open(self) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        model_dir = self._settings.model_dir
        precision = self._settings.precision
        onnx_path, tok_path = model_file(model_dir, precision), model_dir / "tokenizer.json"
        if not onnx_path.is_file() or not tok_path.is_file():
            flag = "" if precision == "fp32" else f" --precision {precision}"
            raise ModelNotFound(
                f"no ONNX model in {model_dir} (need {onnx_path.name} and tokenizer.json); "
                f"run `llmops model export{flag}` or set LLMOPS_EMBEDDING__MODEL_DIR"
            )
        card = model_dir / MODEL_CARD
        if card.is_file():
            self.name = json.loads(card.read_text()).get("name", self.name)

        tokenizer = Tokenizer.from_file(str(tok_path))
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=self._settings.max_length)
        self._tokenizer = tokenizer

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self._settings.threads:
            options.intra_op_num_threads = self._settings.threads
        self._session = ort.InferenceSession(
            str(onnx_path), sess_options=options, providers=self._choose_providers(ort)
        )
        self.providers = list(self._session.get_providers())
        if precision == "fp16" and "CUDAExecutionProvider" not in self.providers:
            # ORT's CPU kernels mostly lack fp16: it would run cast-by-cast, far slower.
            raise PermanentError(
                "embedding.precision=fp16 needs the CUDA execution provider; use int8 on CPU"
            )
        self._input_names = {i.name for i in self._session.get_inputs()}
        self.dim = int(self.embed(["probe"]).shape[1])

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
        """Unit-length float32 embeddings, one row per text, in input order.

        Texts are sorted by token count and batched so each batch pads only to its own
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
        """Tokens each text costs the model (after truncation), for telemetry."""
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
        hidden = self._session.run(None, feeds)[0]
        if hidden.ndim == 3:  # token embeddings: mean-pool over real tokens
            weights = mask[..., None].astype(np.float32)
            hidden = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(hidden, axis=1, keepdims=True)
        return (hidden / np.clip(norms, 1e-12, None)).astype(np.float32)
