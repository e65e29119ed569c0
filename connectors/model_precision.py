"""Reduced-precision copies of the exported model, written beside model.onnx once:
`fp16` for the CUDA execution provider, `int8` for CPUs. Needs the `onnx` package (the
`model` extra); the embedder only reads the files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Literal

from schemas.errors import PermanentError

Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16", "int8")
FILES: dict[Precision, str] = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}


def model_file(model_dir: Path, precision: Precision) -> Path:
    return model_dir / FILES[precision]


def derive(model_dir: Path, precision: Precision, force: bool = False) -> Path:
    """Write the `precision` copy of model_dir/model.onnx; skip if present."""
    target = model_file(model_dir, precision)
    if precision == "fp32" or (target.is_file() and not force):
        return target
    source = model_file(model_dir, "fp32")
    if not source.is_file():
        raise PermanentError(f"no {source}: run `llmops model export` first")
    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.transformers.onnx_model import OnnxModel
    except ImportError as exc:
        raise PermanentError("deriving a model needs onnx: pip install 'llmops-stream[model]'") from exc
    with tempfile.TemporaryDirectory(dir=model_dir) as tmp:
        staging = Path(tmp) / target.name
        if precision == "fp16":
            # Inputs and outputs stay as they are, so the embedder feeds the same arrays.
            model = OnnxModel(onnx.load(str(source)))
            model.convert_float_to_float16(keep_io_types=True)
            model.save_model_to_file(str(staging))
        else:
            quantize_dynamic(
                source,
                staging,
                weight_type=QuantType.QInt8,
                per_channel=True,
                # The fused contrib ops carry no type information for shape inference.
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
        os.replace(staging, target)  # atomic: a half-written file is never loaded
    return target
