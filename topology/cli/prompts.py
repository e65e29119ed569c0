"""`llmops prompts`: versioned prompts in the registry, and the golden-set gate before a
label moves. Commands read the registry topic to its end and append records to it;
workers follow it and use a change on their next request. `llmops experiments` uses the
registry helpers here."""

from __future__ import annotations

import asyncio
import difflib
import json
import sys
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

import click
from pydantic import ValidationError

from agents.evaluation import METRICS, load_golden
from agents.routing import Registry, move_label, roll_back
from connectors.registry_log import append, read_all
from schemas.prompts import Experiment, LabelMoved, PromptVersion
from topology.cli.common import pass_settings, run_command
from topology.golden import run_golden
from topology.topics import registry_topic

if TYPE_CHECKING:
    from topology.settings import Settings

PROMPT_FILE_HELP = """FILE is TOML or JSON with the fields of a prompt version: name, system,
template ($question and $context), and optionally description, model, temperature, seed,
max_tokens, top_k, retrieval_mode (dense|bm25|hybrid), hyde (off|replace|average),
hyde_instruction ($question), hyde_max_tokens."""


def read_registry(s: Settings) -> Registry:
    return Registry(read_all(s.kafka, registry_topic(s.worker.app_id)))


def write(s: Settings, *records: PromptVersion | LabelMoved | Experiment) -> None:
    asyncio.run(append(s.kafka, registry_topic(s.worker.app_id), records))


def resolve(registry: Registry, ref: str) -> PromptVersion:
    return registry.resolve(ref)[0]


def moved(registry: Registry, label: str, version: str, reason: str) -> LabelMoved:
    """The record that moves `label`, or a clear error for a label name Kafka keys refuse."""
    try:
        return move_label(registry, label, version, by="cli", reason=reason)
    except ValidationError as exc:
        raise click.ClickException(f"label {label!r}: {exc.errors()[0]['msg']}") from exc


