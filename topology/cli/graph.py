"""`llmops topology`: the stage graph, drawn."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from topology.cli.common import pass_settings

if TYPE_CHECKING:
    from topology.settings import Settings


@click.command()
@pass_settings
def topology(settings: Settings) -> None:
    """Print the stage graph as a Mermaid flowchart."""
    # The graph imports every agent module (numpy with them): not for `llmops --help`.
    from topology.graph import mermaid

    click.echo(mermaid(settings.kafka.topics), nl=False)
