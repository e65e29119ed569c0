"""`llmops experiments`: traffic splits between prompt labels, kept in the registry topic
beside the prompts (the helpers come from `topology.cli.prompts`)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click
from pydantic import ValidationError

from schemas import utc_now
from schemas.prompts import Arm, Experiment
from topology.cli.common import pass_settings, with_analytics
from topology.cli.prompts import read_registry, resolve, write

if TYPE_CHECKING:
    from topology.settings import Settings


def find_experiment(s: Settings, name: str) -> Experiment:
    experiment = read_registry(s).experiment(name)
    if experiment is None:
        raise click.ClickException(f"no experiment {name!r}; see `llmops experiments list`")
    return experiment


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


def stopped(experiment: Experiment, reason: str) -> Experiment:
    """The record that ends a running experiment by hand (`stop` here, and the console's)."""
    return experiment.model_copy(update={"status": "stopped", "ended_at": utc_now(), "reason": reason})


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
@pass_settings
def start(
    s: Settings,
    name: str,
    arms: list[Arm],
    margin: float,
    min_samples: int,
    alpha: float,
    no_auto_rollback: bool,
) -> None:
    """Start experiment NAME over existing labels.

    Requests for the first arm's label are split by the weights, sticky per user. Every
    LLMOPS_MONITOR__EXPERIMENTS_EVERY_S the analytics process compares each other arm's
    mean user rating with the control's (one-sided Welch test, normal approximation):
    once both arms have --min-samples ratings and the arm is worse than the control by
    more than --margin at level --alpha, its label is pointed at the control's version,
    the experiment ends as rolled_back and an ExperimentRolledBack alert is raised."""
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
@pass_settings
def stop(s: Settings, name: str, reason: str) -> None:
    """End experiment NAME: every request gets the control label again."""
    experiment = find_experiment(s, name)
    if experiment.status != "running":
        raise click.ClickException(f"experiment {name} is {experiment.status} already")
    write(s, stopped(experiment, reason))
    click.echo(f"experiment {name} stopped")


@experiments.command("list")
@pass_settings
def list_experiments(s: Settings) -> None:
    """Experiments, running first."""
    found = read_registry(s).experiments()
    if not found:
        click.echo("no experiments yet: llmops experiments start NAME --arm production=90 --arm canary=10")
    for e in sorted(found, key=lambda e: (e.status != "running", e.started_at)):
        split = " / ".join(f"{a.label} {a.weight:g}" for a in e.arms)
        click.echo(f"{e.name:<20} {e.status:<11} since {e.started_at:%Y-%m-%d %H:%M}  {split}  {e.reason}")


@experiments.command("report")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the arms and verdicts as JSON.")
@pass_settings
def report(s: Settings, name: str, as_json: bool) -> None:
    """Each arm's mean user rating with a 95% interval, p95 latency, cost per query and
    the verdict of the one-sided Welch test against the control (README: Experiments)."""
    # The statistics bring numpy, which `llmops --help` should not wait for.
    from agents.experiments import arm_stats, judge

    experiment = find_experiment(s, name)
    stats = {a.arm: a for a in with_analytics(s, lambda analytics: arm_stats(analytics, experiment))}
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
