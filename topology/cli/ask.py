"""Talking to the running pipeline through the Client: `ask`, `ingest`, `feedback`, and
`sample-corpus`, which writes a file for `ingest`."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import click
from pydantic import ValidationError
from tqdm import tqdm

from connectors.client import Client
from schemas import DocumentSubmitted, ResponseGenerated, RetrievalMode, new_id
from schemas.feedback import FeedbackType
from topology.cli.common import current_settings, pass_settings, run_command
from topology.cli.conversation import VAR_OPTION, parse_variables
from topology.samples import python_reference

if TYPE_CHECKING:
    from topology.settings import Settings


@click.command()
@click.argument("question")
@click.option("--tenant", default="default", show_default=True, help="Whose documents to search.")
@click.option("--top-k", type=int, help="Passages to retrieve (default: pipeline.default_top_k).")
@click.option(
    "--mode",
    type=click.Choice(["dense", "bm25", "hybrid"]),
    help="Retrieval mode for this question (default: the prompt's, hybrid unless configured).",
)
@click.option("--timeout", type=float, help="Seconds to wait for the answer.")
@click.option("--json", "as_json", is_flag=True, help="Print the ResponseGenerated event as JSON.")
@click.option(
    "--conversation",
    "conversation_id",
    help="A turn of this conversation: answered with its memory (see `llmops chat`).",
)
@VAR_OPTION
@click.option(
    "--no-stream",
    "no_stream",
    is_flag=True,
    help="Print the answer once it is complete, not as the model writes it.",
)
@pass_settings
def ask(
    settings: Settings,
    question: str,
    tenant: str,
    top_k: int | None,
    mode: RetrievalMode | None,
    timeout: float | None,
    as_json: bool,
    conversation_id: str | None,
    variables: tuple[str, ...],
    no_stream: bool,
) -> None:
    """Ask QUESTION and print the answer as the model writes it (--no-stream: once it is
    complete)."""

    options: dict[str, Any] = {
        "tenant": tenant,
        "top_k": top_k,
        "retrieval_mode": mode,
        "conversation": conversation_id,
        "variables": parse_variables(variables),
    }

    async def go() -> None:
        async with Client(settings, producer_name="cli") as client:
            started = time.perf_counter()
            if as_json or no_stream:
                response = await client.ask(question, timeout=timeout, **options)
                streamed = None
            else:
                response, streamed = await print_as_written(
                    client.stream(question, timeout=timeout, **options),
                    question,
                )
            elapsed = (time.perf_counter() - started) * 1000
        if as_json:
            click.echo(response.model_dump_json(indent=2))
        else:
            click.echo(format_response(response, elapsed, streamed))

    run_command(go())


async def print_as_written(
    replies: AsyncIterator[str | ResponseGenerated], question: str
) -> tuple[ResponseGenerated, str]:
    """Echo the question, then each piece of the answer as it arrives; the final reply
    and the text that was printed."""
    click.echo(f"Q: {question}")
    click.echo("A: ", nl=False)
    printed: list[str] = []
    try:
        async for reply in replies:
            if isinstance(reply, ResponseGenerated):
                return reply, "".join(printed)
            text = reply.lstrip() if not printed else reply
            click.echo(text, nl=False)
            printed.append(text)
    except BaseException:
        click.echo("")  # the error goes on a line of its own
        raise
    raise RuntimeError("the stream ended without its ResponseGenerated")  # stream() always ends with one


def format_response(response: ResponseGenerated, end_to_end_ms: float, streamed: str | None = None) -> str:
    """The answer and where it came from. `streamed`: the answer's text already printed
    piece by piece (the Q and A lines are not repeated unless it differs from the answer)."""
    if streamed is None:
        lines = [f"Q: {response.question}", f"A: {response.answer}"]
    elif not streamed:
        lines = [response.answer]  # nothing was streamed: the A: prefix is out already
    elif streamed.strip() == response.answer.strip():
        lines = [""]  # end the streamed line
    else:  # a retried generation wrote another answer than the pieces shown
        lines = ["", f"A (as stored, after a retry): {response.answer}"]
    for n, p in enumerate(response.passages, start=1):
        used = "*" if p.id in response.citations else " "
        lines.append(f"  {used}[{n}] {p.title} (chunk {p.chunk}) score {p.score:.3f}  id {p.id}")
    stages = " | ".join(f"{k} {v:.1f}" for k, v in response.latency_ms.items())
    speed = ""
    if response.ttft_ms is not None:
        speed = f" | first token {response.ttft_ms:.1f}"
        if response.tokens_per_s is not None:
            speed += f" | {response.tokens_per_s:.1f} tokens/s"
    lines.append(f"  latency ms: {stages}{speed} | end-to-end {end_to_end_ms:.1f}")
    budget = response.context
    if budget.passages_cut:
        lines.append(
            f"  prompt budget: {budget.passages_sent} passages sent ({budget.tokens_sent} tokens, "
            f"counted by {budget.counted_by}), {budget.passages_cut} cut ({budget.tokens_cut} tokens)"
        )
    lines.append(
        f"  trace {response.trace_id} | prompt {response.served.prompt}@"
        f"{response.served.version} | model {response.model} | retrieval {response.served.retrieval_mode}"
    )
    return "\n".join(lines)


def read_documents(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """JSON Lines: doc_id (or BEIR's _id), text, optional title and source."""
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise click.ClickException(f"{path}:{number}: not JSON: {exc}") from exc
            if not isinstance(row, dict):
                raise click.ClickException(f"{path}:{number}: expected a JSON object")
            if "_id" in row and "doc_id" not in row:
                row["doc_id"] = str(row.pop("_id"))
            yield number, {k: row[k] for k in ("doc_id", "title", "text", "source") if k in row}


@click.command()
@click.argument("file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tenant", default="default", show_default=True, help="Owner of these documents.")
@click.option("--timeout", type=float, default=600, show_default=True, help="Seconds to wait.")
@click.option(
    "--delete",
    "delete_ids",
    multiple=True,
    metavar="ID",
    help="Withdraw document ID instead: delete all its chunks from --tenant (repeatable).",
)
@pass_settings
def ingest(
    settings: Settings, file: Path | None, tenant: str, timeout: float, delete_ids: tuple[str, ...]
) -> None:
    """Index the documents in FILE (JSON Lines with doc_id or _id, text and optional title,
    source). Chunk ids are stable: ingesting the same file again changes nothing, and a
    document that became shorter loses its old tail. `--delete ID` withdraws a document
    from the tenant instead."""
    if delete_ids:
        if file is not None:
            raise click.UsageError("give FILE or --delete, not both")
        withdraw(settings, delete_ids, tenant, timeout)
        return
    if file is None:
        raise click.UsageError("missing FILE (or --delete ID)")
    documents, problems = [], []
    for number, row in read_documents(file):
        try:
            documents.append(DocumentSubmitted(trace_id=new_id(), tenant=tenant, producer="cli", **row))
        except ValidationError as exc:
            problems.append(f"{file}:{number}: {exc.errors(include_url=False)[0]['msg']}")
    if problems:
        raise click.ClickException("nothing was sent; fix these lines:\n" + "\n".join(problems[:20]))

    async def go() -> None:
        with tqdm(total=len(documents), unit="doc", desc="indexed") as bar:
            async with Client(settings, producer_name="cli") as client:
                indexed = await client.ingest(documents, timeout=timeout, on_indexed=lambda _: bar.update())
        click.echo(
            f"{len(indexed)} documents, {sum(d.chunks for d in indexed)} chunks indexed for tenant {tenant}"
        )

    run_command(go())


def withdraw(settings: Settings, doc_ids: tuple[str, ...], tenant: str, timeout: float) -> None:
    async def go() -> None:
        async with Client(settings, producer_name="cli") as client:
            for doc_id in doc_ids:
                await client.delete(doc_id, tenant=tenant, timeout=timeout)
                click.echo(f"{doc_id}: every chunk deleted for tenant {tenant}")

    run_command(go())


@click.command()
@click.argument("trace_id")
@click.argument("value")
@click.option(
    "--type",
    "data_type",
    type=click.Choice(["BOOLEAN", "NUMERIC", "CATEGORICAL"], case_sensitive=False),
    default="BOOLEAN",
    show_default=True,
    help="BOOLEAN: true/false (thumbs); NUMERIC: a number in the configured range; CATEGORICAL: a label.",
)
@click.option("--name", default="user", show_default=True, help="What is rated.")
@click.option("--comment", default="", help="Free text.")
@click.option("--user", help="Who rates.")
@click.option("--tenant", default="default", show_default=True, help="The tenant of the rated trace.")
def feedback(
    trace_id: str, value: str, data_type: str, name: str, comment: str, user: str | None, tenant: str
) -> None:
    """Rate the answer of TRACE_ID (printed by `llmops ask --json` as trace_id):
    `llmops feedback TRACE_ID true`, `llmops feedback TRACE_ID 4 --type numeric`."""
    kind = data_type.upper()
    parsed: bool | float | str = value
    if kind == "BOOLEAN":
        if value.lower() not in ("true", "false", "1", "0", "yes", "no", "up", "down"):
            raise click.BadParameter("BOOLEAN feedback is true or false", param_hint="VALUE")
        parsed = value.lower() in ("true", "1", "yes", "up")
    elif kind == "NUMERIC":
        try:
            parsed = float(value)
        except ValueError:
            raise click.BadParameter("NUMERIC feedback is a number", param_hint="VALUE") from None
    # Read only now: a bad VALUE is refused before the configuration is looked at.
    settings = current_settings()

    async def go() -> None:
        async with Client(settings, producer_name="cli") as client:
            event = await client.feedback(
                trace_id,
                parsed,
                cast(FeedbackType, kind),
                name=name,
                comment=comment,
                user=user,
                tenant=tenant,
            )
        click.echo(f"feedback {event.event_id} sent for trace {trace_id}")

    run_command(go())


@click.command("sample-corpus")
def sample_corpus() -> None:
    """Write the sample corpus (Python language reference topics, PSF licence) as JSON
    Lines to stdout: `llmops sample-corpus > python-ref.jsonl`."""
    for row in python_reference():
        click.echo(json.dumps(row))
