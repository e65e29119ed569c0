"""The OTLP exporter of the analytics process: a second consumer of the telemetry topic in
the analytics group (on when LLMOPS_OTLP__ENDPOINT is set). faust commits a message once
every agent that reads it acknowledged it, so an offset moves only after both the sink
stored the batch and the exporter sent it, or dead-lettered it after bounded retries:
an exporter outage delays export and loses no span. Workers pay nothing."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import faust

from agents.runtime import Incoming, dead_letter_for
from connectors.otlp import OtlpExport
from schemas import StageCompleted, decode, encode
from schemas.errors import LLMOpsError
from topology.app import raw_topic, register
from topology.metrics import providers
from topology.settings import Settings

log = logging.getLogger(__name__)
STAGE = "otlp-export"


def add_otlp_export(
    app: faust.App,
    settings: Settings,
    dead_letter: Callable[[bytes, bytes], Awaitable[Awaitable[Any]]],
    ready: Callable[[], Awaitable[None]],
) -> OtlpExport:
    otlp = settings.otlp
    if "providers" not in otlp.model_fields_set:
        otlp = otlp.model_copy(update={"providers": providers(settings.llm.backend)})
    exporter = OtlpExport(otlp)

    async def process(batch: list[Incoming]) -> None:
        events: list[tuple[Incoming, StageCompleted]] = []
        for message in batch:
            try:
                events.append((message, decode(message.value, StageCompleted)))
            except LLMOpsError:
                continue  # the telemetry sink dead-letters what does not decode
        if not events:
            return
        try:
            await exporter.export([e for _, e in events])
        except LLMOpsError as exc:
            sent = [
                await dead_letter(
                    e.trace_id.encode(), encode(dead_letter_for(STAGE, m, e, exc, otlp.attempts))
                )
                for m, e in events
            ]
            for delivery in sent:
                await delivery

    register(
        app,
        STAGE,
        raw_topic(app, settings, "telemetry"),
        process,
        batch_max=settings.sink.batch_max,
        batch_within_s=settings.sink.batch_within_s,
        ready=ready,
    )
    return exporter
