"""`llmops reindex`: copy the passage collection, or re-embed it (and the prompt
artifacts) with a new encoder, gate it and switch the aliases that readers search
through; roll back; show where the aliases point. pymilvus and ONNX Runtime are imported
inside the command."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, get_args

import click

from schemas.queries import RetrievalMode
from topology.cli.common import pass_settings

if TYPE_CHECKING:
    from collections.abc import Callable

    from connectors.milvus import MilvusStore
    from schemas.indexes import IndexChange
    from topology.settings import Settings


@click.command()
@click.option(
    "--model",
    help="Re-embed every passage with this document encoder, and every prompt artifact with its "
    "query encoder (`llmops model list`).",
)
@click.option(
    "--to",
    "target",
    help="The new collection. Copy: required, must not exist. --model: default "
    "<collection>_<encoder>_<fingerprint>, and the artifacts go to <NEW>_artifacts; a collection "
    "an interrupted run of the same encoder left is resumed.",
)
@click.option(
    "--from",
    "source",
    help="Fill --to from this collection and stop there: no gate, no switch (the workers move "
    "when you set LLMOPS_MILVUS__COLLECTION).",
)
@click.option(
    "--golden",
    "--data",
    "golden",
    type=click.Path(path_type=Path, exists=True),
    help="Golden set for the gate: a golden.jsonl (question, doc_ids) or a BEIR directory "
    "(queries.jsonl, qrels/test.tsv; e.g. SciFact).",
)
@click.option(
    "--tenant", default="default", show_default=True, help="Whose passages the golden set asks about."
)
@click.option(
    "--margin",
    type=float,
    default=0.01,
    show_default=True,
    help="The gate refuses when the new nDCG@10 is lower than the old one by more than this.",
)
@click.option(
    "--mode",
    type=click.Choice(get_args(RetrievalMode)),
    help="Retrieval mode of the gate's searches (default: the served prompt's).",
)
@click.option("--limit", type=int, help="Only the first N golden questions.")
@click.option("--no-gate", is_flag=True, help="Switch without a golden set (not recommended).")
@click.option(
    "--rollback",
    "roll",
    is_flag=True,
    help="Point the aliases back at the collections they replaced, brought up to date first.",
)
@click.option(
    "--status", is_flag=True, help="Show where the aliases point, what filled them and what is kept."
)
@pass_settings
def reindex(
    settings: Settings,
    model: str | None,
    target: str | None,
    source: str | None,
    golden: Path | None,
    tenant: str,
    margin: float,
    mode: RetrievalMode | None,
    limit: int | None,
    no_gate: bool,
    roll: bool,
    status: bool,
) -> None:
    """Re-index the passages and prompt artifacts without downtime, or copy the passages.

    \b
    llmops reindex --model e5-small-v2 --golden ../shared/data/scifact --tenant beir
        Re-embeds every passage of LLMOPS_MILVUS__COLLECTION with the encoder's document
        tower into a new collection, and the prompt artifacts of <collection>_artifacts
        (if any) with its query tower into a new artifacts collection (progress bar; run
        it again after a crash and it resumes) while questions keep being answered from
        the old ones. Then the gate asks the golden set of both passage collections, each
        with its own query encoder, and refuses if the new nDCG@10 is lower by more than
        --margin. Otherwise the new collections are brought up to date (documents ingested,
        changed or withdrawn meanwhile; a withdrawal also reaches them at once) and the
        artifacts' alias, then the passages', moves every worker at once (their encoders
        follow the alias: no restart, no setting). The first re-index turns a plain
        collection into an alias over <collection>_v1 (artifacts likewise).
    llmops reindex --rollback
        Points the aliases back at the kept collections the current ones replaced, after
        embedding into them, with their own encoder, what was ingested or changed since
        the switch (and deleting what was withdrawn).
    llmops reindex --status
        Where the aliases point, what filled them, what is kept.
    llmops reindex --to NEW [--from OLD] [--model NAME]
        Fills NEW and stops (copy: vectors copied as they are, for a collection made before
        hybrid retrieval, which lacks the BM25 field); point the workers at it yourself.

    Each step (started, progress, completed, the gate's verdict with both scores, switched,
    rolled back) is an event on the index-changes topic and a row of the analytics table
    index_changes, with who ran it."""
    from topology.reindex import Announcer

    if sum(map(bool, (roll, status, model or target))) != 1:
        raise click.UsageError("give one of --model/--to, --rollback or --status")
    if status:
        from topology.reindex import describe_index

        for line in describe_index(settings):
            click.echo(line)
        show_changes(settings)
        return
    announce = Announcer(settings.kafka, say=lambda line: click.echo(line, err=True))
    if roll:
        from topology.reindex import roll_back

        back = roll_back(settings, announce, say=click.echo)
        for s in filter(None, (back.artifacts, back.switched)):
            click.echo(f"{s.alias} -> {s.after} again (was {s.before}; {s.took_ms:.1f} ms)")
        return
    if model is None or source is not None:
        if target is None:
            raise click.UsageError("--to is required with --from or without --model")
        fill_only(settings, target, source, model)
        return
    if golden is None and not no_gate:
        raise click.UsageError("the gate needs a golden set: --golden PATH (or --no-gate to switch blindly)")
    switch_model(settings, model, target, golden, tenant, margin, mode, limit, announce)


def show_changes(settings: Settings) -> None:
    """The latest steps from the analytics table, when a store or the stack's service answers."""
    from connectors.analytics.index_changes import recent_changes
    from schemas.errors import LLMOpsError
    from topology.cli.common import with_analytics

    try:
        rows = with_analytics(settings, recent_changes)
    except (LLMOpsError, click.ClickException) as exc:
        click.echo(f"(no index change rows: {str(exc).splitlines()[0]})")
        return
    for r in rows:
        scores = (
            f" nDCG@10 {r['source_score']:.4f} -> {r['target_score']:.4f}"
            if r["target_score"] is not None
            else ""
        )
        verdict = "" if r["passed"] is None else (" passed" if r["passed"] else " refused")
        click.echo(
            f"{r['occurred_at']:%Y-%m-%d %H:%M:%S} {r['event_type']:<17} {r['source']} -> {r['target']} "
            f"({r['encoder']}) by {r['actor']}{scores}{verdict}"
        )