def load_prompt(path: Path) -> PromptVersion:
    try:
        raw = tomllib.loads(path.read_text()) if path.suffix == ".toml" else json.loads(path.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise click.ClickException(f"{path}: not TOML or JSON: {exc}") from exc
    try:
        return PromptVersion.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise click.ClickException(f"{path}: {problems}") from exc


def as_text(prompt: PromptVersion) -> list[str]:
    """One line per setting, then the texts: what `show` prints and `diff` compares."""
    texts = ("system", "template", "hyde_instruction")
    lines = [f"{k} = {json.dumps(v)}" for k, v in prompt.model_dump(exclude={"kind", *texts}).items()]
    for field in texts:
        lines.append(f"--- {field}")
        lines.extend(getattr(prompt, field).splitlines())
    return lines


@click.group()
def prompts() -> None:
    """Versioned prompts in the registry (a compacted Kafka topic every worker follows).

    A version is immutable and named by the hash of its content; labels (production,
    staging, canary, your own) point at versions. Workers answer with the version under
    the `production` label (LLMOPS_PIPELINE__SERVE_LABEL), split by its running
    experiment if there is one; with no such label, the built-in prompt. A label moved
    here takes effect on every worker's next request."""


@prompts.command("push", help=f"Register FILE as a prompt version.\n\n{PROMPT_FILE_HELP}")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--label", "label", help="Also point this label at the new version.")
@pass_settings
def push(s: Settings, file: Path, label: str | None) -> None:
    prompt = load_prompt(file)
    registry = read_registry(s)
    records: list[PromptVersion | LabelMoved | Experiment] = []
    known = registry.prompt(prompt.version) is not None
    if not known:
        records.append(prompt)
    if label:
        records.append(moved(registry, label, prompt.version, f"push {file.name}"))
    if records:
        write(s, *records)
    click.echo(f"{prompt.version} {prompt.name}{' (already registered)' if known else ''}")
    if label:
        click.echo(f"label {label} -> {prompt.version}")
    if prompt.hyde != "off" and s.llm.backend == "extractive":
        click.echo(
            "warning: this version asks for HyDE, which needs an LLM; workers on the extractive backend "
            "answer its requests with RequestFailed. Set LLMOPS_LLM__BACKEND=openai.",
            err=True,
        )


@prompts.command("list")
@pass_settings
def list_prompts(s: Settings) -> None:
    """Every version, with the labels that point at it."""
    registry = read_registry(s)
    labels: dict[str, list[str]] = {}
    for pointer in registry.labels():
        labels.setdefault(pointer.version, []).append(pointer.label)
    served = s.pipeline.serve_label
    if not registry.prompts():
        click.echo(
            "the registry is empty: workers answer with the built-in prompt (llmops prompts push FILE)"
        )
        return
    click.echo(
        f"{'VERSION':<13} {'NAME':<20} {'MODEL':<14} {'TEMP':>4} {'K':>3} {'RETRIEVAL':<9} {'HYDE':<7} LABELS"
    )
    for p in sorted(registry.prompts(), key=lambda p: (p.name, p.version)):
        names = ", ".join(sorted(labels.get(p.version, [])))
        click.echo(
            f"{p.version:<13} {p.name[:20]:<20} {(p.model or '(worker)')[:14]:<14} {p.temperature:>4} "
            f"{p.top_k:>3} {p.retrieval_mode:<9} {p.hyde:<7} {names}"
        )
    if registry.label(served) is None:
        click.echo(f"no {served!r} label yet: workers answer with the built-in prompt")


@prompts.command("show")
@click.argument("ref")
@pass_settings
def show(s: Settings, ref: str) -> None:
    """Print a version (by label, hash or hash prefix) and the labels on it."""
    registry = read_registry(s)
    prompt = resolve(registry, ref)
    click.echo("\n".join(as_text(prompt)))
    on = [p.label for p in registry.labels() if p.version == prompt.version]
    click.echo(f"--- labels: {', '.join(on) or 'none'}")


@prompts.command("diff")
@click.argument("a")
@click.argument("b")
@pass_settings
def diff(s: Settings, a: str, b: str) -> None:
    """What changed from version (or label) A to B, as a unified diff."""
    registry = read_registry(s)
    old, new = resolve(registry, a), resolve(registry, b)
    lines = difflib.unified_diff(as_text(old), as_text(new), old.version, new.version, lineterm="")
    click.echo("\n".join(lines) or f"{old.version} and {new.version} are the same version")


@prompts.command("label")
@click.argument("name")
@click.argument("ref")
@click.option("--reason", default="", help="Kept with the label's history.")
@pass_settings
def label(s: Settings, name: str, ref: str, reason: str) -> None:
    """Point label NAME at version REF (a hash, a prefix of one, or another label)."""
    registry = read_registry(s)
    prompt = resolve(registry, ref)
    write(s, moved(registry, name, prompt.version, reason))
    click.echo(f"label {name} -> {prompt.version}")


@prompts.command("rollback")
@click.argument("name")
@click.option("--reason", default="", help="Kept with the label's history.")
@pass_settings
def rollback(s: Settings, name: str, reason: str) -> None:
    """Point label NAME back at the version it pointed at before its last move."""
    registry = read_registry(s)
    record = roll_back(registry, name, by="cli", reason=reason)
    write(s, record)
    click.echo(f"label {name} -> {record.version} (was {registry.label(name).version})")  # type: ignore[union-attr]


@prompts.command("evaluate")
@click.argument("ref")
@click.option(
    "--dataset",
    "dataset",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="Golden set: a JSON Lines file (question, and any of doc_ids, passage_ids, key_phrases, "
    "answer; e.g. benchmarks/golden/answers.jsonl), a directory holding one as golden.jsonl, "
    "or a BEIR directory.",
)
@click.option("--against", default=None, help="Label or version to compare with (default: the served label).")
@click.option("--tenant", default="default", show_default=True, help="Whose indexed documents to search.")
@click.option(
    "--metric",
    type=click.Choice(list(METRICS)),
    default="ndcg_at_10",
    show_default=True,
    help="The metric that decides. doc_ids give the retrieval ones, answer answer_f1, "
    "passage_ids the citation and context ones, key_phrases key_phrase_recall; groundedness "
    "needs no field (docs/prompts-and-experiments.md).",
)
@click.option("--margin", type=float, default=0.01, show_default=True, help="Worse by more than this fails.")
@click.option("--limit", type=int, help="Only the first N cases.")
@click.option("--concurrency", type=int, default=16, show_default=True, help="Questions in flight.")
@click.option("--timeout", type=float, default=120, show_default=True, help="Seconds to wait per answer.")
@click.option("--json", "as_json", is_flag=True, help="Print the scores as JSON.")
@pass_settings
def evaluate(
    s: Settings,
    ref: str,
    dataset: Path,
    against: str | None,
    tenant: str,
    metric: str,
    margin: float,
    limit: int | None,
    concurrency: int,
    timeout: float,
    as_json: bool,
) -> None:
    """Run a golden set through the running pipeline with version REF and with the
    served version, print both side by side, and exit 1 when REF is worse on --metric
    by more than --margin (0 when it passes): a gate before `prompts label`.

    The documents must be indexed for --tenant already (`llmops ingest`). Each question
    is asked twice, pinned to each version, so both meet the same index and workers.
    Passage ids are those of --tenant's chunks: benchmarks/golden/answers.jsonl names
    the sample corpus's as `llmops demo` indexes it, for tenant default."""
    registry = read_registry(s)
    cases = load_golden(dataset, limit)
    candidate = resolve(registry, ref)
    baseline_ref = against or s.pipeline.serve_label
    if registry.label(baseline_ref) is None and registry.prompt(baseline_ref) is None and against is None:
        # Nothing served from the registry yet: the baseline is the built-in prompt.
        baseline, baseline_name = None, f"built-in ({s.pipeline.prompt.version})"
    else:
        baseline = resolve(registry, baseline_ref)
        baseline_name = (
            f"{baseline_ref} ({baseline.version})" if baseline_ref != baseline.version else baseline_ref
        )
    results = run_command(
        run_golden(
            s,
            cases,
            [candidate.version, baseline.version if baseline else None],
            tenant,
            concurrency,
            timeout,
        )
    )
    rows = {"candidate": results[0], "baseline": results[1]}
    if metric not in rows["candidate"]["scores"]:
        field = METRICS[metric]
        answered = rows["candidate"]["failed"] < len(cases)
        why = f"its cases lack {field}" if field and answered else "no question was answered"
        raise click.ClickException(f"the golden set gives no {metric}: {why}")
    delta = rows["candidate"]["scores"][metric] - rows["baseline"]["scores"][metric]
    passed = delta >= -margin
    verdict = {"metric": metric, "margin": margin, "delta": delta, "passed": passed}
    if as_json:
        names = {"candidate": candidate.version, "baseline": baseline_name}
        click.echo(json.dumps({"cases": len(cases), "versions": names, **rows, "verdict": verdict}, indent=2))
    else:
        click.echo(
            f"{len(cases)} cases, tenant {tenant}: candidate {candidate.version} vs baseline {baseline_name}"
        )
        click.echo(f"{'':<22} {'CANDIDATE':>10} {'BASELINE':>10} {'DELTA':>8}")
        flat = {k: {**r["scores"], **{n: v for n, v in r.items() if n != "scores"}} for k, r in rows.items()}
        for name, c in flat["candidate"].items():
            b = flat["baseline"].get(name, float("nan"))
            click.echo(f"{name:<22} {c:>10.4g} {b:>10.4g} {c - b:>+8.4g}")
        outcome = "PASS" if passed else "FAIL"
        click.echo(f"{outcome}: {metric} {delta:+.4f} (fails below -{margin})")
    if not passed:
        sys.exit(1)
