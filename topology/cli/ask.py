"""Talking to the running pipeline through the Client: `ask`, `ingest`, `feedback`, and
`sample-corpus`, which writes a file for `ingest`."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import click
from pydantic import ValidationError
from tqdm import tqdm

from connectors.client import Client
from schemas import DocumentSubmitted, ResponseGenerated, RetrievalMode, new_id
from schemas.feedback import FeedbackType
from topology.cli.common import current_settings, pass_settings, run_command
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
@pass_settings
def ask(
    settings: Settings,
    question: str,
    tenant: str,
    top_k: int | None,
    mode: RetrievalMode | None,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Ask QUESTION and print the answer as soon as it arrives."""

    async def go() -> None:
        async with Client(settings, producer_name="cli") as client:
            started = time.perf_counter()
            response = await client.ask(
                question, tenant=tenant, top_k=top_k, retrieval_mode=mode, timeout=timeout
            )
            elapsed = (time.perf_counter() - started) * 1000
        if as_json:
            click.echo(response.model_dump_json(indent=2))
        else:
            click.echo(format_response(response, elapsed))

    run_command(go())


def format_response(response: ResponseGenerated, end_to_end_ms: float) -> str:
    lines = [f"Q: {response.question}", f"A: {response.answer}"]
    for n, p in enumerate(response.passages, start=1):
        used = "*" if p.id in response.citations else " "
        lines.append(f"  {used}[{n}] {p.title} (chunk {p.chunk}) score {p.score:.3f}  id {p.id}")
    stages = " | ".join(f"{k} {v:.1f}" for k, v in response.latency_ms.items())
    lines.append(f"  latency ms: {stages} | end-to-end {end_to_end_ms:.1f}")
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
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tenant", default="default", show_default=True, help="Owner of these documents.")
@click.option("--timeout", type=float, default=600, show_default=True, help="Seconds to wait.")
@pass_settings
def ingest(settings: Settings, file: Path, tenant: str, timeout: float) -> None:
    """Index the documents in FILE (JSON Lines with doc_id or _id, text and optional title,
    source). Chunk ids are stable: ingesting the same file again changes nothing."""
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