def switch_model(
    settings: Settings,
    model: str,
    target: str | None,
    golden: Path | None,
    tenant: str,
    margin: float,
    mode: RetrievalMode | None,
    limit: int | None,
    announce: Callable[[IndexChange], None],
) -> None:
    from tqdm import tqdm

    from agents.evaluation import load_golden
    from topology.reindex import reindex
    from topology.reindex_gate import Gate

    gate = None
    if golden is not None:
        cases = [c for c in load_golden(golden, limit) if c.relevant]
        if not cases:
            raise click.ClickException(f"{golden}: no golden case names its relevant documents")
        gate = Gate(cases, tenant, margin, mode or settings.pipeline.prompt.retrieval_mode)
    bar = tqdm(unit="passage", desc=f"re-embedded ({model})")

    def progress(n: int, total: int) -> None:
        bar.total = total
        bar.update(n)

    try:
        outcome = reindex(
            settings, model, target=target, gate=gate, announce=announce, progress=progress, say=click.echo
        )
    finally:
        bar.close()
    click.echo(
        f"{outcome.embedded} passages embedded ({outcome.rows_per_s:.1f}/s), "
        f"{outcome.present} were there already"
    )
    if outcome.verdict is not None:
        v = outcome.verdict
        click.echo(
            f"gate passed: nDCG@10 {v.target_score:.4f} ({outcome.target}) against {v.source_score:.4f} "
            f"({outcome.source}), margin {v.margin}, {v.queries} questions"
        )
    assert outcome.switched is not None
    for s in filter(None, (outcome.artifacts, outcome.switched)):
        click.echo(f"{s.alias} -> {s.after} (was {s.before}, kept for --rollback; switch {s.took_ms:.1f} ms)")


def fill_only(settings: Settings, target: str, source: str | None, model: str | None) -> None:
    from connectors.milvus import MilvusStore
    from connectors.milvus_reindex import copy_collection

    old = settings.milvus.model_copy(update={"collection": source or settings.milvus.collection})
    new = settings.milvus.model_copy(update={"collection": target})
    reader, writer = MilvusStore(old), MilvusStore(new)
    try:
        reader.open()
        writer.open()
        if model is not None:
            reembed(settings, reader, writer, model)
        else:
            copied = copy_collection(reader, writer)
            click.echo(f"copied {copied} passages from {old.collection} to {target}")
    finally:
        reader.close()
        writer.close()
    if model is not None:
        click.echo(
            f"now set LLMOPS_EMBEDDING__QUERY_ENCODER={model} LLMOPS_EMBEDDING__DOCUMENT_ENCODER={model} "
            f"LLMOPS_MILVUS__COLLECTION={target} for the workers"
        )
    else:
        click.echo(f"now set LLMOPS_MILVUS__COLLECTION={target} for the workers")


def reembed(settings: Settings, reader: MilvusStore, writer: MilvusStore, model: str) -> None:
    from tqdm import tqdm

    from connectors.embedder import OnnxEmbedder
    from connectors.milvus_reindex import reembed_collection

    tower = OnnxEmbedder(settings.embedding.model_copy(update={"document_encoder": model}), side="document")
    tower.open()
    started = time.monotonic()
    with tqdm(total=reader.count(), unit="passage", desc=f"re-embedded ({model})") as bar:
        embedded, present = reembed_collection(reader, writer, tower, progress=bar.update)
    rate = embedded / max(time.monotonic() - started, 1e-9)
    click.echo(f"{embedded} passages embedded ({rate:.1f}/s), {present} were there already")
