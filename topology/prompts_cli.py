"""`llmops prompts` and `llmops experiments`: the prompt registry and traffic splits.
Both read the registry topic to its end and append records to it; workers follow it
and use a change on their next request."""

from __future__ import annotations

import asyncio
import difflib
import json
import sys
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from agents.registry import Registry, move_label, roll_back
from schemas.errors import LLMOpsError
from schemas.prompts import Arm, Experiment, LabelMoved, PromptVersion
from topology.settings import Settings
from topology.topics import registry_topic

PROMPT_FILE_HELP = """FILE is TOML or JSON with the fields of a prompt version: name, system,
template ($question and $context), and optionally description, model, temperature, seed,
max_tokens, top_k, retrieval_mode (dense|bm25|hybrid), hyde (off|replace|average),
hyde_instruction ($question), hyde_max_tokens."""


def settings() -> Settings:
    from topology.cli import load_settings

    return load_settings()


def read_registry(s: Settings) -> Registry:
    from connectors.registry import read_all

    try:
        return Registry(read_all(s.kafka, registry_topic(s.worker.app_id)))
    except LLMOpsError as exc:
        raise click.ClickException(str(exc)) from exc


def write(s: Settings, *records: PromptVersion | LabelMoved | Experiment) -> None:
    from connectors.registry import append

    try:
        asyncio.run(append(s.kafka, registry_topic(s.worker.app_id), records))
    except LLMOpsError as exc:
        raise click.ClickException(str(exc)) from exc


def resolve(registry: Registry, ref: str) -> PromptVersion:
    try:
        return registry.resolve(ref)[0]
    except LLMOpsError as exc:
        raise click.ClickException(str(exc)) from exc


def moved(registry: Registry, label: str, version: str, reason: str) -> LabelMoved:
    """The record that moves `label`, or a clear error for a label name Kafka keys refuse."""
    try:
        return move_label(registry, label, version, by="cli", reason=reason)
    except ValidationError as exc:
        raise click.ClickException(f"label {label!r}: {exc.errors()[0]['msg']}") from exc


def find_experiment(s: Settings, name: str) -> Experiment:
    experiment = read_registry(s).experiment(name)
    if experiment is None:
        raise click.ClickException(f"no experiment {name!r}; see `llmops experiments list`")
    return experiment


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
def push(file: Path, label: str | None) -> None:
    s = settings()
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
def list_prompts() -> None:
    """Every version, with the labels that point at it."""
    registry = read_registry(read_settings := settings())
    labels: dict[str, list[str]] = {}
    for pointer in registry.labels():
        labels.setdefault(pointer.version, []).append(pointer.label)
    served = read_settings.pipeline.serve_label
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
def show(ref: str) -> None:
    """Print a version (by label, hash or hash prefix) and the labels on it."""
    registry = read_registry(settings())
    prompt = resolve(registry, ref)
    click.echo("\n".join(as_text(prompt)))
    on = [p.label for p in registry.labels() if p.version == prompt.version]
    click.echo(f"--- labels: {', '.join(on) or 'none'}")


@prompts.command("diff")
@click.argument("a")
@click.argument("b")
def diff(a: str, b: str) -> None:
    """What changed from version (or label) A to B, as a unified diff."""
    registry = read_registry(settings())
    old, new = resolve(registry, a), resolve(registry, b)
    lines = difflib.unified_diff(as_text(old), as_text(new), old.version, new.version, lineterm="")
    click.echo("\n".join(lines) or f"{old.version} and {new.version} are the same version")


@prompts.command("label")
@click.argument("name")
@click.argument("ref")
@click.option("--reason", default="", help="Kept with the label's history.")
def label(name: str, ref: str, reason: str) -> None:
    """Point label NAME at version REF (a hash, a prefix of one, or another label)."""
    s = settings()
    registry = read_registry(s)
    prompt = resolve(registry, ref)
    write(s, moved(registry, name, prompt.version, reason))
    click.echo(f"label {name} -> {prompt.version}")


@prompts.command("rollback")
@click.argument("name")
@click.option("--reason", default="", help="Kept with the label's history.")
def rollback(name: str, reason: str) -> None:
    """Point label NAME back at the version it pointed at before its last move."""
    s = settings()
    registry = read_registry(s)
    try:
        record = roll_back(registry, name, by="cli", reason=reason)
    except LLMOpsError as exc:
        raise click.ClickException(str(exc)) from exc
    write(s, record)
    click.echo(f"label {name} -> {record.version} (was {registry.label(name).version})")  # type: ignore[union-attr]


