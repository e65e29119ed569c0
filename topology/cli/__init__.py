"""`llmops`: the front door. Every command explains itself with --help.

One module per command group; `common` holds what they share. The group puts an
`Invocation` in click's context object, which reads the settings once, on first use,
and turns every error we raise on purpose into one line on stderr."""

from __future__ import annotations

import logging
from typing import Any

import click

from topology.cli import (
    artifacts,
    ask,
    conversation,
    dlq,
    experiments,
    graph,
    model,
    prompts,
    reindex,
    reports,
    stack,
)
from topology.cli.common import CONFIG_HELP, Invocation, readable_errors


class Llmops(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        with readable_errors():
            return super().invoke(ctx)


@click.group(
    cls=Llmops, help=f"llmops-stream: an event-driven RAG pipeline you can observe.\n\n{CONFIG_HELP}"
)
@click.option("-v", "--verbose", is_flag=True, help="Log progress to stderr.")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:  # connection retries are librdkafka's business; errors reach us anyway
        logging.getLogger("librdkafka").setLevel(logging.CRITICAL)
    ctx.obj = Invocation()


for command in (
    stack.up,
    stack.worker,
    stack.analytics,
    stack.bootstrap_command,
    reindex.reindex,
    stack.demo,
    ask.ask,
    ask.ingest,
    ask.feedback,
    ask.sample_corpus,
    conversation.chat,
    conversation.conversation,
    reports.report,
    reports.alerts,
    reports.trace,
    dlq.dlq,
    model.model,
    graph.topology,
    prompts.prompts,
    experiments.experiments,
    artifacts.artifacts,
):
    main.add_command(command)
