"""`llmops demo` after the stack is up: index the sample corpus, ask the sample questions,
rate each answer, then wait for the analytics process to store them and print the report.
Output goes through the callbacks the caller passes, so the flow knows nothing of click."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from tqdm import tqdm

from connectors.analytics import Analytics
from connectors.client import Client
from schemas import ResponseGenerated
from topology import report
from topology.samples import QUESTIONS, SOURCE, python_reference

if TYPE_CHECKING:
    from topology.settings import Settings


async def run_demo(
    settings: Settings,
    echo: Callable[[str], None],
    show_answer: Callable[[ResponseGenerated, float], None],
) -> None:
    """`show_answer(response, end_to_end_ms)` for each answer, `echo` for the rest."""
    docs = python_reference()
    async with Client(settings, producer_name="demo") as client:
        started = time.perf_counter()
        with tqdm(total=len(docs), unit="doc", desc=f"indexing {SOURCE}") as bar:
            indexed = await client.ingest(docs, timeout=600, on_indexed=lambda _: bar.update())
        echo(
            f"indexed {len(indexed)} documents as {sum(d.chunks for d in indexed)} chunks "
            f"in {time.perf_counter() - started:.1f}s\n"
        )
        traces = []
        for question in QUESTIONS:
            began = time.perf_counter()
            response = await client.ask(question)
            show_answer(response, (time.perf_counter() - began) * 1000)
            # Demo feedback, so the report has some: thumbs up when the answer cites a passage.
            await client.feedback(response.trace_id, bool(response.citations), comment="demo")
            traces.append(response.trace_id)
    await show_report(settings, traces, echo)


async def show_report(settings: Settings, traces: list[str], echo: Callable[[str], None]) -> None:
    """Wait until the analytics process has stored the demo's last trace and feedback
    (the sink writes about once a second), then print the report from ClickHouse."""
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
    echo(report.text(data))
    echo(
        f"The analytics store stays in {settings.clickhouse.path}: `llmops report`, "
        f"`llmops report --html report.html` and `llmops trace {traces[-1]}` read it now."
    )