def parse_arm(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[Arm]:
    arms = []
    for value in values:
        name, _, weight = value.partition("=")
        try:
            arms.append(Arm(label=name, weight=float(weight)))
        except (ValueError, ValidationError) as exc:
            raise click.BadParameter(
                f"{value!r}: expected LABEL=WEIGHT, e.g. canary=10", param=param
            ) from exc
    return arms


@click.group()
def experiments() -> None:
    """Traffic splits between prompt labels, decided by the workers, sticky per user.

    The first arm is the control: requests meant for it (the served label) are split by
    a stable hash of the experiment and the user (the trace id for anonymous requests).
    Every event and telemetry row records the experiment and arm. The analytics process
    judges running experiments every LLMOPS_MONITOR__EXPERIMENTS_EVERY_S and rolls back an
    arm whose users rate it worse than the control beyond the margin (see `start`)."""


@experiments.command("start")
@click.argument("name")
@click.option(
    "--arm",
    "arms",
    multiple=True,
    required=True,
    callback=parse_arm,
    help="LABEL=WEIGHT, repeated; the first is the control, e.g. --arm production=90 --arm canary=10.",
)
@click.option("--margin", type=float, default=0.05, show_default=True, help="Worse by more than this fails.")
@click.option(
    "--min-samples", type=int, default=100, show_default=True, help="Ratings per arm before a verdict."
)
@click.option("--alpha", type=float, default=0.05, show_default=True, help="Level of the one-sided tests.")
@click.option("--no-auto-rollback", is_flag=True, help="Report verdicts only; never move labels.")
def start(
    name: str, arms: list[Arm], margin: float, min_samples: int, alpha: float, no_auto_rollback: bool
) -> None:
    """Start experiment NAME over existing labels.

    Requests for the first arm's label are split by the weights, sticky per user. Every
    LLMOPS_MONITOR__EXPERIMENTS_EVERY_S the analytics process compares each other arm's
    mean user rating with the control's (one-sided Welch test, normal approximation):
    once both arms have --min-samples ratings and the arm is worse than the control by
    more than --margin at level --alpha, its label is pointed at the control's version,
    the experiment ends as rolled_back and an ExperimentRolledBack alert is raised."""
    s = settings()
    registry = read_registry(s)
    for arm in arms:
        resolve(registry, arm.label)
    try:
        experiment = Experiment(
            name=name,
            arms=arms,
            margin=margin,
            min_samples=min_samples,
            alpha=alpha,
            auto_rollback=not no_auto_rollback,
        )
    except ValidationError as exc:
        raise click.ClickException(f"experiment {name}: {exc.errors()[0]['msg']}") from exc
    clash = registry.running(experiment.control)
    if clash is not None:
        raise click.ClickException(
            f"experiment {clash.name} already splits {experiment.control}: stop it first"
        )
    if experiment.control != s.pipeline.serve_label:
        click.echo(
            f"note: workers serve {s.pipeline.serve_label!r}; this experiment splits only requests for "
            f"{experiment.control!r}",
            err=True,
        )
    write(s, experiment)
    split = " / ".join(f"{a.label} {a.weight:g}" for a in arms)
    click.echo(f"experiment {name} running: {split}")


@experiments.command("stop")
@click.argument("name")
@click.option("--reason", default="", help="Kept with the experiment.")
def stop(name: str, reason: str) -> None:
    """End experiment NAME: every request gets the control label again."""
    from schemas import utc_now

    s = settings()
    experiment = find_experiment(s, name)
    if experiment.status != "running":
        raise click.ClickException(f"experiment {name} is {experiment.status} already")
    write(s, experiment.model_copy(update={"status": "stopped", "ended_at": utc_now(), "reason": reason}))
    click.echo(f"experiment {name} stopped")


@experiments.command("list")
def list_experiments() -> None:
    """Experiments, running first."""
    found = read_registry(settings()).experiments()
    if not found:
        click.echo("no experiments yet: llmops experiments start NAME --arm production=90 --arm canary=10")
    for e in sorted(found, key=lambda e: (e.status != "running", e.started_at)):
        split = " / ".join(f"{a.label} {a.weight:g}" for a in e.arms)
        click.echo(f"{e.name:<20} {e.status:<11} since {e.started_at:%Y-%m-%d %H:%M}  {split}  {e.reason}")


@experiments.command("report")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the arms and verdicts as JSON.")
def report(name: str, as_json: bool) -> None:
    """Each arm's mean user rating with a 95% interval, p95 latency, cost per query and
    the verdict of the one-sided Welch test against the control (README: Experiments)."""
    from agents.experiments import arm_stats, judge
    from topology.cli import with_analytics

    s = settings()
    experiment = find_experiment(s, name)
    stats = {a.arm: a for a in with_analytics(lambda analytics: arm_stats(analytics, experiment))}
    verdicts = {v.arm: v for v in judge(experiment, list(stats.values()))}
    rows: list[dict[str, Any]] = []
    for arm in experiment.arms:
        st, v = stats.get(arm.label), verdicts[arm.label]
        low, high = st.interval() if st else (float("nan"), float("nan"))
        rows.append(
            {
                "arm": arm.label,
                "weight": arm.weight,
                "queries": st.queries if st else 0,
                "ratings": st.ratings if st else 0,
                "mean_rating": st.mean if st else None,
                "ci95": [low, high],
                "p95_ms": st.p95_ms if st else None,
                "cost_per_query_usd": st.cost_per_query if st else None,
                "failed": st.failed if st else 0,
                "verdict": v.state,
                "detail": v.message,
            }
        )
    if as_json:
        click.echo(json.dumps({"experiment": experiment.model_dump(mode="json"), "arms": rows}, indent=2))
        return
    click.echo(f"experiment {name} ({experiment.status}, since {experiment.started_at:%Y-%m-%d %H:%M} UTC)")
    click.echo(
        f"{'ARM':<14} {'SPLIT':>5} {'QUERIES':>7} {'RATINGS':>7} {'MEAN':>6} {'95% CI':>15} "
        f"{'P95 MS':>8} {'$/QUERY':>9}  VERDICT"
    )
    for r in rows:
        mean = f"{r['mean_rating']:.3f}" if r["ratings"] else "-"
        ci = f"[{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]" if r["ratings"] > 1 else "-"
        p95 = f"{r['p95_ms']:.0f}" if r["queries"] else "-"
        cost = f"{r['cost_per_query_usd']:.6f}" if r["queries"] else "-"
        click.echo(
            f"{r['arm']:<14} {r['weight']:>5g} {r['queries']:>7} {r['ratings']:>7} {mean:>6} {ci:>15} "
            f"{p95:>8} {cost:>9}  {r['verdict']}"
        )
    for r in rows[1:]:
        click.echo(f"  {r['arm']}: {r['detail']}")
    if experiment.reason:
        click.echo(f"ended: {experiment.reason}")


@prompts.command("evaluate")
@click.argument("ref")
@click.option(
    "--dataset",
    "dataset",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Golden set: golden.jsonl (question, doc_ids, answer) or a BEIR directory.",
)
@click.option("--against", default=None, help="Label or version to compare with (default: the served label).")
@click.option("--tenant", default="default", show_default=True, help="Whose indexed documents to search.")
@click.option(
    "--metric",
    type=click.Choice(["ndcg_at_10", "recall_at_10", "hit_at_1", "answer_f1"]),
    default="ndcg_at_10",
    show_default=True,
    help="The metric that decides.",
)
@click.option("--margin", type=float, default=0.01, show_default=True, help="Worse by more than this fails.")
@click.option("--limit", type=int, help="Only the first N cases.")
@click.option("--concurrency", type=int, default=16, show_default=True, help="Questions in flight.")
@click.option("--timeout", type=float, default=120, show_default=True, help="Seconds to wait per answer.")
@click.option("--json", "as_json", is_flag=True, help="Print the scores as JSON.")
def evaluate(
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
    is asked twice, pinned to each version, so both meet the same index and workers."""
    from agents.evaluation import load_golden

    s = settings()
    registry = read_registry(s)
    try:
        cases = load_golden(dataset, limit)
    except LLMOpsError as exc:
        raise click.ClickException(str(exc)) from exc
    candidate = resolve(registry, ref)
    baseline_ref = against or s.pipeline.serve_label
    if registry.label(baseline_ref) is None and registry.prompt(baseline_ref) is None and against is None:
        baseline, baseline_name = (
            None,
            f"built-in ({builtin_version(s)})",
        )  # nothing served from the registry yet
    else:
        baseline = resolve(registry, baseline_ref)
        baseline_name = (
            f"{baseline_ref} ({baseline.version})" if baseline_ref != baseline.version else baseline_ref
        )
    from topology.cli import run_command

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
        raise click.ClickException(f"the golden set gives no {metric}: its cases lack doc_ids or answers")
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


def builtin_version(s: Settings) -> str:
    from agents.registry import builtin

    return builtin(s.pipeline).version


async def run_golden(
    s: Settings,
    cases: Sequence[Any],
    refs: Sequence[str | None],
    tenant: str,
    concurrency: int,
    timeout: float,
) -> list[dict[str, Any]]:
    """Ask every case pinned to each ref (None: the served prompt); per ref, the mean
    scores, latency percentiles, tokens per query and failures."""
    import statistics

    from agents.evaluation import case_scores, mean_scores
    from connectors.client import Client, RequestError

    gate = asyncio.Semaphore(concurrency)

    async def one(client: Client, case: Any, ref: str | None) -> tuple[dict[str, float], float, int] | None:
        async with gate:
            began = time.perf_counter()
            try:
                answer = await client.ask(case.question, tenant=tenant, prompt=ref, timeout=timeout)
            except RequestError:
                return None
            elapsed = (time.perf_counter() - began) * 1000
            tokens = sum(answer.usage_details.values())
            return case_scores(case, [p.doc_id for p in answer.passages], answer.answer), elapsed, tokens

    async with Client(s, producer_name="prompt-evaluation") as client:
        runs = await asyncio.gather(*(asyncio.gather(*(one(client, c, ref) for c in cases)) for ref in refs))
    results = []
    for run in runs:
        done = [r for r in run if r is not None]
        failed = len(run) - len(done)
        # A failed question scores zero: a version that fails more must not look better.
        per_case = [r[0] for r in done] + [dict.fromkeys(done[0][0] if done else {}, 0.0)] * failed
        latencies = sorted(r[1] for r in done) or [0.0]
        results.append(
            {
                "scores": mean_scores(per_case) if per_case and per_case[0] else {},
                "p50_ms": statistics.median(latencies),
                "p95_ms": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
                "tokens_per_query": statistics.mean(r[2] for r in done) if done else 0.0,
                "failed": failed,
            }
        )
    return results
