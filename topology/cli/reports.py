"""Reading the analytics store: `report`, `alerts`, `trace`. Each goes through the
running stack's analytics service, or opens the store itself when none runs.

topology.report pulls in the analytics store's clients; it is imported inside the
commands so that `llmops --help` does not load them."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import click

from topology.cli.common import pass_settings, window_option, with_analytics

if TYPE_CHECKING:
    from topology.settings import Settings


@click.command()
@window_option
@click.option("--tenant", default="", help="Only this tenant (default: all).")
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write a page with charts.",
)
@click.option(
    "--probes", is_flag=True, help="Include the local stack's readiness probes (tenant llmops-probe)."
)
@pass_settings
def report(settings: Settings, since: timedelta, tenant: str, html_path: Path | None, probes: bool) -> None:
    """Latency percentiles, requests and errors per stage, tokens and cost per tenant and
    model, feedback per prompt version and alerts, from ClickHouse. Reads through the
    running stack's analytics service, or opens the analytics store itself when none runs.
    The readiness probes of `llmops up` are stored but left out unless --probes."""
    from topology import report as rendering

    data = with_analytics(settings, lambda analytics: rendering.collect(analytics, since, tenant, probes))
    click.echo(rendering.text(data), nl=False)
    if html_path is not None:
        html_path.write_text(rendering.html(data))
        click.echo(f"\nwrote {html_path}")


@click.command()
@window_option
@pass_settings
def alerts(settings: Settings, since: timedelta) -> None:
    """Alerts the monitor raised (drift, SLO, budget), newest first, open or resolved.
    The monitor runs in the analytics process and checks each closed window
    (LLMOPS_MONITOR__WINDOW_S, 300 s by default)."""
    from topology.report import alerts_table, describe_window

    rows = with_analytics(settings, lambda analytics: analytics.alerts(since))
    click.echo(alerts_table(rows) if rows.rows else f"no alerts in the last {describe_window(since)}")


@click.command()
@click.argument("trace_id")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@pass_settings
def trace(settings: Settings, trace_id: str, as_json: bool) -> None:
    """One request's timeline: each stage with its latency, tokens and cost, the passages
    retrieved with their scores, the answer, and any feedback."""
    from topology.report import trace_text

    stages, feedback = with_analytics(settings, lambda analytics: analytics.trace(trace_id))
    if as_json:
        click.echo(json.dumps({"stages": stages.dicts(), "feedback": feedback.dicts()}, indent=2))
    else:
        click.echo(trace_text(trace_id, stages, feedback), nl=False)
