"""Running the system: `up`, `worker`, `analytics`, `bootstrap`, `demo` (`reindex`: reindex.py).

faust, pymilvus and the analytics store are imported inside the command that starts
them: they cost most of a second, and `llmops --help` should not wait for them."""

from __future__ import annotations

import signal
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from topology.cli.ask import format_response
from topology.cli.common import pass_settings, run_command

if TYPE_CHECKING:
    from topology.settings import Settings


@click.command()
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    help="Where Milvus Lite, the analytics store and the logs keep their files (default .llmops).",
)
@click.option(
    "--broker",
    type=click.Choice(["tansu", "kafka"]),
    help="tansu (default, or LLMOPS_STACK__BROKER): the embedded broker, in memory, slower as "
    "its topics fill; kafka: Apache Kafka on one node, for long runs (needs java 17 and mvn; "
    "its jars are fetched once).",
)
@click.option("--broker-port", type=int, help="Kafka port of the broker (default 9092).")
@click.option("--milvus-port", type=int, help="Port of the Milvus Lite server (default 19530).")
@click.option("--analytics-port", type=int, help="Port of the analytics query service (default 6066).")
@pass_settings
def up(
    settings: Settings,
    data_dir: Path | None,
    broker: str | None,
    broker_port: int | None,
    milvus_port: int | None,
    analytics_port: int | None,
) -> None:
    """Run the embedded stack in the foreground until Ctrl-C.

    Starts the Tansu broker and the Milvus Lite server as subprocesses, creates the
    topics and the collection, starts the analytics process (telemetry and feedback into
    chDB under --data-dir, and the query service that `llmops report` reads) and a faust
    worker. In another shell,
    `llmops ingest FILE.jsonl` and `llmops ask "..."` talk to it with the default
    settings. The broker keeps topics in memory: a restart empties them (Milvus data
    stays in --data-dir). It never trims them, and every hop gets slower as they fill
    (docs/scaling.md): restart it now and then, or run long with --broker kafka (its
    topics under --data-dir/kafka, emptied at each start too)."""
    from topology.stack import STOP_SIGNALS, LocalStack

    overrides = {
        k: v
        for k, v in {
            "data_dir": data_dir,
            "broker": broker,
            "broker_port": broker_port,
            "milvus_port": milvus_port,
        }.items()
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

    # Ctrl-C and the stop signals (SIGTERM, SIGHUP) end the loop below, so the stack stops.
    for sig in (signal.SIGINT, *STOP_SIGNALS):
        signal.signal(sig, request_stop)
    with LocalStack(settings) as stack:
        click.echo(f"broker   {stack.settings.kafka.bootstrap_servers} ({settings.stack.broker})")
        click.echo(f"milvus   {stack.settings.milvus.uri}")
        click.echo(f"llm      {stack.llm_url or 'none (extractive)'} ({stack.settings.llm.model})")
        click.echo(f"analytics {stack.settings.analytics.url} ({stack.settings.clickhouse.path})")
        click.echo(f"logs     {stack.data_dir / 'logs'}")
        click.echo(f"ready in {stack.timings['ready_s']:.1f}s. Press Ctrl-C to stop.")
        while not stopping:
            time.sleep(0.2)
        click.echo("stopping...")


@click.command()
@pass_settings
def worker(settings: Settings) -> None:
    """Run one faust worker of the pipeline (all stages) against the configured broker,
    Milvus and LLM. Start several for scale-out: they share partitions as one group."""
    from topology.app import create_app, run_worker

    run_worker(create_app(settings), settings.worker.log_level)


@click.command()
@pass_settings
def analytics(settings: Settings) -> None:
    """Run the analytics process: the telemetry sink, the feedback agent and the query
    service that `llmops report`, `llmops trace` and `Analytics` read through. With chDB
    (the default) exactly one runs, since the directory opens in one process only; with a
    ClickHouse server (LLMOPS_CLICKHOUSE__URL) run as many as you like."""
    from topology.analytics_app import create_analytics_app
    from topology.app import run_worker

    run_worker(create_analytics_app(settings), settings.worker.log_level)


@click.command("bootstrap")
@pass_settings
def bootstrap_command(settings: Settings) -> None:
    """Create the topics and the Milvus collection if missing, and apply the analytics
    DDL files that are not applied yet (docker/clickhouse/NNN_*.sql). Safe to repeat."""
    from topology.bootstrap import bootstrap

    report = bootstrap(settings)
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


@click.command()
@click.option("--keep", type=click.Path(path_type=Path), help="Keep stack data and logs here.")
@pass_settings
def demo(settings: Settings, keep: Path | None) -> None:
    """Start the embedded stack, index the sample corpus, ask sample questions, print the
    answers with their passages and per-stage latency, and stop everything."""
    from topology.demo import run_demo
    from topology.stack import LocalStack

    with tempfile.TemporaryDirectory(prefix="llmops-demo-") as tmp:
        data_dir = keep if keep is not None else Path(tmp)
        stack_cfg = settings.stack.model_copy(
            update={"data_dir": data_dir, "broker_port": 0, "milvus_port": 0}
        )
        # The analytics store outlives the demo (`llmops report` reads it afterwards).
        clickhouse = settings.clickhouse.model_copy(update={"path": settings.clickhouse.path.resolve()})
        settings = settings.model_copy(
            update={
                "clickhouse": clickhouse,
                "analytics": settings.analytics.model_copy(update={"port": 0}),
                "local_llm": settings.local_llm.model_copy(update={"port": 0}),
            }
        )
        broker = {"tansu": "Tansu", "kafka": "Apache Kafka"}[stack_cfg.broker]
        click.echo(f"starting the embedded stack ({broker} broker, Milvus Lite server, faust worker)...")
        with LocalStack(settings.model_copy(update={"stack": stack_cfg})) as stack:
            if stack.local_llm:
                click.echo(f"language model: {stack.settings.llm.model} on {stack.llm_url}")
            click.echo(
                f"ready in {stack.timings['ready_s']:.1f}s "
                f"(worker joined after {stack.timings['worker_ready_s']:.1f}s)"
            )
            run_command(
                run_demo(
                    stack.settings,
                    echo=click.echo,
                    show_answer=lambda response, ms: click.echo(format_response(response, ms) + "\n"),
                )
            )
